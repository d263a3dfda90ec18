#!/bin/bash
# build-vm.sh [WORKDIR] - prepare the real-kernel test VM from nothing (as root).
#
# The host kernel has no device-mapper, iSCSI initiator or NFS; a stock Debian
# 6.1 kernel under qemu TCG has them all. The guest's root is the host's / over
# 9p (read-only) under a tmpfs overlay, so the guest runs the host's node, lvm2,
# open-iscsi, tgt, nfs and nbd-client tools: they must be installed on the host.
#
# Idempotent: every step is skipped when its result is already in WORKDIR
# (a second run takes about a second); a newer kernel in the apt lists is
# picked up. WORKDIR (default $SMVM_WORKDIR or /var/tmp/smvm, never in the repo):
#   debs/                  downloaded .debs (kernel, busybox-static)
#   busybox                static busybox, the initramfs' only program
#   kernel/                extracted linux-image: boot/, lib/modules/VER (depmod'ed)
#   kernel/boot/vmlinux-VER the kernel uncompressed: qemu boots it via PVH, ~5 s faster
#   kernel-version         VER
#   initramfs.cpio.gz      busybox + virtio/9p/overlay modules + /init
#   initramfs.key          hash of the initramfs inputs
#   runs/                  per-run result folders (runvm.sh)
set -euo pipefail

