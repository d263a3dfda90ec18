#!/bin/bash
# runvm.sh GUEST_SCRIPT [ARGS...] - boot the VM prepared by build-vm.sh and run
# GUEST_SCRIPT ARGS... in it as root; exit with the script's exit code.
#
# The guest's root is the host's / (read-only 9p) under a tmpfs overlay: the guest
# runs the host's programs and sees the host's files; its writes vanish at power-off.
# The script runs in the caller's current folder with SMVM_OUT=/mnt/out, a
# read-write share of a host folder for results. The guest does not inherit the
# host's environment except the SMVM_PASS_* variables (passed without the prefix).
# Env:  SMVM_WORKDIR  where build-vm.sh built (default /var/tmp/smvm)
#       SMVM_TIMEOUT  hard limit in seconds for the whole VM run (default 2700)
#       SMVM_OUT      host folder shared as /mnt/out (default: new folder in WORKDIR/runs/)
#       SMVM_MEM      guest memory in MiB (default 2048); SMVM_CPUS (default 2)
#       SMVM_NET      unset (default): no network but loopback. listen:PORT:IP/PREFIX or
#                     connect:PORT:IP/PREFIX: a virtio NIC joined to one other guest by
#                     qemu's socket netdev on host TCP 127.0.0.1:PORT (start the listen
#                     side first: the connect side's qemu fails if nobody listens), up
#                     with IP/PREFIX before the script runs. MAC 52:54:00:5a:00:01
#                     (listen) or :02 (connect), so the two sides never share one.
# Exit: the guest script's code; 124 hard timeout; 125 the VM ended without the
#       script finishing (boot failure, panic); 2 usage or VM not built.
set -u
if [ $# -lt 1 ] || [ ! -f "$1" ]; then echo "usage: $0 GUEST_SCRIPT [ARGS...]" >&2; exit 2; fi
SCRIPT=$(realpath "$1"); shift
case $SCRIPT in /run/*|/dev/*|/proc/*|/sys/*|/tmp/*) echo "runvm: the guest cannot see $SCRIPT (fresh /run /dev /proc /sys /tmp in the guest)" >&2; exit 2 ;; esac
W=$(realpath "${SMVM_WORKDIR:-/var/tmp/smvm}")
TMO=${SMVM_TIMEOUT:-2700}
KVER=$(cat "$W/kernel-version" 2>/dev/null)
KERNEL=$W/kernel/boot/vmlinuz-$KVER
[ -s "$W/kernel/boot/vmlinux-$KVER" ] && KERNEL=$W/kernel/boot/vmlinux-$KVER   # PVH: no decompression
if [ -z "$KVER" ] || [ ! -f "$KERNEL" ] || [ ! -s "$W/initramfs.cpio.gz" ]; then
  echo "runvm: $W is not built; run test/vm/build-vm.sh first" >&2; exit 2
fi
if [ -n "${SMVM_OUT:-}" ]; then RUN=$(mkdir -p "$SMVM_OUT" && realpath "$SMVM_OUT"); else
  mkdir -p "$W/runs"; RUN=$(mktemp -d "$W/runs/$(date +%Y%m%d-%H%M%S).XXXX"); fi
C=$RUN/.smvm          # control files shared with the guest
rm -rf "$C"; mkdir -p "$C" || exit 2

# Optional link to a second guest: qemu arguments here, the guest's set-up in
# $C/net.sh, which stage 2 sources when it exists.
NET_ARGS=()
if [ -n "${SMVM_NET:-}" ]; then
  if ! [[ $SMVM_NET =~ ^(listen|connect):([0-9]+):([0-9.]+/[0-9]+)$ ]]; then
    echo "runvm: SMVM_NET=$SMVM_NET is not listen:PORT:IP/PREFIX or connect:PORT:IP/PREFIX" >&2; exit 2
  fi
  side=${BASH_REMATCH[1]} port=${BASH_REMATCH[2]} cidr=${BASH_REMATCH[3]}
  mac=52:54:00:5a:00:01; [ "$side" = connect ] && mac=52:54:00:5a:00:02
  NET_ARGS=(-netdev "socket,id=n0,$side=127.0.0.1:$port" -device "virtio-net-pci,netdev=n0,mac=$mac")
  { printf 'SMVM_NET_MAC=%q\nSMVM_NET_CIDR=%q\n' "$mac" "$cidr"; cat <<'NET'
# virtio_net is a module in Debian's kernel; the NIC is the one with our MAC
# (no udev yet, so it keeps the kernel's name).
modprobe virtio_net 2>/dev/null; ip link set lo up
nic=
for i in $(seq 50); do
  for d in /sys/class/net/*; do [ "$(cat "$d/address" 2>/dev/null)" = "$SMVM_NET_MAC" ] && nic=${d##*/}; done
  [ -n "$nic" ] && break; sleep 0.1
