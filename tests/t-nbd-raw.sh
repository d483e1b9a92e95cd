#!/bin/bash
# NBD export of a raw file (type aio) in --serve mode, driven by real
# clients: qemu-io, nbdinfo, nbdcopy, fio's nbd engine.
. "$(dirname "$0")/lib.sh"
for t in qemu-io nbdinfo nbdcopy fio; do command -v $t >/dev/null || skip "$t not installed"; done

MB=$((1024 * 1024))
SIZE=$((64 * MB))
DISK=$T/disk.raw
SOCK=$T/nbd.sock
URI=$(nbd_uri "$SOCK")

qio() { timeout 120 qemu-io -f raw "$@" "$URI" >"$T/qio.out" 2>&1 || { cat "$T/qio.out"; fail "qemu-io $*"; }; }
# file_bytes OFF LEN: bytes of the disk file.
file_bytes() { dd if="$DISK" bs=512 skip=$(($1 / 512)) count=$(($2 / 512)) status=none; }
pattern() { head -c "$2" /dev/zero | tr '\0' "\\$(printf %o "$1")"; }
hsh() { sha256sum | cut -c1-64; }

head -c $SIZE /dev/urandom >"$DISK"
cp "$DISK" "$T/orig.raw"
serve "aio:$DISK" "$SOCK"
[ "$(stat -c %a "$SOCK")" = 600 ] || fail "socket mode $(stat -c %a "$SOCK")"
ok "socket mode 0600"

# nbdinfo: size, block sizes, base:allocation, flags
nbdinfo --json "$URI" >"$T/info.json" || fail nbdinfo
python3 - "$T/info.json" <<'PY' || fail "nbdinfo fields"
import json, sys
e = json.load(open(sys.argv[1]))["exports"][0]
want = {"export-size": 64 << 20, "block_size_minimum": 512, "block_size_preferred": 4096,
        "block_size_maximum": 32 << 20, "is_read_only": False, "can_flush": True, "can_fua": True,
        "can_trim": True, "can_zero": True, "can_multi_conn": True}
for k, v in want.items():
    assert e.get(k) == v, (k, e.get(k), v)
assert "base:allocation" in e.get("contexts", []), e.get("contexts")
PY
ok "nbdinfo: size, block sizes 512/4096/32M, flags, base:allocation"
nbdinfo --map "$URI" >"$T/map" || fail "nbdinfo --map"
read -r off len typ desc <"$T/map"
[ "$off $len $typ $desc" = "0 $SIZE 0 data" ] || { cat "$T/map"; fail "map"; }
ok "nbdinfo --map: $(cat "$T/map" | tr -s ' ')"

# reads match the file
qio -c "read -v 0 512" && grep -q "^00000000:" "$T/qio.out" || fail "read"
nbdcopy "$URI" "$T/copy.raw" || fail "nbdcopy out"
same "$T/copy.raw" "$DISK"
ok "nbdcopy export -> file matches the disk"

# writes land at the right offset: 4k-aligned, 512-aligned only, last sector
qio -c "write -P 0x5a 1048576 65536"
[ "$(file_bytes $MB 65536 | hsh)" = "$(pattern 0x5a 65536 | hsh)" ] || fail "aligned write"
qio -c "write -P 0x3c 3584 1536"
[ "$(file_bytes 3584 1536 | hsh)" = "$(pattern 0x3c 1536 | hsh)" ] || fail "512-aligned write"
[ "$(file_bytes 3072 512 | hsh)" = "$(dd if="$T/orig.raw" bs=512 skip=6 count=1 status=none | hsh)" ] ||
	fail "sector before the 512-aligned write changed"
[ "$(file_bytes 5120 512 | hsh)" = "$(dd if="$T/orig.raw" bs=512 skip=10 count=1 status=none | hsh)" ] ||
	fail "sector after the 512-aligned write changed"
qio -c "write -P 0x77 $((SIZE - 512)) 512" -c "read -P 0x77 $((SIZE - 512)) 512"
[ "$(file_bytes $((SIZE - 512)) 512 | hsh)" = "$(pattern 0x77 512 | hsh)" ] || fail "last sector"
qio -c "read -P 0x3c 3584 1536" -c "read -P 0x5a 1048576 65536"
ok "writes land in the file at their offsets (4k, 512-aligned, last sector) and read back"

# beyond the end: refused
if qemu-io -f raw -c "read $SIZE 512" "$URI" >"$T/qio.out" 2>&1 && ! grep -qi "error\|failed\|Input/output\|Invalid" "$T/qio.out"; then
	cat "$T/qio.out"; fail "read past the end accepted"
