#!/bin/bash
# Kill renew-img renew at every step of a renew (each block the copier
# takes, its reads and writes, just before and after the rename, the
# reopen) and fail its I/O: each time the image checks clean, shows exactly
# the disk it showed before, and a later renew completes.
. "$(dirname "$0")/lib.sh"

mkdir "$T/orig"
randfile "$T/orig/base.raw" 40
img snapshot "$T/orig/base.raw" "$T/orig/vm.vhd" >/dev/null || fail snapshot
# one MiB in each of 16 blocks, and a few scattered sectors
for i in $(seq 0 15); do
	head -c 1048576 /dev/urandom | img write "$T/orig/vm.vhd" $(( i * 2621440 / 4096 * 4096 )) >/dev/null || fail write
done
for off in 512 3145216 20972032; do
	head -c 512 /dev/urandom | img write "$T/orig/vm.vhd" $off >/dev/null || fail write
done
img convert "$T/orig/vm.vhd" "$T/expect" || fail convert

# after POINT: the image is consistent, the disk unchanged, renew completes
verify() {
	local d=$T/run what=$1
	img check "$d/vm.vhd" >"$T/check" || { cat "$T/check"; fail "$what: check"; }
	img convert "$d/vm.vhd" "$T/got" || fail "$what: convert"
	cmp -s "$T/got" "$T/expect" || fail "$what: the disk changed"
	img renew -q "$d/vm.vhd" || fail "$what: renew after the crash"
	img convert "$d/vm.vhd" "$T/got" || fail "$what: convert after renew"
	cmp -s "$T/got" "$T/expect" || fail "$what: the disk changed after renew"
	ls -A "$d" | grep -q renew-new && fail "$what: temporary left behind"
	return 0
}

points="renew.before_rename:1 renew.after_rename:1 renew.reopen:1"
for n in $(seq 1 16); do points="$points renew.copy:$n"; done
for n in 1 4 9; do points="$points renew.copy.read:$n renew.copy.write:$n"; done
kills=0
for p in $points; do
	rm -rf "$T/run"; cp -a "$T/orig" "$T/run"
	RENEW_FAULT=$p img renew -q "$T/run/vm.vhd" >"$T/out" 2>&1
	rc=$?
	[ $rc -eq 137 ] || { cat "$T/out"; fail "$p: renew-img was not killed (exit $rc)"; }
	verify "kill at $p"
	kills=$((kills + 1))
done
ok "killed at $kills points; every time consistent, unchanged, and renewed afterwards"

for p in renew.copy.read:2:eio renew.copy.write:3:eio renew.copy:5:enospc; do
	rm -rf "$T/run"; cp -a "$T/orig" "$T/run"
	if RENEW_FAULT=$p img renew -q "$T/run/vm.vhd" >"$T/out" 2>&1; then fail "$p: renew succeeded"; fi
	grep -q "renew-img: renew: .*vm.vhd" "$T/out" || { cat "$T/out"; fail "$p: no clear error"; }
	verify "error at $p"
done
ok "I/O errors during the copy: clear error, disk unchanged, renew works afterwards"

# the daemon, killed during a live renew while a client writes
cmds=()
for i in $(seq 1 40); do cmds+=(-c "write -P $i $(( (i * 7 % 19) * 2097152 + i * 4096 )) 65536"); done
for i in $(seq 1 40); do echo "$(( (i * 7 % 19) * 2097152 + i * 4096 )) 65536 $i"; done >"$T/writes"
live=0
for p in renew.copy:1 renew.copy:3 renew.copy:6 renew.copy.write:2 renew.before_rename:1 renew.after_rename:1 renew.reopen:1; do
	rm -rf "$T/run"; cp -a "$T/orig" "$T/run"
	RENEW_FAULT=$p start_disk "renew:$T/run/vm.vhd"
	qemu-io -f raw "$(nbd_uri "$SOCK")" "${cmds[@]}" >"$T/qio" 2>&1 &
	qpid=$!
	wait_for 20 grep -q '^wrote' "$T/qio" || fail "$p: the writer did not start"
	tapctl renew -p "$PID" -m "$MINOR" --wait >/dev/null 2>&1 && fail "$p: renew survived its kill"
	wait $qpid
	wait_for 10 sh -c "! kill -0 $PID" || fail "$p: the daemon is still there"
	acked=$(grep -c '^wrote' "$T/qio")
	img check "$T/run/vm.vhd" >"$T/check" || { cat "$T/check"; fail "live $p: check"; }
	head -n "$acked" "$T/writes" | tests/apply-writes.py "$T/expect" "$T/want"
	head -n $((acked + 1)) "$T/writes" | tests/apply-writes.py "$T/expect" "$T/want2"
	start_disk "renew:$T/run/vm.vhd"
	export_to "$SOCK" "$T/got"
	tapctl destroy -p "$PID" -m "$MINOR" >/dev/null || fail "live $p: destroy"
	cmp -s "$T/got" "$T/want" || cmp -s "$T/got" "$T/want2" || fail "live $p: $acked acknowledged writes did not all read back"
	ls -A "$T/run" | grep -q renew-new && fail "live $p: temporary left behind after reopen"
	live=$((live + 1))
done
ok "daemon killed at $live points of a live renew under writes: acknowledged writes survive"

# the sync after the swap fails (the parent's fdatasync or the directory's
# fsync): the renew reports it, the guest's next flush fails instead of
# claiming durability, later flushes and the data are fine
rm -rf "$T/run"; cp -a "$T/orig" "$T/run"
RENEW_FAULT=renew.sync:1:eio start_disk "renew:$T/run/vm.vhd"
qio "$SOCK" "write -P 77 1048576 65536" >/dev/null || fail "sync: write"
tapctl renew -p "$PID" -m "$MINOR" --wait >"$T/out" 2>&1 && fail "sync: renew reported success"
grep -q "could not be made durable" "$T/out" || { cat "$T/out"; fail "sync: no clear error"; }
qio "$SOCK" flush >"$T/qio" 2>&1 && { cat "$T/qio"; fail "sync: the guest's flush after a failed sync succeeded"; }
qio "$SOCK" flush "read -P 77 1048576 65536" >"$T/qio" 2>&1 && ! grep -qi "error\|fail" "$T/qio" || fail "sync: a later flush or the data"
tapctl destroy -p "$PID" -m "$MINOR" >/dev/null || fail "sync: destroy"
img check "$T/run/vm.vhd" >"$T/check" || { cat "$T/check"; fail "sync: check"; }
ok "a failed sync after the swap: reported, the guest's next flush fails, nothing lost"
