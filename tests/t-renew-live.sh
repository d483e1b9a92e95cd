#!/bin/bash
# Live renew through tap-ctl-renew while clients keep writing: every
# acknowledged write reads back (including writes racing the copy of their
# block), the disk's bytes are the same before and after, the overlay is a
# new inode and the old one is open nowhere; a second renew, close and
# destroy are refused while one runs; pause holds the swap; a SIGTERM
# mid-renew exits cleanly, says so, and loses nothing.
. "$(dirname "$0")/lib.sh"

randfile "$T/base.raw" 64
img snapshot "$T/base.raw" "$T/vm.vhd" >/dev/null || fail snapshot
start_disk "renew:$T/vm.vhd"
U=$(nbd_uri "$SOCK")
tc() { tapctl "$@" -p "$PID" -m "$MINOR"; }

# quiet: content before and after
fio --name=fill --ioengine=nbd --uri="$U" --rw=randwrite --bs=64k --size=64M --iodepth=8 \
	--output=/dev/null || fail "fio fill"
export_to "$SOCK" "$T/before"
ino=$(stat -c %i "$T/vm.vhd")
tc renew --wait >"$T/out" || { cat "$T/out"; fail "renew"; }
grep -q "bytes committed" "$T/out" || fail "renew --wait printed no summary"
export_to "$SOCK" "$T/after"
same "$T/after" "$T/before"
same "$T/base.raw" "$T/before"
[ "$(stat -c %i "$T/vm.vhd")" != "$ino" ] || fail "same inode after renew"
wait_for 10 sh -c "! ls -l /proc/$PID/fd | grep -q 'vm.vhd (deleted)'" || fail "the old overlay is still open"
img info --json "$T/vm.vhd" | python3 -c 'import json,sys; j=json.load(sys.stdin); assert j["allocated_bytes"] == 0, j' ||
	fail "the fresh overlay is not empty"
ok "renew on a quiet disk: same bytes, parent complete, fresh overlay, old one closed"

# busy: two writers verify everything they wrote, one of them on a hot
# 4 MiB region the copier keeps meeting, while the disk is renewed
cat >"$T/writers.fio" <<W
[global]
ioengine=nbd
uri=$U
rw=randwrite
bs=4k
iodepth=8
verify=crc32c
verify_fatal=1
verify_state_save=0
rate_iops=1500
[wide]
size=48M
offset=16M
[hot]
size=4M
offset=0
io_size=40M
W
fio "$T/writers.fio" --output="$T/fio.out" &
fio_pid=$!
n=0
while kill -0 $fio_pid 2>/dev/null && [ $n -lt 20 ]; do
	tc renew --wait >"$T/out" 2>&1 || { cat "$T/out"; fail "renew $n under load"; }
	n=$((n + 1))
done
wait $fio_pid || { cat "$T/fio.out"; fail "fio verify after $n renews under load"; }
[ $n -ge 3 ] || fail "only $n renews happened while the writers ran"
ok "$n renews while two writers ran; fio verified every write"
export_to "$SOCK" "$T/busy"

# refused while running; pause holds the swap
fio --name=fill --ioengine=nbd --uri="$U" --rw=write --bs=1M --size=16M --iodepth=4 \
	--output=/dev/null || fail "fio fill 2"
export_to "$SOCK" "$T/slow-before"
tc renew --rate 4 >/dev/null || fail "slow renew"
expect_fail "a second renew while one runs" tc renew
grep -q "already running" "$T/out" || fail "no clear message for the second renew"
expect_fail "close while a renew runs" tc close
expect_fail "destroy while a renew runs" tapctl destroy -p "$PID" -m "$MINOR"
tc pause || fail pause
tc stats >"$T/stats"
python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); assert j["renew"]["state"] in ("copying", "starting"), j["renew"]' "$T/stats" ||
	fail "stats do not show the running renew"
tc unpause || fail unpause
wait_for 60 sh -c "$BIN/tap-ctl-renew stats -p $PID -m $MINOR | grep -q '\"state\": \"done\"'" || fail "slow renew did not finish"
export_to "$SOCK" "$T/slow-after"
same "$T/slow-after" "$T/slow-before"
ok "second renew, close and destroy refused while a renew runs; pause and unpause during it"

