#!/bin/bash
# Kill the daemon at each step of a block allocation (after reserving the
# space, after the data, after the bitmap) while a client writes: every
# write acknowledged before the kill reads back after a restart, and the
# image checks clean (reserved space may leak, never more).
. "$(dirname "$0")/lib.sh"

mkdir "$T/orig"
randfile "$T/orig/base.raw" 24
img snapshot "$T/orig/base.raw" "$T/orig/vm.vhd" >/dev/null || fail snapshot
# ten writes, most of them into blocks not yet allocated
cat >"$T/writes" <<'W'
0 65536 1
2097152 4096 2
4194304 1048576 3
65536 4096 4
6291456 512 5
8388608 131072 6
10485760 4096 7
12582912 8192 8
14680064 4096 9
16777216 4096 10
W
cmds=()
while read -r off len byte; do cmds+=(-c "write -P $byte $off $len"); done <"$T/writes"

runs=0
for point in alloc.reserved alloc.data alloc.bitmap; do
	for n in 1 2 5 8; do
		rm -rf "$T/run"; cp -a "$T/orig" "$T/run"
		export RENEW_FAULT=$point:$n
		serve "renew:$T/run/vm.vhd" "$T/s.sock"
		unset RENEW_FAULT
		qemu-io -f raw "$(nbd_uri "$T/s.sock")" "${cmds[@]}" >"$T/qio" 2>&1
		wait "$SPID" 2>/dev/null
		acked=$(grep -c '^wrote' "$T/qio")
		[ "$acked" -lt 10 ] || fail "$point:$n: the daemon was not killed"
		img check "$T/run/vm.vhd" >"$T/check" || { cat "$T/check"; fail "$point:$n: check"; }
		serve "renew:$T/run/vm.vhd" "$T/s.sock"
		export_to "$T/s.sock" "$T/got"
		unserve
		head -n "$acked" "$T/writes" | tests/apply-writes.py "$T/orig/base.raw" "$T/want"
		head -n $((acked + 1)) "$T/writes" | tests/apply-writes.py "$T/orig/base.raw" "$T/want2"
		cmp -s "$T/got" "$T/want" || cmp -s "$T/got" "$T/want2" ||
			fail "$point:$n: $acked acknowledged writes did not all read back"
		runs=$((runs + 1))
	done
done
ok "killed at $runs allocation steps: acknowledged writes survive, images check clean"
