#!/bin/bash
# build-rootfs.sh DIR: a Debian 12 dom0 root filesystem for check-xen, from
# Debian packages only: Xen 4.17 + xl, Linux 6.1 with Debian's initramfs,
# nbd-client, and the libraries our programs link (libaio1, zlib1g, libssl3).
# No qemu-system-xen: the guests are PV with blkback disks only.
# check-xen caches DIR under a key made from this file, so any change here
# rebuilds it.
set -euo pipefail
R=$1
MIRROR=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
PKGS=xen-hypervisor-4.17-amd64,xen-utils-4.17,xen-utils-common,linux-image-amd64,initramfs-tools
PKGS=$PKGS,busybox,kmod,udev,procps,iproute2,util-linux,e2fsprogs,nbd-client,libaio1,zlib1g,libssl3

rm -rf "$R"
mkdir -p "$(dirname "$R")"
debootstrap --variant=minbase --include=$PKGS bookworm "$R" "$MIRROR" >"$R.log" 2>&1 ||
	{ tail -n 20 "$R.log"; echo "build-rootfs: debootstrap into $R failed (log $R.log)" >&2; exit 1; }
rm -f "$R"/var/cache/apt/archives/*.deb
# The initramfs debootstrap leaves may lack virtio_blk (seen once: only the
# nbd hook's module in drivers/block), and then the dom0 never finds its
# root disk. Rebuild it with exactly what mounting /dev/vda needs.
sed -i 's/^MODULES=.*/MODULES=list/; s/^COMPRESS=.*/COMPRESS=gzip/' "$R/etc/initramfs-tools/initramfs.conf"
printf '%s\n' virtio_pci virtio_blk crc32c_generic ext4 >>"$R/etc/initramfs-tools/modules"
chroot "$R" update-initramfs -u -k all >>"$R.log" 2>&1 ||
	{ echo "build-rootfs: update-initramfs in $R failed (log $R.log)" >&2; exit 1; }
# xenconsoled logs each guest's console to a file the test reads.
echo 'XENCONSOLED_ARGS="--log=guest --log-dir=/var/log/xen/console"' >"$R/etc/default/xen"
# The dom0 kernel runs init=/sbin/renew-boot: it mounts the payload disk
# (/dev/vdb: our programs as make install lays them out, and the test) and
# hands over to its dom0-init, so a change of the test needs no new rootfs.
cat >"$R/sbin/renew-boot" <<'BOOT'
#!/bin/bash
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /mnt/payload
mount -o ro /dev/vdb /mnt/payload && exec /mnt/payload/dom0-init
echo "renew-boot: cannot mount the payload disk /dev/vdb"
busybox poweroff -f
BOOT
chmod 755 "$R/sbin/renew-boot"
touch "$R/.rootfs-ok"
