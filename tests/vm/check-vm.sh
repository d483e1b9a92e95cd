#!/bin/bash
# check-vm.sh: a Linux guest under QEMU whose only disk is our NBD export
# (a renew: overlay over a raw base). The guest makes ext4 and keeps writing
# files of known checksums while this host renews the disk live three times
# (tap-ctl-renew renew --wait); then the guest verifies every file with cold
# caches and powers off, and the host checks the export: e2fsck -fn, the
# files' checksums read back from the image, renew-img check, and the same
# bytes offline as online. Then a power cut: a second guest runs the daemon
# itself on its own disk and is killed while writing through it; every
# write it flushed must be on that disk (powercut-verify.py).
#   Kernel: Debian's linux-image-amd64, extracted from its .deb (cached in
#   tests/cache/vm, keyed by the package version). Initramfs: our own
#   (mkinitramfs.sh). KVM when a probe guest boots with it, else TCG.
#   VM_ACCEL=kvm|tcg forces one. Prints one line per check and ends with
#   "N passed, N failed"; exit 0 only when all passed.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
TOP=$PWD
BIN=$TOP/${BINDIR:-bin}
CACHE=$TOP/tests/cache/vm
HERE=$TOP/tests/vm
mkdir -p "$CACHE" "$TOP/tests/tmp"
W=$(mktemp -d "$TOP/tests/tmp/check-vm.XXXXXX")
export RENEW_RUNDIR=$W/run
T0=$(date +%s)
passed=0 failed=0 QPID="" DPID=""

say() { echo "[$(($(date +%s) - T0))s] $*"; }
pass() { passed=$((passed + 1)); echo "PASS $*"; }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }
# check NAME CMD...: run CMD, PASS or FAIL under NAME.
check() { local n=$1; shift; if "$@"; then pass "$n"; else fail "$n"; fi; }
finish() {
	[ -n "$QPID" ] && kill "$QPID" 2>/dev/null
	[ -n "$DPID" ] && "$BIN/tap-ctl-renew" destroy -p "$DPID" -m "$MINOR" >/dev/null 2>&1
	exec 7>&- 2>/dev/null
	echo "$passed passed, $failed failed"
	if [ $failed = 0 ] && [ $passed -gt 0 ]; then rm -rf "$W"; exit 0; fi
	echo "kept $W (console.log: the guest's console; qemu.out)"
	exit 1
}
trap finish EXIT
# abort WHY: a step the rest depends on failed.
abort() { fail "$*"; exit 1; }

# --- host packages, the build ---
"$TOP/tests/install-deps.sh" qemu-system-x86 busybox-static cpio e2fsprogs libnbd-bin nbd-client ||
	abort "installing the VM test's Debian packages"
# a private copy of the programs: a rebuild of bin/ during the run must not
# mix versions (tap-ctl-renew spawns the tapdisk-renew found next to itself)
mkdir -p "$W/bin"
for p in tapdisk-renew tap-ctl-renew renew-img; do cp "$BIN/$p" "$W/bin/" || abort "$BIN/$p missing: run make"; done
BIN=$W/bin

# --- Debian's kernel, from its package (no root filesystem needed) ---
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
if [ -z "$kpkg" ]; then apt-get update -qq; kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }'); fi
kver=$(apt-cache policy "$kpkg" | awk '/Candidate:/ { print $2 }')
K=$CACHE/kernel-${kpkg}_$kver
if [ ! -e "$K/.ok" ]; then
	say "fetching $kpkg $kver"
	rm -rf "$CACHE"/kernel-* && mkdir -p "$K.tmp" || abort "mkdir $K.tmp"
	# apt-get download writes into the current directory
	(cd "$K.tmp" && apt-get download "$kpkg=$kver" >/dev/null 2>&1) || abort "apt-get download $kpkg=$kver"
	dpkg-deb -x "$K.tmp"/*.deb "$K.tmp/x" || abort "dpkg-deb -x $kpkg"
	mkdir -p "$K" && mv "$K.tmp"/x/boot/vmlinuz-* "$K/vmlinuz" && mv "$K.tmp"/x/lib/modules/* "$K/modules" &&
		rm -rf "$K.tmp" && touch "$K/.ok" || abort "unpack $kpkg into $K"
fi
say "kernel $kpkg $kver"
# the power-cut guest runs the daemon itself, attached with nbd-client
EXTRA_PROGS="$BIN/tapdisk-renew $BIN/tap-ctl-renew $(command -v nbd-client)" \
	"$HERE/mkinitramfs.sh" "$W/initrd.gz" "$K/modules" "$HERE/guest-init" virtio_pci virtio_blk ext4 crc32c_generic nbd ||
	abort "initramfs"

# --- the disk: an empty overlay over a raw base, served over NBD ---
truncate -s 256M "$W/base.raw"
"$BIN/renew-img" snapshot "$W/base.raw" "$W/disk.vhd" >/dev/null || abort "renew-img snapshot $W/base.raw $W/disk.vhd"
SOCK=$("$BIN/tap-ctl-renew" create --socket-only -a "renew:$W/disk.vhd" 2>"$W/create.err") ||
	abort "tap-ctl-renew create -a renew:$W/disk.vhd: $(cat "$W/create.err")"
line=$("$BIN/tap-ctl-renew" list -t renew -f "$W/disk.vhd")
DPID=$(echo "$line" | sed -n 's/.*pid=\([0-9]*\).*/\1/p')
MINOR=$(echo "$line" | sed -n 's/.*minor=\([0-9]*\).*/\1/p')
[ -n "$DPID" ] && [ -n "$MINOR" ] && [ -S "$SOCK" ] || abort "tap-ctl-renew list -f $W/disk.vhd: '$line'"
pass "disk served: $line on $SOCK"