tapctl destroy -p "$PID" -m "$MINOR" || fail destroy
img check "$T/vm.vhd" >/dev/null || fail "check after the renews"
img convert "$T/vm.vhd" "$T/conv"
same "$T/conv" "$T/slow-after"
ok "after destroy the image checks clean and converts to the same bytes"

# SIGTERM in the middle of a renew: the daemon drains, says the renew was
# abandoned, exits 0; restarted, it serves the same bytes and renews them
randfile "$T/t-base.raw" 32
img snapshot "$T/t-base.raw" "$T/t.vhd" >/dev/null || fail "snapshot t"
serve "renew:$T/t.vhd" "$T/t.sock"
fio --name=fill --ioengine=nbd --uri="$(nbd_uri "$T/t.sock")" --rw=randwrite --bs=64k --size=32M \
	--iodepth=8 --output=/dev/null || fail "fio fill t"
export_to "$T/t.sock" "$T/t-before"
tapctl renew -p "$SPID" -m 0 --rate 2 >/dev/null || fail "slow renew of t"
wait_for 20 sh -c "$BIN/tap-ctl-renew stats -p $SPID -m 0 | grep -q '\"state\": \"copying\"'" ||
	fail "the renew of t never copied"
unserve "$SPID" "$T/t.sock"
grep -q "minor 0 (renew:$T/t.vhd): renew abandoned before its swap: the old overlay is still the disk" \
	"$T/tapdisk.log" || { tail -5 "$T/tapdisk.log"; fail "no word of the abandoned renew"; }
img check "$T/t.vhd" >/dev/null || fail "check after SIGTERM mid-renew"
serve "renew:$T/t.vhd" "$T/t.sock"
export_to "$T/t.sock" "$T/t-restarted"
same "$T/t-restarted" "$T/t-before"
tapctl renew -p "$SPID" -m 0 --wait >/dev/null || fail "renew after the restart"
export_to "$T/t.sock" "$T/t-renewed"
same "$T/t-renewed" "$T/t-before"
same "$T/t-base.raw" "$T/t-before"
unserve "$SPID" "$T/t.sock"
ok "SIGTERM mid-renew: exit 0, the abandoned renew logged, same bytes after a restart, renew then completes"

# the parent's filesystem fills up during the commit: the renew fails with
# a clear error, the guest keeps running on its overlay, nothing is lost
if mkdir -p "$T/small" && mount -t tmpfs -o size=24M tmpfs "$T/small" 2>/dev/null; then
	truncate -s 64M "$T/small/base.raw"
	img snapshot "$T/small/base.raw" "$T/s.vhd" >/dev/null
	start_disk "renew:$T/s.vhd"
	fio --name=fill --ioengine=nbd --uri="$(nbd_uri "$SOCK")" --rw=write --bs=1M --size=16M \
		--iodepth=4 --output=/dev/null || fail "fio fill small"
	export_to "$SOCK" "$T/s-before"
	tapctl renew -p "$PID" -m "$MINOR" --rate 2 >/dev/null || fail "renew on the small parent"
	dd if=/dev/zero of="$T/small/filler" bs=1M 2>/dev/null
	wait_for 60 sh -c "! $BIN/tap-ctl-renew stats -p $PID -m $MINOR | grep -q '\"state\": \"copying\"'" ||
		fail "the renew on a full filesystem did not end"
	tapctl stats -p "$PID" -m "$MINOR" >"$T/stats"
	python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["renew"]; assert r["state"] == "failed" and "No space" in r["error"], r' "$T/stats" ||
		{ cat "$T/stats"; fail "the renew did not fail clearly on a full parent filesystem"; }
	qio "$SOCK" "write -P 77 1M 64k" >/dev/null || fail "the guest cannot write after the failed renew"
	printf '%s\n' "1M 64k 77" | tests/apply-writes.py "$T/s-before" "$T/s-want"
	export_to "$SOCK" "$T/s-after"
	same "$T/s-after" "$T/s-want"
	rm -f "$T/small/filler"
	tapctl renew -p "$PID" -m "$MINOR" --wait >/dev/null || fail "renew once there is room"
	export_to "$SOCK" "$T/s-final"
	same "$T/s-final" "$T/s-want"
	tapctl destroy -p "$PID" -m "$MINOR" || fail destroy
	umount "$T/small"
	ok "parent filesystem full during the commit: clear error, guest still running, renew works once there is room"
else
	echo "note: cannot mount a small tmpfs here; the full-filesystem case is not run"
fi
