#!/bin/bash
# check-xen.sh: a real Xen 4.17 host, nested under qemu-system-x86_64 (TCG),
# runs our programs in its dom0 (tests/xen/dom0-test.sh: xl block-attach of
# renew: disks through block-tap and block-renew, live renews under a PV
# guest's writes, detach, nothing left behind).
#   dom0: Debian 12 from its packages (build-rootfs.sh), cached in
#   tests/cache/xen/KEY with KEY a hash of build-rootfs.sh: a changed recipe
#   rebuilds it. Our programs go in on a second disk, laid out by
#   make install DESTDIR=, as an admin would install them; the root disk is
#   opened snapshot=on, so the cached image stays as built.
#   Env: CPU=qemu64|max (default qemu64), TIMEOUT=seconds for the nested
#   run (default 2700). Prints one line per check and ends with
#   "N passed, N failed"; exit 0 only when all passed.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
TOP=$PWD
BINDIR=${BINDIR:-bin}
HERE=$TOP/tests/xen
CACHE=$TOP/tests/cache/xen
CPU=${CPU:-qemu64}
TIMEOUT=${TIMEOUT:-2700}
mkdir -p "$CACHE" "$TOP/tests/tmp"
W=$(mktemp -d "$TOP/tests/tmp/check-xen.XXXXXX")
T0=$(date +%s)
passed=0 failed=0 QPID=""

say() { echo "[$(($(date +%s) - T0))s] $*"; }
pass() { passed=$((passed + 1)); echo "PASS $*"; }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }
finish() {
	[ -n "$QPID" ] && kill "$QPID" 2>/dev/null
	echo "$passed passed, $failed failed"
	if [ $failed = 0 ] && [ $passed -gt 0 ]; then rm -rf "$W"; exit 0; fi
	echo "kept $W (serial.log: Xen, dom0 and the test's output)"
	exit 1
}
trap finish EXIT
abort() { fail "$*"; exit 1; }

# --- host packages ---
"$TOP/tests/install-deps.sh" debootstrap qemu-system-x86 busybox-static cpio e2fsprogs ||
	abort "installing the Xen test's Debian packages"

# --- the dom0 image, cached by recipe ---
key=$(sha256sum "$HERE/build-rootfs.sh" | cut -c1-12)
X=$CACHE/$key
R=$X/rootfs
if [ ! -e "$X/.ok" ]; then
	say "building the dom0 root filesystem (debootstrap; recipe $key)"
	find "$CACHE" -mindepth 1 -maxdepth 1 ! -name "$key" -exec rm -rf {} +
	"$HERE/build-rootfs.sh" "$R" || abort "build-rootfs.sh $R"
	KV=$(ls "$R/lib/modules" | head -n 1)
	mkdir -p "$X/boot"
	# QEMU's multiboot loader wants Xen as the uncompressed ELF
	zcat "$R"/boot/xen-4.17-amd64.gz >"$X/boot/xen" &&
		cp "$R/boot/vmlinuz-$KV" "$X/boot/vmlinuz" && cp "$R/boot/initrd.img-$KV" "$X/boot/initrd.img" ||
		abort "boot files from $R/boot"
	mkfs.ext4 -q -F -L dom0root -d "$R" "$X/dom0.img" 3G >/dev/null || abort "mkfs.ext4 -d $R $X/dom0.img"
	touch "$X/.ok"
fi
KV=$(ls "$R/lib/modules" | head -n 1)
say "dom0 image $X/dom0.img (Linux $KV)"

# --- the payload: our programs as make install lays them out, the test, the guest ---
Y=$W/payload
make -s install DESTDIR="$Y/root" PREFIX=/usr/local BINDIR="$BINDIR" >"$W/install.log" 2>&1 ||
	{ cat "$W/install.log"; abort "make install DESTDIR=$Y/root"; }
grep install-tap-ctl "$W/install.log"
cp "$HERE/dom0-init" "$HERE/dom0-test.sh" "$Y/" && cp "$R/boot/vmlinuz-$KV" "$Y/domu-vmlinuz" || abort "payload files"
"$TOP/tests/vm/mkinitramfs.sh" "$Y/domu-initrd.gz" "$R/lib/modules/$KV" "$TOP/tests/vm/guest-init" \
	xen-blkfront ext4 crc32c_generic || abort "domU initramfs"
mkfs.ext4 -q -F -L payload -d "$Y" "$W/payload.img" 128M >/dev/null || abort "mkfs.ext4 -d $Y $W/payload.img"

# --- boot Xen + dom0 nested under TCG ---
XENARGS="console=com1 com1=115200,8n1 loglvl=all guest_loglvl=all dom0_mem=1536M,max:1536M dom0_max_vcpus=2 noreboot"
DOM0ARGS="console=hvc0 earlyprintk=xen root=/dev/vda rw init=/sbin/renew-boot loglevel=4"
say "booting Xen + dom0 (qemu-system-x86_64 TCG, -cpu $CPU); serial log $W/serial.log"
timeout "$TIMEOUT" qemu-system-x86_64 -accel tcg,thread=multi -cpu "$CPU" -smp 2 -m 2560 -machine pc \
	-display none -monitor none -serial "file:$W/serial.log" -no-reboot -nic none \
	-kernel "$X/boot/xen" -append "$XENARGS" -initrd "$X/boot/vmlinuz $DOM0ARGS,$X/boot/initrd.img" \
	-drive "file=$X/dom0.img,if=virtio,format=raw,snapshot=on,cache=unsafe" \
	-drive "file=$W/payload.img,if=virtio,format=raw,cache=unsafe" \
	-device isa-debug-exit,iobase=0xf4,iosize=0x04 </dev/null >"$W/qemu.out" 2>&1 &
QPID=$!
# follow the test's lines as they come; count its PASS/FAIL lines
touch "$W/serial.log"
tail -n +1 -f --pid=$QPID "$W/serial.log" | sed -u 's/\r$//' | grep --line-buffered -a '^XEN: ' |
	grep --line-buffered -v '^XEN: [0-9]* passed, [0-9]* failed' | sed -u 's/^XEN: //' &
FOLLOW=$!
wait $QPID
qrc=$?
QPID=""
wait $FOLLOW 2>/dev/null   # tail sees qemu gone and the pipeline prints its last lines
say "qemu exited with $qrc (1: the dom0 test passed, 3: it failed, 124: timeout)"
tr -d '\r' <"$W/serial.log" >"$W/serial.txt"
d_pass=$(grep -ac '^XEN: PASS ' "$W/serial.txt")
d_fail=$(grep -ac '^XEN: FAIL ' "$W/serial.txt")
passed=$((passed + d_pass)) failed=$((failed + d_fail))
if grep -aq '^XEN: [0-9]* passed, [0-9]* failed' "$W/serial.txt"; then
	pass "dom0 test ran to its end"
else
	fail "dom0 test did not finish (qemu exit $qrc)"
	grep -a 'XEN)\|renew-boot\|Kernel panic\|libxl: error' "$W/serial.txt" | tail -n 20
fi
[ "$qrc" = 1 ] || [ $d_fail -gt 0 ] || fail "qemu exit status $qrc (expected 1: the dom0 test's status 0)"
say "done"