# --- KVM when a guest really boots with it (some hosts' /dev/kvm cannot) ---
# an array, not a function: `timeout` runs it, and `&` gives QEMU's own
# pid (a power cut must kill QEMU, not a subshell waiting for it)
QEMU=(qemu-system-x86_64 -m 512 -display none -nodefaults -no-reboot -kernel "$K/vmlinuz")
accel=${VM_ACCEL:-}
if [ -z "$accel" ]; then
	accel=tcg
	if [ -w /dev/kvm ]; then
		timeout 20 "${QEMU[@]}" -accel kvm -cpu host -initrd "$W/initrd.gz" -serial "file:$W/probe.log" \
			-append "console=ttyS0 panic=-1 renew.probe=1" </dev/null >/dev/null 2>&1
		grep -q "GUEST: probe ok" "$W/probe.log" 2>/dev/null && accel=kvm
	fi
fi
cpu=max
[ "$accel" = kvm ] && cpu=host
say "accelerator: $accel"

# --- the guest: console through a pair of FIFOs (QEMU opens both read-write) ---
mkfifo "$W/con.in" "$W/con.out"
"${QEMU[@]}" -accel "$accel" -cpu $cpu -smp 1 -initrd "$W/initrd.gz" \
	-append "console=ttyS0 loglevel=4 panic=-1 renew.disks=vda" \
	-chardev "pipe,id=con,path=$W/con" -serial chardev:con \
	-drive "file=nbd+unix:///?socket=$SOCK,format=raw,if=virtio" </dev/null >"$W/qemu.out" 2>&1 &
QPID=$!
cat "$W/con.out" >"$W/console.log" &      # unbuffered, unlike tr
exec 7>"$W/con.in"
C=$W/console.log

# wait_con SECONDS PATTERN: until the console has a line matching PATTERN.
wait_con() {
	local n=$1
	while ! grep -q "$2" "$C"; do
		kill -0 "$QPID" 2>/dev/null || { grep -q "$2" "$C"; return; }
		n=$((n - 1)); [ $n -gt 0 ] || return 1; sleep 1
	done
}
# files: how many files the guest has written so far (it reports each one).
files() { sed -n 's/^GUEST: vda files \([0-9]*\).*/\1/p' "$C" | tail -n 1 | grep . || echo 0; }

if wait_con 600 "GUEST: vda writing"; then
	pass "guest booted ($accel) and made ext4 on the NBD disk at $(($(date +%s) - T0))s"
else
	fail "guest did not start writing"; tail -n 30 "$C"; cat "$W/qemu.out"; exit 1
fi

