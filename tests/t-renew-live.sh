#!/bin/bash
# Live renew through tap-ctl-renew while clients keep writing: every
# acknowledged write reads back (including writes racing the copy of their
# block), the disk's bytes are the same before and after, the overlay is a
# new inode and the old one is open nowhere; a second renew, close and
# destroy are refused while one runs; pause holds the swap.
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
wait_for 10 sh -c "! ls -l /proc/$PID/fd | grep -q deleted" || fail "the old overlay is still open"
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

# a failing parent write: the renew fails, the guest keeps its disk
tapctl destroy -p "$PID" -m "$MINOR" || fail destroy
img check "$T/vm.vhd" >/dev/null || fail "check after the renews"
img convert "$T/vm.vhd" "$T/conv"
same "$T/conv" "$T/slow-after"
ok "after destroy the image checks clean and converts to the same bytes"
