#!/bin/bash
# Partial blocks through a bitmap cache far smaller than the working set:
# every access may miss, the bitmap is read in the background while the
# request waits, and a write can land (and change the bitmap) while a read
# of that bitmap is in flight. Data written, data verified, the rest from
# the base; and RENEW_BITMAP_CACHE itself is checked.
. "$(dirname "$0")/lib.sh"

randfile "$T/base.raw" 256
img snapshot "$T/base.raw" "$T/ov.vhd" || fail snapshot
export RENEW_BITMAP_CACHE=4

# cache_stat KEY: one figure of the overlay, from the daemon's stats
cache_stat() {
	"$BIN/tap-ctl-renew" stats -p "$SPID" -m 0 >"$T/stats" || fail stats
	json_get "$T/stats" "j['images'][0]['$1']"
}

# 4k writes at random over 32 partial blocks (8 per connection), four connections at once,
# then read back and verified: with 4 bitmaps cached, nearly every write
# and read misses
serve "renew:$T/ov.vhd" "$T/s.sock"
fio --name=small-cache --ioengine=nbd --uri="$(nbd_uri "$T/s.sock")" --rw=randwrite --bs=4k \
	--iodepth=16 --numjobs=4 --size=16M --offset_increment=64M --io_size=4M \
	--verify=crc32c --verify_fatal=1 --randrepeat=1 --output=/dev/null ||
	fail "fio randwrite+verify through a 4-bitmap cache"
misses=$(cache_stat bitmap_cache_misses)
[ "$misses" -gt 1000 ] || fail "only $misses bitmap cache misses: the cache did not evict"
[ "$(cache_stat bitmaps_cached)" -le 4 ] || fail "more than 4 bitmaps cached"
ok "random writes over 32 partial blocks verify through 4 cached bitmaps ($misses misses)"
export_to "$T/s.sock" "$T/e1"
unserve

# a cold start: every bitmap is read again, for reads and rewrites alike
serve "renew:$T/ov.vhd" "$T/s.sock"
fio --name=small-cache --ioengine=nbd --uri="$(nbd_uri "$T/s.sock")" --rw=randwrite --bs=4k \
	--iodepth=16 --numjobs=4 --size=16M --offset_increment=64M --io_size=4M \
	--verify=crc32c --verify_fatal=1 --randrepeat=1 --verify_only --output=/dev/null ||
	fail "fio verify after a restart"
export_to "$T/s.sock" "$T/e2"
same "$T/e2" "$T/e1"
unserve
img convert "$T/ov.vhd" "$T/conv" || fail convert
same "$T/conv" "$T/e1"
img check "$T/ov.vhd" >/dev/null || fail "check after the runs"
ok "after a restart the same data reads back, and renew-img convert agrees"

# a live renew of those partial blocks with the cache cold: the copy reads
# their bitmaps in the background too, while a client writes and verifies
start_disk "renew:$T/ov.vhd"
tc() { tapctl "$@" -p "$PID" -m "$MINOR"; }
fio --name=during --ioengine=nbd --uri="$(nbd_uri "$SOCK")" --rw=randwrite --bs=4k \
	--iodepth=8 --size=8M --offset=200M --verify=crc32c --verify_fatal=1 \
	--output=/dev/null >"$T/fio.out" 2>&1 &
FIO=$!
tc renew --wait >"$T/out" 2>&1 || { cat "$T/out"; fail "renew"; }
wait $FIO || { cat "$T/fio.out"; fail "fio verify during the renew"; }
export_to "$SOCK" "$T/e3"
cmp -n $((200 << 20)) "$T/e3" "$T/e1" || fail "the renewed disk differs from before"
cmp -n $((200 << 20)) "$T/base.raw" "$T/e1" || fail "the base did not get the overlay's blocks"
ok "a live renew with 4 cached bitmaps commits every partial block; writes during it verify"
tapctl destroy -p "$PID" -m "$MINOR" || fail destroy

sum_before=$(sha "$T/ov.vhd")
for bad in 0 -1 x 1048577; do
	RENEW_BITMAP_CACHE=$bad expect_fail "RENEW_BITMAP_CACHE=$bad" \
		"$BIN/tapdisk-renew" --serve "renew:$T/ov.vhd" --socket "$T/bad.sock"
	grep -q "RENEW_BITMAP_CACHE=$bad" "$T/out" || fail "the error does not name RENEW_BITMAP_CACHE=$bad"
done
[ "$(sha "$T/ov.vhd")" = "$sum_before" ] || fail "a refused open changed the image"
ok "a bad RENEW_BITMAP_CACHE is refused, naming it, and the image is untouched"
