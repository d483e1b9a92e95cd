#!/bin/bash
# mkinitramfs.sh OUT MODDIR INIT MODULE...
# A small initramfs of our own for the test guests: static busybox,
# e2fsprogs' mke2fs and e2fsck and the programs EXTRA_PROGS names (with the
# libraries they link, taken from this host), INIT as /init, and each
# MODULE with what it depends on, taken from MODDIR (a kernel's
# lib/modules/VERSION), listed in load order in /lib/modules/load (the init
# insmods them: no depmod, no modprobe).
# Used by check-vm (virtio guest) and check-xen (PV domU).
set -euo pipefail
out=$1 moddir=$2 init=$3
shift 3
die() { echo "mkinitramfs: $*" >&2; exit 1; }
# (grep without -q reads the whole list: with -q it may quit first, and
# pipefail would then count the writer's SIGPIPE as a failure)
[ -x /bin/busybox ] && /bin/busybox --list | grep -x mdev >/dev/null || die "/bin/busybox: not the static busybox (apt-get install busybox-static)"
[ -d "$moddir/kernel" ] || die "$moddir: not a kernel module directory"

root=$(mktemp -d "${TMPDIR:-/tmp}/initramfs.XXXXXX")
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,mnt,lib/modules}
cp /bin/busybox "$root/bin/busybox"
cp "$init" "$root/init"
chmod 755 "$root/init"

# e2fsprogs, the programs named in $EXTRA_PROGS (paths), and the shared
# libraries they need (ldd names each one's path).
for prog in /sbin/mke2fs /sbin/e2fsck ${EXTRA_PROGS:-}; do
	[ -x "$prog" ] || die "$prog missing (apt-get install e2fsprogs)"
	cp "$prog" "$root/sbin/"
	for lib in $(ldd "$prog" | grep -o '/[^ ]*'); do
		mkdir -p "$root$(dirname "$lib")"
		cp -L "$lib" "$root$lib"
	done
done
ln -s mke2fs "$root/sbin/mkfs.ext4"
cp /etc/mke2fs.conf "$root/etc/" 2>/dev/null || true

# Modules: name -> file, then each one after the modules it depends on
# (the "depends=" field the kernel build writes into every .ko).
declare -A path seen
while read -r f; do
	n=$(basename "$f" .ko)
	path[${n//-/_}]=$f
done < <(find "$moddir/kernel" -name '*.ko')
order=()
add() {
	local m=${1//-/_} d
	[ -n "${seen[$m]:-}" ] && return
	seen[$m]=1
	[ -n "${path[$m]:-}" ] || die "module $m not found under $moddir (built in?)"
	for d in $(grep -a -o -m1 'depends=[a-z0-9_,-]*' "${path[$m]}" | head -n1 | cut -d= -f2 | tr ',' ' '); do
		add "$d"
	done
	order+=("$m")
}
for m in "$@"; do add "$m"; done
for m in "${order[@]}"; do
	cp "${path[$m]}" "$root/lib/modules/$m.ko"
	echo "$m" >>"$root/lib/modules/load"
done
touch "$root/lib/modules/load"

(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$out.tmp"
mv "$out.tmp" "$out"
