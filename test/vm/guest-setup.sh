# guest-setup.sh - sourced INSIDE a VM by guest-tier.sh and guest-peer.sh: the
# steps every guest of the tier needs before its work (udev, kernel modules,
# an iSCSI initiator name) and the step timer. Expects OUT (results folder).
now() { echo "${EPOCHREALTIME//[.,]/}"; }
step() { # step NAME CMD...: runs CMD, records its time
  local name=$1 s rc=0 us; shift; s=$(now)
  "$@" || rc=$?
  us=$(($(now) - s))
  printf 'VM STEP %s %d.%02ds rc=%d\n' "$name" $((us / 1000000)) $((us / 10000 % 100)) $rc | tee -a "$OUT/timings.txt"
  return $rc
}
udev() { # after switch_root (udev ignores requests in a chroot)
  local d; for d in /lib/systemd /usr/lib/systemd; do [ -x $d/systemd-udevd ] && break; done
  $d/systemd-udevd --daemon 2>/dev/null && udevadm trigger --action=add --subsystem-match=block && udevadm settle -t 60
}
# nbd: vdi_attach hands out a free /dev/nbdN per attached VDI (DESIGN item 8);
# the default 16 devices is too few for a host (xapi's nbd_client_manager asks for 24).
modules() { modprobe -a dm-mod loop iscsi_tcp sd_mod nfsd nfs nfsv3 nfsv4 && modprobe nbd nbds_max=32; }
initiator() { # open-iscsi needs an initiator name; the host may have none
  # `initiator new`: a name of its own even when the host has one. Both guests
  # read the host's /etc: two initiators with one name log each other's
  # sessions out of a target they share.
  if [ "${1:-}" = new ] || [ ! -s /etc/iscsi/initiatorname.iscsi ]; then
    echo "InitiatorName=$(iscsi-iname)" > /etc/iscsi/initiatorname.iscsi
  fi
}