fi
ok "read past the end refused"

# FUA and FLUSH
qio -c "write -f -P 0x11 2097152 4096" -c "flush" -c "read -P 0x11 2097152 4096"
[ "$(file_bytes 2097152 4096 | hsh)" = "$(pattern 0x11 4096 | hsh)" ] || fail "fua write"
ok "FUA write and FLUSH"

# WRITE_ZEROES: small, and larger than the maximum request size
qio -c "write -z 4194304 1048576"
[ "$(file_bytes 4194304 $MB | hsh)" = "$(pattern 0 $MB | hsh)" ] || fail "write -z"
qio -c "write -z 8388608 $((40 * MB))"
[ "$(file_bytes 8388608 $((40 * MB)) | hsh)" = "$(pattern 0 $((40 * MB)) | hsh)" ] || fail "write -z 40M"
[ "$(file_bytes $((48 * MB)) 4096 | hsh)" = "$(dd if="$T/orig.raw" bs=4096 skip=$((48 * 256)) count=1 status=none | hsh)" ] ||
	fail "write -z went past its end"
qio -c "write -z -u 0 4096"
ok "WRITE_ZEROES (1 MiB, 40 MiB, may-unmap)"

# TRIM: accepted
qio -c "discard 0 65536"
ok "TRIM accepted"

# nbdcopy round trip
head -c $SIZE /dev/urandom >"$T/src.raw"
nbdcopy "$T/src.raw" "$URI" || fail "nbdcopy in"
nbdcopy "$URI" "$T/back.raw" || fail "nbdcopy out"
[ "$(sha "$T/back.raw")" = "$(sha "$T/src.raw")" ] || fail "round trip differs"
[ "$(sha "$DISK")" = "$(sha "$T/src.raw")" ] || fail "disk differs after round trip"
ok "nbdcopy round trip: sha256 matches ($(sha "$DISK" | head -c 16))"

# fio: random writes verified with crc32c, 4 connections at iodepth 32
fio --name=v --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --iodepth=32 --numjobs=4 \
	--size=8M --offset_increment=16M --verify=crc32c --verify_fatal=1 --do_verify=1 \
	--group_reporting >"$T/fio.out" 2>&1 || { tail -30 "$T/fio.out"; fail "fio verify"; }
grep -q "err= 0" "$T/fio.out" || { cat "$T/fio.out"; fail "fio errors"; }
ok "fio nbd randwrite + crc32c verify, 4 jobs x iodepth 32"
fio --name=m --ioengine=nbd --uri="$URI" --rw=randrw --bsrange=512-256k --bs_unaligned=0 --iodepth=32 \
	--numjobs=2 --size=16M --offset_increment=32M --verify=md5 --verify_fatal=1 \
	--group_reporting >"$T/fio2.out" 2>&1 || { tail -30 "$T/fio2.out"; fail "fio mixed verify"; }
ok "fio nbd mixed sizes (512 B - 256 KiB) randrw + md5 verify"

# many simultaneous connections writing distinct regions
for i in 0 1 2 3 4 5 6 7; do
	qemu-io -f raw -c "write -P $((i + 1)) $((i * 4 * MB)) $((4 * MB))" "$URI" >"$T/par$i.out" 2>&1 &
done
wait_rc=0
for j in $(jobs -p); do [ "$j" = "$SPID" ] || wait "$j" || wait_rc=1; done
[ $wait_rc -eq 0 ] || fail "parallel qemu-io"
for i in 0 1 2 3 4 5 6 7; do
	[ "$(file_bytes $((i * 4 * MB)) $((4 * MB)) | hsh)" = "$(pattern $((i + 1)) $((4 * MB)) | hsh)" ] ||
		fail "parallel region $i"
done
ok "8 simultaneous connections, each region correct"

# DISC with another connection open: the other keeps working
mkfifo "$T/hold"
( N=10 python3 "$TOP/tests/nbd-wire.py" "$SOCK" idle <"$T/hold" >"$T/idle.out" 2>&1 ) &
IDLE=$!
exec 9>"$T/hold"
wait_for 10 grep -q ready "$T/idle.out" || fail "idle clients"
qio -c "read -P 1 0 4096"
qio -c "read -P 2 $((4 * MB)) 4096"
exec 9>&-
wait $IDLE
ok "DISC: clients exit 0 while 10 half-open connections are held; daemon keeps serving"
nbdinfo "$URI" >/dev/null || fail "serving after DISC"

unserve "$SPID" "$SOCK"
ok "SIGTERM: daemon exited 0, socket removed"
