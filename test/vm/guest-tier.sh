#!/bin/bash
# guest-tier.sh - runs INSIDE the VM (run-tier.sh -> runvm.sh, in the repo
# folder): brings up udev and the kernel modules, then runs the VM-tier tests
# (dist/test/vm/guest-main.js: every *.vmtest.js, node:test, one process).
# Per-test lines and "VM: N passed, N failed" go to stdout and
# $SMVM_OUT/results.txt, node's spec report to $SMVM_OUT/spec.log, step
# timings to $SMVM_OUT/timings.txt. Arguments pick test files (e.g. lvm nfs).
# Exit code: the test run's.
set -u
OUT=${SMVM_OUT:-/tmp}
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
  [ -s /etc/iscsi/initiatorname.iscsi ] || echo "InitiatorName=$(iscsi-iname)" > /etc/iscsi/initiatorname.iscsi
}
tests() { # TEST_NAME_PATTERN (run-tier.sh: SMVM_PASS_TEST_NAME_PATTERN): only the tests it matches
  node ${TEST_NAME_PATTERN:+--test-name-pattern="$TEST_NAME_PATTERN"} \
       --test-reporter="$PWD/dist/test/vm/reporter.js" --test-reporter-destination=stdout \
       --test-reporter=spec --test-reporter-destination="$OUT/spec.log" \
       dist/test/vm/guest-main.js "$@" 2>&1 | tee "$OUT/results.txt"
  return "${PIPESTATUS[0]}"
}
: > "$OUT/timings.txt"
step udev udev || exit 1
step modules modules || exit 1
initiator
export SMVM_GUEST=1 SMVM_OUT="$OUT"
step tests tests "$@"