done
if [ -n "$nic" ] && ip addr add "$SMVM_NET_CIDR" dev "$nic" && ip link set "$nic" up; then
  echo "smvm: network $nic $SMVM_NET_CIDR up"
else
  echo "smvm: network FAILED: no NIC with MAC $SMVM_NET_MAC up as $SMVM_NET_CIDR"
fi
NET
  } > "$C/net.sh"
fi

# What stage 2 needs, bash-quoted and sourced in the guest.
{
  printf 'SMVM_SCRIPT=%q\nSMVM_CWD=%q\nSMVM_KMODS=%q\n' "$SCRIPT" "$PWD" "$W/kernel/lib/modules/$KVER"
  printf 'SMVM_ARGS=('; [ $# -eq 0 ] || printf '%q ' "$@"; printf ')\n'
  while IFS='=' read -r k v; do
    [[ $k == SMVM_PASS_* ]] && printf 'export %s=%q\n' "${k#SMVM_PASS_}" "$v"
  done < <(env)
} > "$C/env"
# Stage 2: PID 1 after switch_root. Runs the script, records its code, powers off.
cat > "$C/stage2.sh" <<'EOF'
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
export TERM=dumb PAGER=cat LANG=C.UTF-8 SMVM_OUT=/mnt/out
. /mnt/out/.smvm/env
stty -onlcr 2>/dev/null       # plain \n on the serial console
mount -t tmpfs -o mode=1777,size=1g tmpfs /tmp
# fresh /run and /dev: iscsiadm and LVM need their lock dirs; bash's <(...) needs /dev/fd
mkdir -p /dev/pts /dev/shm /run/lock/lvm /run/lock/iscsi /run/lvm
mount -t devpts devpts /dev/pts; mount -t tmpfs -o mode=1777 tmpfs /dev/shm
ln -sfn /proc/self/fd /dev/fd; ln -sf fd/0 /dev/stdin; ln -sf fd/1 /dev/stdout; ln -sf fd/2 /dev/stderr
# the extracted kernel's modules, so modprobe works as usual
mkdir -p "/lib/modules/$(uname -r)" && mount --bind "$SMVM_KMODS" "/lib/modules/$(uname -r)"
echo "smvm: guest root ready at $(cut -d' ' -f1 /proc/uptime)s uptime, kernel $(uname -r)"
[ -f /mnt/out/.smvm/net.sh ] && . /mnt/out/.smvm/net.sh    # SMVM_NET
cd "$SMVM_CWD" 2>/dev/null || cd /
bash "$SMVM_SCRIPT" "${SMVM_ARGS[@]}" </dev/null
rc=$?
echo "$rc" > /mnt/out/.smvm/rc; sync
echo "smvm: guest script exit code $rc at $(cut -d' ' -f1 /proc/uptime)s uptime"
sleep 60 &                     # keeps PID 1 alive until the power-off lands
echo o > /proc/sysrq-trigger   # no init system to ask: power off now
wait
EOF

echo "runvm: kernel ${KERNEL##*/}, script $SCRIPT, results $RUN, timeout ${TMO}s"
T0=${EPOCHREALTIME//[.,]/}
# TCG: the host's /dev/kvm is a kind stock kernels don't boot under. stdin is
# /dev/null so qemu never touches a terminal; timeout kills a hung VM.
timeout -k 10 "$TMO" qemu-system-x86_64 -accel tcg,thread=multi -cpu max \
  -smp "${SMVM_CPUS:-2}" -m "${SMVM_MEM:-2048}" \
  -nodefaults -display none -no-reboot -serial stdio \
  -kernel "$KERNEL" -initrd "$W/initramfs.cpio.gz" \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
  -virtfs "local,path=$RUN,mount_tag=out,security_model=none,multidevs=remap" \
  "${NET_ARGS[@]}" \
  -append "console=ttyS0 panic=-1 quiet loglevel=3" </dev/null
qrc=$?
us=$(( ${EPOCHREALTIME//[.,]/} - T0 )); wall=$(printf '%d.%d' $((us / 1000000)) $((us / 100000 % 10)))

rc=$(cat "$C/rc" 2>/dev/null)
if [[ "$rc" =~ ^[0-9]+$ ]]; then
  echo "runvm: guest exit code $rc, wall ${wall}s, results in $RUN"; exit "$rc"
elif [ $qrc -eq 124 ] || [ $qrc -eq 137 ]; then
  echo "runvm: FAILED: hard timeout (${TMO}s), VM killed, wall ${wall}s"; exit 124
else
  echo "runvm: FAILED: VM ended (qemu rc $qrc) without the guest script finishing, wall ${wall}s"; exit 125
fi
