#!/bin/bash
# Memory stays flat for big disks: a 2040 GiB overlay with 100 GiB
# allocated (51200 blocks, one 4 KiB write each), every block read back,
# served by a daemon whose peak resident size stays under 32 MiB.
. "$(dirname "$0")/lib.sh"

truncate -s 2040G "$T/base.raw"
img snapshot "$T/base.raw" "$T/ov.vhd" >/dev/null || fail snapshot
serve "renew:$T/ov.vhd" "$T/s.sock"
U=$(nbd_uri "$T/s.sock")
# 4 KiB at the start of every other 2 MiB block: 51200 blocks over 200 GiB
fio --name=alloc --ioengine=nbd --uri="$U" --rw=write --bs=4k --zonemode=strided \
	--zonesize=4k --zonerange=4M --size=200G --io_size=200M --iodepth=32 \
	--output=/dev/null || fail "fio allocation pass"
img info --json "$T/ov.vhd" >"$T/info" 2>/dev/null || true
fio --name=readback --ioengine=nbd --uri="$U" --rw=read --bs=8k --zonemode=strided \
	--zonesize=8k --zonerange=4M --size=200G --io_size=400M --iodepth=32 \
	--output=/dev/null || fail "fio read pass"
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$SPID/status")
echo "peak resident size: $hwm KiB"
[ -n "$VG" ] && { unserve; exit 0; }
[ "$hwm" -lt 32768 ] || fail "the daemon peaked at $hwm KiB (limit 32768)"
unserve
python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); assert j["allocated_blocks"] == 51200, j["allocated_blocks"]' "$T/info" ||
	fail "not 51200 blocks allocated"
ok "2040 GiB overlay, 100 GiB allocated: peak RSS $hwm KiB"
