#!/bin/bash
# Write-behind: an overwrite of sectors the overlay holds is acknowledged
# once the kernel has it. A landing held back (fault "delay") must hold back what overlaps
# it: a read waits and sees the new data, a second write waits and lands
# last, a flush waits. A write failing after its ack fails the next flush.
# A kill -9 right after the acks loses nothing. RENEW_WRITE_BEHIND=0 turns
# it off.
. "$(dirname "$0")/lib.sh"

randfile "$T/base.raw" 8
img snapshot "$T/base.raw" "$T/ov.vhd" >/dev/null || fail snapshot
# qemu-io as a guest with a write cache: no flush after each write
export QIO_CACHE=writeback
# blocks 0 and 1 full, block 2 half: overwrites of what they hold need no
# bitmap and may go behind
serve "renew:$T/ov.vhd" "$T/s.sock"
qio "$T/s.sock" "write -P 1 0 5M" >/dev/null || fail "fill two blocks and a half"
unserve

# wb_stat KEY: one write-behind figure of the overlay, from the daemon's stats
wb_stat() {
	"$BIN/tap-ctl-renew" stats -p "$SPID" -m 0 >"$T/stats" || fail stats
	json_get "$T/stats" "str(j['images'][0]['$1']).lower()"
}
# expect KEY WANT: that figure is WANT
expect() {
	local got
	got=$(wb_stat "$1")
	[ "$got" = "$2" ] || fail "$1 is $got, want $2: $(tr -d ' \n' <"$T/stats")"
}
# behind [ARGS...]: serve the overlay with a fault on the first landing
behind() { serve "renew:$T/ov.vhd" "$T/s.sock" "$@"; }

# the first write's landing is held: a read of the same bytes waits for
# it and sees its data; so does a second write, which lands last
RENEW_FAULT=write-behind.landed:1:delay behind
qio "$T/s.sock" "write -P 0xa1 4096 4k" "read -P 0xa1 4096 4k" >"$T/qio" 2>&1 ||
	{ cat "$T/qio"; fail "read overlapping a held landing"; }
expect write_behind true
expect write_behind_writes 1
expect write_behind_waits 1
unserve
RENEW_FAULT=write-behind.landed:1:delay behind
qio "$T/s.sock" "write -P 0xa2 4096 4k" "write -P 0xa3 4096 4k" "read -P 0xa3 4096 4k" >"$T/qio" 2>&1 ||
	{ cat "$T/qio"; fail "write overlapping a held landing"; }
expect write_behind_writes 2
[ "$(wb_stat write_behind_waits)" -ge 1 ] || fail "the second write did not wait: $(tr -d ' \n' <"$T/stats")"
unserve
ok "a read and a write overlapping a landing write wait for it, and see or replace its data"

RENEW_FAULT=write-behind.landed:1:delay behind
qio "$T/s.sock" "write -P 0xb1 16384 4k" "flush" >"$T/qio" 2>&1 || { cat "$T/qio"; fail "flush"; }
expect write_behind_flush_waits 1
unserve
serve "renew:$T/ov.vhd" "$T/s.sock"
qio "$T/s.sock" "read -P 0xa3 4096 4k" "read -P 0xb1 16384 4k" "read -P 1 20480 4k" >"$T/qio" 2>&1 ||
	{ cat "$T/qio"; fail "read back after restart"; }
unserve
ok "a flush waits for the writes acked before it; they read back after a restart"

# a write that fails after its ack: the next flush fails, later writes are
# acked when they land, and the flush after that succeeds
RENEW_FAULT=write-behind.landed:1:eio behind
# qemu-io exits 1 when a command (here the flush) fails
run_rc 1 "write, then a flush that must fail" qio "$T/s.sock" "write -P 0xc1 0 4k" "flush"
grep -q "^wrote 4096/4096" "$T/out" || { cat "$T/out"; fail "the failing write was not acked"; }
grep -q "error: minor 0 (renew:$T/ov.vhd): flush at sector 0 (0 sectors): Input/output error" "$T/tapdisk.log" ||
	{ tail "$T/tapdisk.log"; fail "the flush after it did not fail"; }
grep -q "write-behind: $T/ov.vhd: write of 4096 bytes at offset .* failed after its ack" "$T/tapdisk.log" ||
	{ tail "$T/tapdisk.log"; fail "the log does not name the failed write"; }
expect write_behind_errors 1
expect write_behind false
qio "$T/s.sock" "write -P 0xc2 0 4k" "flush" "read -P 0xc2 0 4k" >"$T/qio" 2>&1 ||
	{ cat "$T/qio"; fail "writes after the failure"; }
expect write_behind_writes 1
unserve
ok "a write failing after its ack fails the next flush, then writes are acked on landing"

# a partial block: sectors it holds are rewritten behind the ack, in a
# block allocated in this open or an earlier one; a write reaching
# sectors it does not hold yet is acknowledged once it lands and recorded
serve "renew:$T/ov.vhd" "$T/s.sock"
qio "$T/s.sock" "write -P 0x61 6M 64k" "write -P 0x62 6M 4k" >/dev/null || fail "block 3 writes"
expect write_behind_writes 1
qio "$T/s.sock" "write -P 0x63 $((6 * 1048576 + 60 * 1024)) 8k" >/dev/null || fail "block 3 half-held write"
expect write_behind_writes 1
qio "$T/s.sock" "write -P 0x64 4M 4k" "write -P 0x65 $((5 * 1048576 - 4096)) 4k" >/dev/null ||
	fail "block 2 writes"