# --- three live renews while the guest writes; the last two throttled
# (--rate 8 MB/s) so that the guest's writes surely land during the copy ---
for k in 1 2 3; do
	want=$(($(files) + 20))
	n=300; while [ "$(files)" -lt $want ] && [ $n -gt 0 ]; do sleep 1; n=$((n - 1)); done
	alloc=$("$BIN/renew-img" info "$W/disk.vhd" 2>&1 | sed -n 's/^allocated_bytes: //p')
	rate=""; [ $k -gt 1 ] && rate="--rate 8"
	f0=$(files)
	out=$(timeout 900 "$BIN/tap-ctl-renew" renew -p "$DPID" -m "$MINOR" --wait $rate 2>&1)
	rc=$?
	f1=$(files)
	what="renew $k ${rate:+($rate) }under load: $out; overlay had ${alloc:-?} bytes; guest files $f0 -> $f1 during it"
	if [ $rc != 0 ] || ! echo "$out" | grep -q "bytes committed"; then
		fail "$what (exit $rc)"
	elif [ $k -gt 1 ] && [ "$f1" -le "$f0" ]; then
		fail "$what: the guest wrote nothing during the renew"
	else
		pass "$what"
	fi
done
# 25 files: the guest rewrites its 8 MiB file in place at least twice, and
# the second time its blocks of the fresh overlay are full
want=$(($(files) + 25)); n=300
while [ "$(files)" -lt $want ] && [ $n -gt 0 ]; do sleep 1; n=$((n - 1)); done
check "guest keeps writing after the renews ($(files) files)" [ "$(files)" -ge $want ]
grep "GUEST-FAIL" "$C" && fail "guest reported failures"

echo stop >&7
if wait_con 900 "GUEST-VERIFY-"; then
	l=$(grep "GUEST-VERIFY-" "$C" | head -n 1 | tr -d '\r')
	case "$l" in GUEST-VERIFY-OK*) pass "guest verified every file with cold caches: $l" ;; *) fail "guest verify: $l" ;; esac
else
	fail "guest verify did not finish"; tail -n 20 "$C"
fi
n=120; while kill -0 "$QPID" 2>/dev/null && [ $n -gt 0 ]; do sleep 1; n=$((n - 1)); done
check "guest powered off" sh -c "! kill -0 $QPID 2>/dev/null && grep -q GUEST-DONE '$C'"
QPID=""

# --- the host's view of the disk ---
stats=$("$BIN/tap-ctl-renew" stats -p "$DPID" -m "$MINOR" 2>&1)
echo "$stats" >"$W/stats.json"
check "daemon stats: no I/O errors" python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))
def errs(o):
    if isinstance(o, dict):
        return sum(v for k, v in o.items() if "error" in k and isinstance(v, int)) + sum(errs(v) for v in o.values())
    return 0
sys.exit(errs(j) != 0)' "$W/stats.json"
check "guest rewrites acknowledged behind their landing: $(grep -o '"write_behind_writes": [0-9]*' "$W/stats.json")" \
	python3 -c 'import json, sys; sys.exit(json.load(open(sys.argv[1]))["images"][0]["write_behind_writes"] == 0)' "$W/stats.json"
if nbdcopy "nbd+unix:///?socket=$SOCK" "$W/export.raw" 2>"$W/nbdcopy.err"; then
	check "host e2fsck -fn on the export" sh -c "e2fsck -fn '$W/export.raw' >'$W/fsck.out' 2>&1 || { tail -n 20 '$W/fsck.out'; false; }"
	# every file the guest wrote, read out of the exported image by debugfs
	mkdir -p "$W/files"
	debugfs -R "dump /MANIFEST $W/files/MANIFEST" "$W/export.raw" >/dev/null 2>&1
	awk -v d="$W/files" '{ print "dump /" $2 " " d "/" $2 }' "$W/files/MANIFEST" >"$W/dump.cmds" 2>/dev/null
	debugfs -f "$W/dump.cmds" "$W/export.raw" >/dev/null 2>&1
	check "host sha256sum -c of the guest's $(wc -l <"$W/files/MANIFEST" 2>/dev/null) files read from the export" \
		sh -c "cd '$W/files' && sha256sum --quiet -c MANIFEST"
else
	fail "nbdcopy of the export: $(cat "$W/nbdcopy.err")"
fi
check "tap-ctl-renew destroy" "$BIN/tap-ctl-renew" destroy -p "$DPID" -m "$MINOR"
DPID=""
check "no daemon or socket left" sh -c "[ -z \"\$('$BIN/tap-ctl-renew' list)\" ] && ! ls '$RENEW_RUNDIR' | grep -q ."
check "renew-img check: clean" "$BIN/renew-img" check "$W/disk.vhd"
check "offline read (renew-img convert) equals the export" \
	sh -c "'$BIN/renew-img' convert '$W/disk.vhd' - | cmp - '$W/export.raw'"
