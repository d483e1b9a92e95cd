#!/bin/bash
# A hostile NBD client: garbage, bad options, misaligned, out-of-range and
# oversized requests, writes to a read-only export, half-open and vanishing
# connections, random bytes. Each is answered with an error or a hang-up;
# the daemon stays up, serves correct data and exits cleanly.
. "$(dirname "$0")/lib.sh"
for t in qemu-io nbdcopy python3; do command -v $t >/dev/null || skip "$t not installed"; done

SIZE=$((32 * 1024 * 1024))
WIRE=$TOP/tests/nbd-wire.py

wire() { timeout 300 python3 "$WIRE" "$@" || fail "scenario $2"; }
alive() { kill -0 "$1" 2>/dev/null || { tail -30 "$T/tapdisk.log"; fail "daemon died after $2"; }; }

head -c $SIZE /dev/urandom >"$T/rw.raw"
head -c $SIZE /dev/urandom >"$T/ro.raw"
serve "aio:$T/rw.raw" "$T/rw.sock"
RW=$SPID
serve "aio:$T/ro.raw" "$T/ro.sock" --read-only
RO=$SPID

# a crowd of half-open connections stays while everything else happens
mkfifo "$T/hold"
( N=100 python3 "$WIRE" "$T/rw.sock" idle <"$T/hold" >"$T/idle.out" 2>&1 ) &
IDLE=$!
exec 9>"$T/hold"
wait_for 20 grep -q ready "$T/idle.out" || fail "idle clients"
ok "100 connections held mid-handshake"

for sc in garbage options requests block-status deep abrupt fuzz; do
	wire "$T/rw.sock" $sc
	alive $RW $sc
done
ok "read-write export: every hostile scenario answered, daemon alive"

wire "$T/ro.sock" requests-ro
wire "$T/ro.sock" fuzz
alive $RO "read-only scenarios"
expect_fail "qemu-io write on the read-only export" \
	timeout 60 qemu-io -f raw -c "write -P 1 0 4096" "$(nbd_uri "$T/ro.sock")"
ok "read-only export: writes refused with EPERM"

# still serving correct data, to well-behaved clients, with the crowd held
nbdcopy "$(nbd_uri "$T/rw.sock")" "$T/rw.copy" || fail "nbdcopy rw"
same "$T/rw.copy" "$T/rw.raw"
nbdcopy "$(nbd_uri "$T/ro.sock")" "$T/ro.copy" || fail "nbdcopy ro"
same "$T/ro.copy" "$T/ro.raw"
timeout 60 qemu-io -f raw -c "write -P 0x42 4096 4096" -c "read -P 0x42 4096 4096" \
	"$(nbd_uri "$T/rw.sock")" >"$T/qio.out" 2>&1 || { cat "$T/qio.out"; fail "qemu-io after the abuse"; }
ok "both exports serve correct data afterwards"

exec 9>&-
wait $IDLE
unserve $RW "$T/rw.sock"
unserve $RO "$T/ro.sock"
ok "both daemons exit 0 on SIGTERM, sockets removed"