W=${1:-${SMVM_WORKDIR:-/var/tmp/smvm}}
T0=${EPOCHREALTIME//[.,]/}
elapsed() { local us=$(( ${EPOCHREALTIME//[.,]/} - T0 )); printf '%d.%d' $((us / 1000000)) $((us / 100000 % 10)); }
log() { echo "[build-vm $(elapsed)s] $*"; }
die() { echo "build-vm: ERROR: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "must run as root (installs Debian packages)"
DID=()

mkdir -p "$W/debs" "$W/runs"
W=$(cd "$W" && pwd)
export DEBIAN_FRONTEND=noninteractive
APT_UPDATED=
apt_update() { [ -n "$APT_UPDATED" ] || { log "apt-get update"; apt-get update -q >/dev/null; APT_UPDATED=1; }; }

# apt-get download into a scratch folder, then move (no half-written .deb in debs/)
download() { # PKG -> path of its .deb in debs/
  local pkg=$1 tmp="$W/debs/.dl" f
  rm -rf "$tmp"; mkdir -p "$tmp"
  (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2) || die "apt-get download $pkg failed"
  f=$(ls "$tmp"/"$pkg"_*.deb) || die "no .deb for $pkg"
  mv "$f" "$W/debs/"; rmdir "$tmp"
  echo "$W/debs/${f##*/}"
}

# 1. Host packages: qemu boots the VM; the rest is the user space the guest uses
#    (nbd-client connects /dev/nbdN to a VDI's NBD socket; e2fsprogs formats it).
PKGS=(qemu-system-x86 qemu-utils kmod cpio xz-utils lvm2 open-iscsi tgt nfs-kernel-server
      nfs-common rpcbind udev util-linux nbd-client e2fsprogs)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  # keep postinst scripts from starting tgtd/iscsid/nfsd on the host (policy-rc.d 101)
  PRC=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    PRC=/usr/sbin/policy-rc.d; printf '#!/bin/sh\nexit 101\n' > $PRC; chmod 755 $PRC
  fi
  install_pkgs() { apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
  rc=0; install_pkgs || { apt_update; install_pkgs; } || rc=$?
  [ -z "$PRC" ] || rm -f "$PRC"
  [ $rc -eq 0 ] || die "apt-get install ${missing[*]} failed"
  DID+=("installed ${missing[*]}")
else
  log "packages: all ${#PKGS[@]} present"
fi

# 2. static busybox for the initramfs (installing busybox-static would remove busybox)
BB=$W/busybox
if [ -x "$BB" ]; then
  log "busybox-static: present"
else
  deb=$(download busybox-static 2>/dev/null) || { apt_update; deb=$(download busybox-static); }
  rm -rf "$W/bb.tmp"; dpkg-deb -x "$deb" "$W/bb.tmp"
  [ -x "$W/bb.tmp/bin/busybox" ] || die "no bin/busybox in $deb"
  mv "$W/bb.tmp/bin/busybox" "$BB"; rm -rf "$W/bb.tmp"
  DID+=("busybox from ${deb##*/}")
fi

# 3. kernel: the newest linux-image-6.1.0-N-amd64 in the apt lists
newest_kernel() { apt-cache pkgnames linux-image-6.1.0- | grep -E '^linux-image-6\.1\.0-[0-9]+-amd64$' | sort -V | tail -n 1; }
KPKG=$(newest_kernel || true)
[ -n "$KPKG" ] || { apt_update; KPKG=$(newest_kernel || true); }
[ -n "$KPKG" ] || die "no linux-image-6.1.0-*-amd64 in the apt lists"
KVER=${KPKG#linux-image-}
if [ "$(cat "$W/kernel-version" 2>/dev/null)" = "$KVER" ] &&
   [ -f "$W/kernel/boot/vmlinuz-$KVER" ] && [ -s "$W/kernel/lib/modules/$KVER/modules.dep" ]; then
  log "kernel: $KVER present"
else
  deb=$(ls "$W/debs/${KPKG}"_*.deb 2>/dev/null | tail -n 1) || true
  if [ -z "$deb" ]; then
    log "kernel: downloading $KPKG"
    # stale apt lists may name a kernel the mirror no longer has: update, pick again
    deb=$(download "$KPKG" 2>/dev/null) ||
      { apt_update; KPKG=$(newest_kernel); KVER=${KPKG#linux-image-}; deb=$(download "$KPKG"); }
  fi
  log "kernel: extracting ${deb##*/}"
  rm -rf "$W/kernel.tmp"; dpkg-deb -x "$deb" "$W/kernel.tmp"
  [ -f "$W/kernel.tmp/boot/vmlinuz-$KVER" ] || die "no boot/vmlinuz-$KVER in $deb"
  depmod -b "$W/kernel.tmp" "$KVER"
  rm -rf "$W/kernel"; mv "$W/kernel.tmp" "$W/kernel"
  echo "$KVER" > "$W/kernel-version"
  for f in "$W"/debs/linux-image-*.deb; do [ "$f" = "$deb" ] || rm -f "$f"; done
  DID+=("kernel $KVER")
fi

# 3b. uncompressed kernel for PVH boot (skips xz decompression under TCG)
VMLINUX=$W/kernel/boot/vmlinux-$KVER
if [ -s "$VMLINUX" ]; then
  log "vmlinux (PVH): present"
elif grep -q '^CONFIG_PVH=y' "$W/kernel/boot/config-$KVER"; then
  off=$(LC_ALL=C grep -abo $'\xfd7zXZ' "$W/kernel/boot/vmlinuz-$KVER" | head -n 1 | cut -d: -f1) || true
  if [ -n "$off" ] && { tail -c +$((off + 1)) "$W/kernel/boot/vmlinuz-$KVER" || :; } |
       xz -dc --single-stream > "$VMLINUX.tmp" 2>/dev/null &&
     [ "$(head -c 4 "$VMLINUX.tmp" | tail -c 3)" = ELF ]; then
    mv "$VMLINUX.tmp" "$VMLINUX"; DID+=("vmlinux-$KVER")
  else
    rm -f "$VMLINUX.tmp"; log "vmlinux (PVH): not extracted; runvm.sh boots the bzImage"
  fi
fi

# 4. initramfs: load virtio/9p/overlay, mount host / read-only over 9p under a
#    tmpfs overlay, mount the run's results share at /mnt/out, switch_root into
#    bash running /mnt/out/.smvm/stage2.sh (written by runvm.sh).
read -r -d '' INIT <<'EOF' || true
#!/bin/busybox sh
B=/bin/busybox
die() { $B echo "SMVM-INIT-FAILED: $*"; $B sync; $B poweroff -f; }
$B mount -t proc proc /proc; $B mount -t sysfs sys /sys; $B mount -t devtmpfs dev /dev
for m in $($B cat /mods/order); do $B insmod /mods/$m || die "insmod $m"; done
$B mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /host || die "9p mount of host /"
$B mount -t tmpfs -o size=3g,mode=755 tmpfs /ovl; $B mkdir -p /ovl/upper /ovl/work
$B mount -t overlay overlay -o lowerdir=/host,upperdir=/ovl/upper,workdir=/ovl/work /newroot || die "overlay mount"
for d in proc sys dev run tmp mnt/out; do $B mkdir -p /newroot/$d; done
$B mount -t proc proc /newroot/proc; $B mount -t sysfs sys /newroot/sys; $B mount -t devtmpfs dev /newroot/dev
$B mount -t tmpfs -o mode=755 tmpfs /newroot/run
$B mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 out /newroot/mnt/out || die "9p mount of results share"
[ -f /newroot/mnt/out/.smvm/stage2.sh ] || die "no .smvm/stage2.sh in the results share"
$B ip link set lo up; $B hostname smvm; $B echo 1 > /proc/sys/kernel/sysrq
exec $B switch_root /newroot /bin/bash /mnt/out/.smvm/stage2.sh
EOF
INITMODS=(virtio_pci 9pnet_virtio 9p overlay)
MODPATHS=()   # load order, dependencies first
for m in "${INITMODS[@]}"; do
  deps=$(modprobe -d "$W/kernel" -S "$KVER" --show-depends "$m") || die "module $m not in $KVER"
  while read -r kind path _; do
    [ "$kind" = insmod ] || continue
    [[ " ${MODPATHS[*]-} " == *" $path "* ]] || MODPATHS+=("$path")
  done <<< "$deps"
done
KEY=$( { echo "$KVER"; for f in "$BB" "${MODPATHS[@]}"; do sha256sum < "$f"; done; echo "$INIT"; } | sha256sum | cut -c1-16)
if [ -s "$W/initramfs.cpio.gz" ] && [ "$(cat "$W/initramfs.key" 2>/dev/null)" = "$KEY" ]; then
  log "initramfs: up to date ($KEY)"
else
  S=$W/initramfs.tmp
  rm -rf "$S"; mkdir -p "$S"/{bin,mods,dev,proc,sys,host,ovl,newroot}
  cp "$BB" "$S/bin/busybox"
  printf '%s\n' "$INIT" > "$S/init"; chmod 755 "$S/init"
  for p in "${MODPATHS[@]}"; do
    n=${p##*/}
    case $n in   # busybox insmod wants plain .ko
      *.ko.xz)  xz -dc "$p" > "$S/mods/${n%.xz}"; n=${n%.xz} ;;
      *.ko.zst) zstd -qdc "$p" > "$S/mods/${n%.zst}"; n=${n%.zst} ;;
      *)        cp "$p" "$S/mods/$n" ;;
    esac
    echo "$n" >> "$S/mods/order"
  done
  find "$S" -exec touch -h -d @0 {} +      # same inputs, same bytes
  (cd "$S" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --reproducible --quiet) | gzip -9n > "$W/initramfs.cpio.gz.tmp"
  mv "$W/initramfs.cpio.gz.tmp" "$W/initramfs.cpio.gz"; echo "$KEY" > "$W/initramfs.key"; rm -rf "$S"
  DID+=("initramfs $KEY ($(du -k "$W/initramfs.cpio.gz" | cut -f1) KiB)")
fi

if [ ${#DID[@]} -eq 0 ]; then
  log "ready: $W (kernel $KVER), nothing to do"
else
  log "ready: $W (kernel $KVER):"; printf '  - %s\n' "${DID[@]}"
fi
