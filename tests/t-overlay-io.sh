#!/bin/bash
# A renew: overlay over a raw base, served over NBD: writes land in the
# overlay, unwritten ranges read the base, across block boundaries, at the
# last sector, with FUA, flush and write-zeroes, and survive a restart.
. "$(dirname "$0")/lib.sh"

randfile "$T/base.raw" 64
cp "$T/base.raw" "$T/base.orig"
img snapshot "$T/base.raw" "$T/ov.vhd" || fail snapshot
serve "renew:$T/ov.vhd" "$T/s.sock"

export_to "$T/s.sock" "$T/e0"
same "$T/e0" "$T/base.raw"
ok "fresh overlay reads the base"

# offset length byte: one write each, then the model of the disk
cat >"$T/writes" <<'W'
0 512 1
1000k 3000k 2
2096640 1024 3
64M-512 512 4
10M 1M 5
33554432 4096 6
W
sed -i 's/64M-512/67108352/' "$T/writes"
args=()
while read -r off len byte; do args+=("write -P $byte $off $len"); done <"$T/writes"
qio "$T/s.sock" "${args[@]}" >/dev/null || fail "qemu-io writes"
qio "$T/s.sock" "write -f -P 7 20M 64k" "flush" "write -z 30M 3M" >/dev/null || fail "FUA, flush, write-zeroes"
printf '%s\n' "20M 64k 7" "30M 3M 0" >>"$T/writes"
# The end footer a new block moves is mapped by the time the write is
# acknowledged: left to delayed allocation, ext4 would run every direct
# write past its size on disk synchronously, stalling the daemon's loop.
# (fio, as it sends no flush that would map it anyway)
fio --name=new-block --ioengine=nbd --uri="$(nbd_uri "$T/s.sock")" --rw=write --bs=4k \
	--size=4k --offset=40M --buffer_pattern=0x08 --output=/dev/null || fail "fio write to a new block"
echo "40M 4k 8" >>"$T/writes"
if [ "$(stat -f -c %T "$T")" = ext2/ext3 ]; then
	last=$(( ($(stat -c %s "$T/ov.vhd") - 1) / $(stat -f -c %S "$T") ))
	flags=$(filefrag -v "$T/ov.vhd" | awk -v b="$last" -F'[:.]+ *' \
		'$2 ~ /^ *[0-9]+$/ && $2 <= b && $3 >= b { print $NF }')
	[ -n "$flags" ] || fail "filefrag shows no extent at block $last of ov.vhd"
	case $flags in *delalloc*) fail "end footer still delayed-allocated: $flags";; esac
	ok "end footer mapped at once ($flags)"
else
	echo "not ext4 ($(stat -f -c %T "$T")): end footer mapping not checked"
fi
tests/apply-writes.py "$T/base.raw" "$T/expect" <"$T/writes"
export_to "$T/s.sock" "$T/e1"
same "$T/e1" "$T/expect"
ok "partial-block, block-straddling, last-sector, FUA and zero writes read back"

qio "$T/s.sock" "read -P 4 67108352 512" "read -P 3 2096640 1024" | grep -q "read 512/512" || fail "qemu-io pattern read"
same "$T/base.raw" "$T/base.orig"
ok "the base is untouched"

# several connections at once, each verifying its own region
fio --name=multi --ioengine=nbd --uri="$(nbd_uri "$T/s.sock")" --rw=randwrite --bs=4k \
	--iodepth=32 --numjobs=4 --size=8M --offset_increment=16M --verify=crc32c \
	--verify_fatal=1 --randrepeat=1 --output=/dev/null || fail "fio verify on 4 connections"
ok "fio randwrite+verify on 4 connections"
export_to "$T/s.sock" "$T/e2"

unserve
img check "$T/ov.vhd" >"$T/check" || { cat "$T/check"; fail "check after clean stop"; }
img convert "$T/ov.vhd" "$T/conv" || fail convert
same "$T/conv" "$T/e2"
serve "renew:$T/ov.vhd" "$T/s.sock"
export_to "$T/s.sock" "$T/e3"
same "$T/e3" "$T/e2"
fio --name=multi --ioengine=nbd --uri="$(nbd_uri "$T/s.sock")" --rw=randwrite --bs=4k \
	--iodepth=32 --numjobs=4 --size=8M --offset_increment=16M --verify=crc32c \
	--verify_fatal=1 --randrepeat=1 --verify_only --output=/dev/null || fail "fio verify after restart"
ok "data survives a restart; renew-img check is clean; convert agrees"

# read-only: writes are refused, data unchanged
unserve
serve "renew:$T/ov.vhd" "$T/ro.sock" --read-only
if qio "$T/ro.sock" "write -P 9 0 4096" 2>&1 | grep -q "^wrote"; then fail "read-only export took a write"; fi
export_to "$T/ro.sock" "$T/e4"
same "$T/e4" "$T/e2"
ok "read-only export refuses writes"

# a block whose bitmap is full is noticed on a write too (not only on a
# read): later writes to it skip the bitmap cache. fio above wrote every
# sector of [16M, 24M), blocks 8 to 11.
unserve
serve "renew:$T/ov.vhd" "$T/s.sock"
qio "$T/s.sock" "write -P 8 16M 4k" "write -P 8 18M 4k" "write -P 8 20M 4k" "write -P 8 22M 4k" \
	"read -P 8 22M 4k" >"$T/qio.out" || { cat "$T/qio.out"; fail "writes into full blocks"; }
"$BIN/tap-ctl-renew" stats -p "$SPID" -m 0 >"$T/stats" || fail "stats"
python3 -c 'import json,sys; i=json.load(open(sys.argv[1]))["images"][0]; assert i["full_blocks"] == 4 and i["bitmaps_cached"] == 0, i' "$T/stats" ||
	fail "writes into 4 full blocks: $(grep -E 'full_blocks|bitmaps_cached' "$T/stats" | tr -d ' \n')"
ok "writes into full blocks mark them full (4 full, no bitmap cached)"
