#!/bin/bash
# capture-fixtures.sh - regenerates test/os/fixtures/ from real tools in the VM:
#   SMVM_OUT=test/os/fixtures test/vm/runvm.sh test/vm/capture-fixtures.sh && rm -rf test/os/fixtures/.smvm
# (as root, after build-vm.sh). Each fixture is one tool's real output; the
# host-tier parser tests (test/os) read them.
set -u
O=${SMVM_OUT:?}
export LVM_SUPPRESS_FD_WARNINGS=1
cap() { local f=$1; shift; "$@" > "$O/$f" 2>/dev/null; echo "captured $f (rc=$?)"; }
caperr() { local f=$1; shift; "$@" > /dev/null 2> "$O/$f"; echo "captured $f (rc=$?)"; }

d=/lib/systemd; [ -x $d/systemd-udevd ] || d=/usr/lib/systemd
$d/systemd-udevd --daemon 2>/dev/null; udevadm trigger --action=add --subsystem-match=block; udevadm settle -t 30
modprobe -a dm-mod loop iscsi_tcp sd_mod nfsd nfs nfsv3 nfsv4

# LVM reports
truncate -s 256M /tmp/pv.img; L=$(losetup -f --show /tmp/pv.img)
C="devices { filter = [ \"a|^$L\$|\", \"r|.*|\" ] use_devicesfile = 0 } backup { backup = 0 archive = 0 }"
R=(--reportformat json --units b --nosuffix)
pvcreate -q --config "$C" "$L"; vgcreate -q --config "$C" -s 4m VG_XenStorage-fixture "$L"
lvcreate -q --config "$C" -n VHD-4e1ba8f5-0d8b-4c6e-9a57-2f3a1d0e6b11 -L 12m --addtag vdi_type=vhd --addtag hidden VG_XenStorage-fixture
lvcreate -q --config "$C" -n MGT -L 4m -an -Zn VG_XenStorage-fixture
cap lvs.json lvs --config "$C" "${R[@]}" -o lv_name,vg_name,lv_size,lv_tags,lv_attr VG_XenStorage-fixture
cap vgs.json vgs --config "$C" "${R[@]}" -o vg_name,vg_size,vg_free,vg_extent_size,vg_tags,pv_count,lv_count
cap pvs.json pvs --config "$C" "${R[@]}" -o pv_name,vg_name,pv_size,pv_free
caperr lvs-missing-vg.stderr lvs --config "$C" "${R[@]}" VG_XenStorage-missing
caperr lvresize-same.stderr lvresize --config "$C" -f -L 12m VG_XenStorage-fixture/VHD-4e1ba8f5-0d8b-4c6e-9a57-2f3a1d0e6b11
vgremove -q -f --config "$C" VG_XenStorage-fixture >/dev/null; losetup -d "$L"

# iSCSI
[ -s /etc/iscsi/initiatorname.iscsi ] || echo "InitiatorName=$(iscsi-iname)" > /etc/iscsi/initiatorname.iscsi
truncate -s 128M /tmp/lun1.img /tmp/lun2.img
tgtd -f --iscsi portal=127.0.0.1:3260 > /dev/null 2>&1 & TGTD=$!
for i in $(seq 100); do tgtadm --lld iscsi --mode sys --op show >/dev/null 2>&1 && break; sleep 0.2; done
tgtadm --lld iscsi --mode target --op new --tid 1 --targetname iqn.2024-01.test.smvm:one
tgtadm --lld iscsi --mode logicalunit --op new --tid 1 --lun 1 --backing-store /tmp/lun1.img
tgtadm --lld iscsi --mode target --op bind --tid 1 --initiator-address ALL
tgtadm --lld iscsi --mode target --op new --tid 2 --targetname iqn.2024-01.test.smvm:chap
tgtadm --lld iscsi --mode logicalunit --op new --tid 2 --lun 1 --backing-store /tmp/lun2.img
tgtadm --lld iscsi --mode target --op bind --tid 2 --initiator-address ALL
tgtadm --lld iscsi --mode account --op new --user alice --password Right-Secret-1
tgtadm --lld iscsi --mode account --op bind --tid 2 --user alice
iscsid -f > /dev/null 2>&1 & ISCSID=$!
for i in $(seq 100); do grep -q ISCSIADM_ABSTRACT_NAMESPACE /proc/net/unix && break; sleep 0.2; done
cap iscsiadm-discovery.txt iscsiadm -m discovery -t sendtargets -p 127.0.0.1:3260
caperr iscsiadm-session-none.stderr iscsiadm -m session
N=(-m node -T iqn.2024-01.test.smvm:chap -p 127.0.0.1:3260)
iscsiadm "${N[@]}" -o update -n node.session.auth.authmethod -v CHAP -n node.session.auth.username -v alice -n node.session.auth.password -v Wrong-Secret-2
caperr iscsiadm-login-auth.stderr iscsiadm "${N[@]}" --login
iscsiadm "${N[@]}" -o update -n node.session.auth.password -v Right-Secret-1
iscsiadm "${N[@]}" --login >/dev/null
iscsiadm -m node -T iqn.2024-01.test.smvm:one -p 127.0.0.1:3260 --login >/dev/null
udevadm settle -t 30
cap iscsiadm-session.txt iscsiadm -m session
dev=$(readlink -f /dev/disk/by-path/ip-127.0.0.1:3260-iscsi-iqn.2024-01.test.smvm:one-lun-1)
cp "/sys/block/${dev##*/}/device/vpd_pg80" "$O/vpd_pg80.bin"; echo "captured vpd_pg80.bin"
cap scsi_id.txt /lib/udev/scsi_id -g -u -d "$dev"
iscsiadm -m node --logoutall=all >/dev/null
kill -9 $ISCSID $TGTD

# NFS
mkdir -p /srv/fx /srv/fx2 /mnt/fx /var/lib/nfs/v4recovery
mount -t tmpfs tmpfs /srv/fx; mount -t tmpfs tmpfs /srv/fx2; mount -t nfsd nfsd /proc/fs/nfsd
printf '/srv/fx 127.0.0.1(rw,no_root_squash,no_subtree_check,fsid=0)\n/srv/fx2 127.0.0.2(ro,no_subtree_check,fsid=2) 127.0.0.3(ro,no_subtree_check,fsid=2) *.example.test(ro,no_subtree_check,fsid=2)\n' > /etc/exports
rpcbind; rpc.statd --no-notify; exportfs -ra; rpc.mountd; rpc.nfsd -H 127.0.0.1 4; echo Y > /proc/fs/nfsd/v4_end_grace
cap showmount-e.txt showmount -e 127.0.0.1
cap rpcinfo-p.txt rpcinfo -p 127.0.0.1
mount -t nfs -o soft,proto=tcp,vers=3,acdirmin=0,acdirmax=0,timeo=200,retrans=4 127.0.0.1:/srv/fx /mnt/fx
grep -E ' (nfs|nfs4|tmpfs) ' /proc/mounts > "$O/proc-mounts.txt"; echo "captured proc-mounts.txt"
umount /mnt/fx
caperr mount-not-exported.stderr mount -t nfs -o vers=3 127.0.0.1:/srv/none /mnt/fx
rpc.nfsd 0
