#!/bin/bash
# An I/O error at each step of a write, a flush and a read of the overlay
# (the data write, the end footer, the bitmap, the BAT sector, the fsync,
# the bitmap and data reads): the request fails with the error, the log
# says which file and what was being written, the daemon goes on serving,
# the client's retry succeeds, and after a restart every write reads back
# and the image checks clean (an allocation cut short may leak its space).
. "$(dirname "$0")/lib.sh"

alloc_setup "$T"
tests/apply-writes.py "$T/orig/base.raw" "$T/want" <"$T/writes"
wcmds=() rcmds=()
while read -r off len byte; do
	wcmds+=("write -P $byte $off $len")
	rcmds+=("read -P $byte $off $len")
done <"$T/writes"

# outcomes FILE: one line per qemu-io command, in order: ok or failed.
outcomes() { grep -E '^(wrote|read [0-9]|write failed|read failed)' "$1" | sed -E 's/^(wrote|read [0-9]).*/ok/; s/^(write|read) failed.*/failed/'; }
# one_failed POINT FILE: exactly one command failed, with the injected error.
one_failed() {
	local n
	n=$(outcomes "$2" | grep -c failed)
	[ "$n" = 1 ] || { cat "$2"; fail "$1: $n requests failed, want 1"; }
	grep -qE 'failed: (Input/output error|No space left on device)' "$2" ||
		{ cat "$2"; fail "$1: the failure does not say which error"; }
	! grep -q 'Pattern verification failed' "$2" || { cat "$2"; fail "$1: a read returned wrong data"; }
	grep -q "fault: ${1%%:*}: failing" "$T/tapdisk.log" || fail "$1: the fault did not fire"
	grep -q "error: .*$T/run/vm.vhd" "$T/tapdisk.log" ||
		{ cat "$T/tapdisk.log"; fail "$1: no error in the log names the image"; }
}
# retry_failed SOCK FILE CMDS...: run again the commands that failed.
retry_failed() {
	local sock=$1 out=$2 i again=() r
	shift 2
	mapfile -t r < <(outcomes "$out")
	for i in "${!r[@]}"; do
		[ "${r[$i]}" = ok ] || again+=("${@:$((i + 1)):1}")
	done
	qio "$sock" "${again[@]}" >"$T/retry" 2>&1 || { cat "$T/retry"; fail "retry of ${again[*]}"; }
}
# reads_back WHAT: a restarted daemon serves the whole expected disk, and
# the image checks clean.
reads_back() {
	img check "$T/run/vm.vhd" >"$T/check" || { cat "$T/check"; fail "$1: check"; }
	serve "renew:$T/run/vm.vhd" "$T/s.sock"
	export_to "$T/s.sock" "$T/got"
	unserve
	cmp -s "$T/got" "$T/want" || fail "$1: the disk read back after a restart differs"
}

runs=0
for point in aio.write:1:eio aio.write:3:eio aio.write:4:eio aio.write:5:eio \
	vhd.write.end-footer:1:eio vhd.write.end-footer:3:eio \
	vhd.write.bitmap:1:eio vhd.write.bitmap:4:eio vhd.write.bitmap:2:enospc \
	vhd.write.bat-sector:1:eio vhd.write.bat-sector:2:eio vhd.write.bat-sector:9:eio \
	aio.fsync:1:eio aio.fsync:4:eio; do
	rm -rf "$T/run"; cp -a "$T/orig" "$T/run"
	: >"$T/tapdisk.log"
	RENEW_FAULT=$point serve "renew:$T/run/vm.vhd" "$T/s.sock"
	qio "$T/s.sock" "${wcmds[@]}" >"$T/qio" 2>&1
	one_failed "$point" "$T/qio"
	case $point in
	vhd.*) grep -q "error: write: $T/run/vm.vhd: writing the" "$T/tapdisk.log" ||
		{ cat "$T/tapdisk.log"; fail "$point: the log does not name the file and the write"; };;
	esac
	retry_failed "$T/s.sock" "$T/qio" "${wcmds[@]}"
	export_to "$T/s.sock" "$T/got"
	cmp -s "$T/got" "$T/want" || fail "$point: after the retry the disk differs"
	unserve
	reads_back "$point"
	runs=$((runs + 1))
done
ok "an I/O error at $runs steps of a write or flush fails that request alone; the retry lands and everything reads back"

# reads: the written overlay served cold, so the first read of a partial
# block fetches its bitmap; the Nth read of the file, of the bitmap, or of
# the base fails, once
rm -rf "$T/run"; cp -a "$T/orig" "$T/run"
serve "renew:$T/run/vm.vhd" "$T/s.sock"
QIO_CACHE=writeback qio "$T/s.sock" "${wcmds[@]}" flush >"$T/qio" 2>&1 || { cat "$T/qio"; fail "writes"; }
unserve
for point in aio.read:1:eio aio.read:2:eio aio.read:7:eio; do
	: >"$T/tapdisk.log"
	RENEW_FAULT=$point serve "renew:$T/run/vm.vhd" "$T/s.sock"
	qio "$T/s.sock" "${rcmds[@]}" >"$T/qio" 2>&1
	one_failed "$point" "$T/qio"
	retry_failed "$T/s.sock" "$T/qio" "${rcmds[@]}"
	! grep -q 'Pattern verification failed' "$T/retry" || { cat "$T/retry"; fail "$point: the retried read differs"; }
	unserve
done
# a failed read of the base, in a whole-disk copy
: >"$T/tapdisk.log"
RENEW_FAULT=aio.read:40:eio serve "renew:$T/run/vm.vhd" "$T/s.sock"
if nbdcopy "$(nbd_uri "$T/s.sock")" "$T/got" 2>"$T/copy.err"; then
	fail "a whole-disk copy with a failing read succeeded"
fi
grep -qi "input/output error" "$T/copy.err" || { cat "$T/copy.err"; fail "nbdcopy does not say which error"; }
export_to "$T/s.sock" "$T/got"
unserve
cmp -s "$T/got" "$T/want" || fail "the copy after a failed read differs"
reads_back "after the read errors"
ok "a read error fails that read alone; the retry reads the right data"

# renew-img write: the same errors fail the tool, naming the file and the
# write, and leave the disk as it was
head -c 8192 /dev/urandom >"$T/data"
for point in vhd.write.end-footer:1:eio vhd.write.data:1:eio vhd.write.bitmap:1:eio vhd.write.bat-sector:1:eio; do
	rm -rf "$T/run"; cp -a "$T/orig" "$T/run"
	RENEW_FAULT=$point img write "$T/run/vm.vhd" 4096 <"$T/data" >"$T/out" 2>&1
	rc=$?
	[ $rc = 1 ] || { cat "$T/out"; fail "$point: renew-img write exit $rc, want 1"; }
	what=${point#vhd.write.}; what=${what%%:*}; what=${what//-/ }; what=${what/bat/BAT}
	grep -q "renew-img: write: $T/run/vm.vhd: writing the $what at [0-9]*: Input/output error" "$T/out" ||
		{ cat "$T/out"; fail "$point: renew-img does not name the file and the write"; }
	img check "$T/run/vm.vhd" >"$T/check" || { cat "$T/check"; fail "$point: check after renew-img write"; }
	img convert "$T/run/vm.vhd" "$T/got" || fail "$point: convert"
	cmp -s "$T/got" "$T/orig/base.raw" || fail "$point: the failed renew-img write changed the disk"
done
ok "renew-img write fails cleanly at each step, naming the file and the write"
