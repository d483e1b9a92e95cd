#!/bin/bash
# The overlay's filesystem fills up while a client writes: each write that
# finds no room fails with ENOSPC (qemu-io says "No space left"), the
# daemon keeps serving, every write acknowledged before reads back, the
# image checks clean, and once there is room again writes land as before.
# renew-img write into a full filesystem fails the same clean way.
. "$(dirname "$0")/lib.sh"

mkdir -p "$T/small"
mount -t tmpfs -o size=12M tmpfs "$T/small" 2>/dev/null ||
	skip "cannot mount a small tmpfs here (needs root)"
truncate -s 64M "$T/small/base.raw"   # sparse: the overlay has the room
img snapshot "$T/small/base.raw" "$T/small/ov.vhd" >/dev/null || fail snapshot
serve "renew:$T/small/ov.vhd" "$T/s.sock"

# try_write OFF LEN BYTE: one qemu-io write; true if it was acknowledged
# (then recorded in $T/acked), its output in $T/qio.out either way.
try_write() {
	qio "$T/s.sock" "write -P $3 $1 $2" >"$T/qio.out" 2>&1 && grep -q '^wrote' "$T/qio.out" || return 1
	echo "$1 $2 $3" >>"$T/acked"
}
# lands DESC OFF LEN BYTE / refused DESC OFF LEN BYTE: acknowledged, or
# refused with ENOSPC.
lands() { try_write "$2" "$3" "$4" || { cat "$T/qio.out"; fail "$1"; }; }
refused() {
	qio "$T/s.sock" "write -P $4 $2 $3" >"$T/qio.out" 2>&1
	grep -q "No space left" "$T/qio.out" || { cat "$T/qio.out"; fail "$1: not ENOSPC"; }
}
# reads_back: the export is the base with every acknowledged write on it.
reads_back() {
	tests/apply-writes.py "$T/small/base.raw" "$T/want" <"$T/acked"
	export_to "$T/s.sock" "$T/got"
	same "$T/got" "$T/want"
}
# clean_no_leak DESC: renew-img check finds no problem and no leaked space.
clean_no_leak() {
	img check "$T/small/ov.vhd" >"$T/check" 2>&1 || { cat "$T/check"; fail "$1: check"; }
	grep -q "leak" "$T/check" && { cat "$T/check"; fail "$1: space left reserved"; }
	return 0
}

# 1 MiB into each 2 MiB block, one qemu-io each, until one fails: the
# filesystem holds about ten blocks
: >"$T/acked"
full_at=""
for i in $(seq 0 31); do
	try_write $((i * 2 + 1))M 1M $((i + 1)) || { full_at=$((i * 2 + 1))M; break; }
done
[ -n "$full_at" ] || fail "32 MiB went into a 12 MiB filesystem"
grep -q "No space left" "$T/qio.out" || { cat "$T/qio.out"; fail "the refused write does not say ENOSPC"; }
n=$(wc -l <"$T/acked")
[ "$n" -ge 4 ] || fail "only $n writes before the filesystem filled"
ok "write $((n + 1)) (at $full_at) refused with ENOSPC: $(grep -m1 'No space' "$T/qio.out")"

# refused again while full, and small writes into allocated blocks still land
refused "the same write again" "$full_at" 1M 99
lands "an overwrite in an allocated block failed while the filesystem is full" 1M 4k 98
reads_back
ok "while full: new blocks refused, overwrites land, all $((n + 1)) acknowledged writes read back"

unserve
clean_no_leak "after ENOSPC"  # a refused allocation gives its space back
img convert "$T/small/ov.vhd" "$T/conv" || fail convert
same "$T/conv" "$T/want"
ok "after a clean stop the image checks clean, no space leaked: $(head -n1 "$T/check")"

# room again: the refused write lands, the rest is unchanged
mount -o remount,size=48M "$T/small" || fail "remount bigger"
serve "renew:$T/small/ov.vhd" "$T/s.sock"
lands "the write refused before fails with room" "$full_at" 1M 77
reads_back
unserve
clean_no_leak "after the filesystem grew"
ok "with room again the refused write lands and everything reads back"

# renew-img write into a full filesystem: a clear error, no space leaked,
# what was there before unchanged
avail=$(df --output=avail -B1 "$T/small" | tail -n 1)
fallocate -l $((avail - (3 << 20))) "$T/small/filler" || fail "fallocate filler"
head -c 16M /dev/urandom >"$T/more"
if img write "$T/small/ov.vhd" 32M <"$T/more" >"$T/out" 2>&1; then fail "renew-img write of 16 MiB into 3 MiB succeeded"; fi
grep -q "ov.vhd.*No space left" "$T/out" || { cat "$T/out"; fail "renew-img write: no clear ENOSPC message"; }
clean_no_leak "after renew-img write hit ENOSPC"
img convert "$T/small/ov.vhd" "$T/conv" || fail convert
cmp -n $((32 << 20)) "$T/conv" "$T/want" || fail "renew-img write on a full filesystem changed data before its offset"
ok "renew-img write on a full filesystem: $(head -n 1 "$T/out"); no leak, the rest unchanged"