# --- power cuts: a guest runs the daemon on an overlay in its own ext4
# disk and writes through /dev/nbd0, a flush after every 8th write, until
# QEMU is killed: what the guest's page cache held is lost, as in a power
# loss, and every write up to the last flush the guest reported must be on
# its disk (guest-init's powercut). Once plain, once with live renews
# running back to back, so that the cut may fall inside one ---
# powercut DIR NAME [KERNEL-ARGS]: one guest, one cut, the checks; its
# files in $W/DIR.
powercut() {
	local d=$W/$1 name=$2 extra=${3:-} n N rc out spid renews
	mkdir -p "$d/in" "$d/out"
	head -c 64M /dev/urandom >"$d/in/base.raw"
	"$BIN/renew-img" snapshot "$d/in/base.raw" "$d/in/vm.vhd" >/dev/null || { fail "$name: snapshot"; return; }
	truncate -s 128M "$d/disk.img" && : >"$d/console.log"
	mkfs.ext4 -q -F -d "$d/in" "$d/disk.img" || { fail "$name: mkfs.ext4 -d"; return; }
	"${QEMU[@]}" -accel "$accel" -cpu $cpu -smp 1 -initrd "$W/initrd.gz" \
		-append "console=ttyS0 loglevel=4 panic=-1 renew.powercut=vda $extra" -serial "file:$d/console.log" \
		-drive "file=$d/disk.img,format=raw,if=virtio" </dev/null >"$d/qemu.out" 2>&1 &
	QPID=$!
	flushed() { sed -n 's/^GUEST: flushed \([0-9]*\).*/\1/p' "$d/console.log" | tail -n 1 | grep . || echo 0; }
	# past 640 writes every write rewrites an earlier one; cut at 1300,
	# or at whatever was reached after 300 s of writing
	n=0
	while [ "$(flushed)" -lt 1300 ] && [ $n -lt 600 ] && kill -0 "$QPID" 2>/dev/null &&
		! grep -q GUEST-FAIL "$d/console.log"; do sleep 0.5; n=$((n + 1)); done
	sleep "0.$((RANDOM % 10))"
	kill -9 "$QPID" 2>/dev/null
	wait "$QPID" 2>/dev/null
	if kill -0 "$QPID" 2>/dev/null || pgrep -f "file=$d/disk.img" >/dev/null; then
		fail "$name: QEMU still runs after kill -9"; return
	fi
	QPID=""
	N=$(flushed)
	grep "GUEST-FAIL" "$d/console.log" && fail "$name: the guest reported failures"
	if [ "$N" -lt 640 ]; then
		fail "$name: the guest reached only $N flushed writes (want 640 or more)"; tail -n 20 "$d/console.log"
		return
	fi
	renews=$(grep -c "^GUEST: renewed" "$d/console.log")
	# e2fsck replays the guest's journal, as the next mount would
	e2fsck -fy "$d/disk.img" >"$d/fsck.out" 2>&1
	rc=$?
	check "$name after $N flushed writes ($renews renews): the guest's ext4 recovers (e2fsck -fy exit $rc)" [ $rc -le 1 ]
	debugfs -R "ls -l /" "$d/disk.img" >"$d/ls.out" 2>&1
	debugfs -R "dump /vm.vhd $d/out/vm.vhd" "$d/disk.img" >/dev/null 2>&1
	debugfs -R "dump /base.raw $d/out/base.raw" "$d/disk.img" >/dev/null 2>&1
	check "$name: renew-img check of the overlay: $("$BIN/renew-img" check "$d/out/vm.vhd" 2>&1 | tr '\n' ' ')" \
		"$BIN/renew-img" check "$d/out/vm.vhd"
	rm -f "$d/s.sock"
	"$BIN/tapdisk-renew" --serve "renew:$d/out/vm.vhd" --socket "$d/s.sock" 2>>"$d/tapdisk.log" &
	spid=$!
	n=0; while [ ! -S "$d/s.sock" ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
	nbdcopy "nbd+unix:///?socket=$d/s.sock" "$d/export.raw" 2>"$d/nbdcopy.err" ||
		fail "$name: nbdcopy: $(cat "$d/nbdcopy.err")"
	kill "$spid"; wait "$spid" 2>/dev/null
	out=$(python3 "$HERE/powercut-verify.py" "$d/export.raw" "$d/in/base.raw" "$N" 2>&1)
	rc=$?
	check "$name: $out" [ $rc = 0 ]
}
powercut pc "power cut"
powercut pc-renew "power cut during renews" renew.renews=1
say "done"