expect write_behind_writes 3
unserve
serve "renew:$T/ov.vhd" "$T/s.sock"
qio "$T/s.sock" "read -P 0x62 6M 4k" "read -P 0x61 $((6 * 1048576 + 4096)) 56k" \
	"read -P 0x63 $((6 * 1048576 + 60 * 1024)) 8k" \
	"read -P 0x64 4M 4k" "read -P 0x65 $((5 * 1048576 - 4096)) 4k" >"$T/qio" 2>&1 ||
	{ cat "$T/qio"; fail "partial blocks read back"; }
cmp -n 4096 <(dd if="$T/base.raw" bs=4096 skip=$((5 * 256)) count=1 2>/dev/null) \
	<(nbdcopy "nbd+unix:///?socket=$T/s.sock" - 2>/dev/null | dd bs=4096 skip=$((5 * 256)) count=1 2>/dev/null) ||
	fail "a sector block 2 does not hold does not read the base"
unserve
ok "sectors a partial block holds are rewritten behind the ack; new ones are recorded when they land"

# kill -9 right after many acked overwrites (no flush): all of them are
# there, in full blocks and in a partial one
cmds=() reads=()
for i in $(seq 0 319); do
	cmds+=("aio_write -P $((i % 200 + 2)) $((i * 16384)) 4k")
	reads+=("read -P $((i % 200 + 2)) $((i * 16384)) 4k")
done
serve "renew:$T/ov.vhd" "$T/s.sock"
qio "$T/s.sock" "${cmds[@]}" >/dev/null 2>&1 || fail "aio writes"
kill -9 "$SPID"
wait "$SPID" 2>/dev/null
serve "renew:$T/ov.vhd" "$T/s.sock"
qio "$T/s.sock" "${reads[@]}" >"$T/qio" 2>&1 || { grep -m3 -i fail "$T/qio"; fail "acked writes lost to kill -9"; }
unserve
img check "$T/ov.vhd" >/dev/null || fail "check after kill -9"
ok "320 acked overwrites survive a kill -9 right after their acks"

# a block whose data has holes in the file (zeros, copied sparse) could
# need space when overwritten: its writes are acked when they land
serve "renew:$T/ov.vhd" "$T/s.sock"
qio "$T/s.sock" "write -P 0 2M 2M" "write -P 0 4M 64k" >/dev/null || fail "zero block 1 and part of block 2"
unserve
cp --sparse=always "$T/ov.vhd" "$T/sparse.vhd" && mv "$T/sparse.vhd" "$T/ov.vhd" || fail "sparse copy"
serve "renew:$T/ov.vhd" "$T/s.sock"
qio "$T/s.sock" "write -P 0xe1 3M 4k" "read -P 0xe1 3M 4k" >/dev/null || fail "write into the sparse block"
qio "$T/s.sock" "write -P 0xe3 $((4 * 1048576 + 8192)) 4k" "read -P 0xe3 $((4 * 1048576 + 8192)) 4k" \
	>/dev/null || fail "write into a hole of a partial block"
expect write_behind_writes 0
qio "$T/s.sock" "write -P 0xe2 1M 4k" "read -P 0xe2 1M 4k" >/dev/null || fail "write into a solid block"
qio "$T/s.sock" "write -P 0xe4 $((4 * 1048576 + 524288)) 4k" "read -P 0xe4 $((4 * 1048576 + 524288)) 4k" \
	>/dev/null || fail "write into solid sectors of a partial block"
expect write_behind_writes 2
unserve
ok "sectors with holes in the file are written through, full block or partial; solid ones go behind"

RENEW_WRITE_BEHIND=0 serve "renew:$T/ov.vhd" "$T/s.sock"
qio "$T/s.sock" "write -P 0xd1 0 4k" "read -P 0xd1 0 4k" >/dev/null || fail "write with write-behind off"
expect write_behind false
expect write_behind_writes 0
unserve
ok "RENEW_WRITE_BEHIND=0: writes are acked when they land"

# on a filesystem not known to overwrite in place (ramfs here), no write
# goes behind its ack
mkdir "$T/ramfs"
mount -t ramfs ramfs "$T/ramfs" || fail "mount ramfs"
cp "$T/base.raw" "$T/ov.vhd" "$T/ramfs/"
serve "renew:$T/ramfs/ov.vhd" "$T/s.sock"
qio "$T/s.sock" "write -P 0xf1 1M 4k" "write -P 0xf2 1M 4k" "read -P 0xf2 1M 4k" >/dev/null ||
	fail "writes on ramfs"
expect write_behind false
expect write_behind_writes 0
unserve
grep -q "write-behind: $T/ramfs/ov.vhd: off (filesystem 0x858458f6 may allocate on overwrite)" "$T/tapdisk.log" ||
	{ tail -5 "$T/tapdisk.log"; fail "the log does not say why write-behind is off"; }
ok "on ramfs, writes are acked when they land (the log says why)"

run_rc 2 "RENEW_WRITE_BEHIND=2" env RENEW_WRITE_BEHIND=2 "$BIN/tapdisk-renew" --serve "renew:$T/ov.vhd" --socket "$T/x.sock"
grep -q "RENEW_WRITE_BEHIND=2: want 0 (off) or 1 (on)" "$T/out" || { cat "$T/out"; fail "RENEW_WRITE_BEHIND=2: message"; }
ok "RENEW_WRITE_BEHIND=2 is refused: $(cat "$T/out")"
