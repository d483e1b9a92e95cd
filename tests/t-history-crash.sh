#!/bin/bash
# History under crashes: renew-img renew --history killed at each step
# that touches the history (saving the base, the link in the swap, before
# and after the rename, the record, a torn log append, the final rename),
# the daemon killed during live renews with a history, prune killed half
# way, garbage at the end of the log: each time the history recovers to a
# consistent state (no .pending or temporary left, every logged generation
# present), the disk is unchanged, every generation still restores to the
# base as it was after its renew, and the next renew goes on.
. "$(dirname "$0")/lib.sh"

# jget FILE EXPR: a python expression on the JSON in FILE (as j)
jget() { python3 -c 'import json, sys; j = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }

mkdir "$T/orig"
randfile "$T/orig/base.raw" 40
img snapshot "$T/orig/base.raw" "$T/orig/vm.vhd" >/dev/null || fail snapshot
sha "$T/orig/base.raw" >"$T/sha.0"
for i in 1 2; do
	head -c 3M /dev/urandom | img write "$T/orig/vm.vhd" $(( i * 8388608 + 4096 )) >/dev/null || fail write
	img renew -q --history "$T/orig/H" "$T/orig/vm.vhd" || fail "renew $i"
	sha "$T/orig/base.raw" >"$T/sha.$i"
done
# what generation 3 will commit: 16 blocks touched, a few scattered sectors
for i in $(seq 0 15); do
	head -c 262144 /dev/urandom | img write "$T/orig/vm.vhd" $(( i * 2621440 / 4096 * 4096 )) >/dev/null || fail write
done
head -c 512 /dev/urandom | img write "$T/orig/vm.vhd" 3145216 >/dev/null || fail write
img convert "$T/orig/vm.vhd" "$T/expect" || fail convert
sha "$T/expect" >"$T/sha.full"   # the base once generation 3 is committed

# consistent R WANT: the history in run/ recovers to generations 0..WANT,
# every one present, nothing pending or temporary; each restores exactly
consistent() {
	local what=$1 want=$2 g
	img history --json "$T/run/H" >"$T/h.json" 2>"$T/herr" || { cat "$T/herr"; fail "$what: history"; }
	[ "$(jget "$T/h.json" 'j["last_generation"]')" = "$want" ] ||
		fail "$what: the history ends at $(jget "$T/h.json" 'j["last_generation"]'), not $want"
	[ "$(jget "$T/h.json" 'all(g["present"] for g in j["generations"])')" = True ] || fail "$what: a file is missing"
	[ "$(jget "$T/h.json" 'j["torn_tail"]')" = False ] || fail "$what: the torn record was not cut"
	ls -A "$T/run/H" | grep -qE 'pending|tmp' && { ls -A "$T/run/H"; fail "$what: leftovers in the history"; }
	for g in $(seq 0 "$want"); do
		rm -f "$T/r"
		img restore "$T/run/H" --generation "$g" "$T/r" >/dev/null 2>"$T/rerr" || { cat "$T/rerr"; fail "$what: restore $g"; }
		[ "$(sha "$T/r")" = "$(cat "$T/sha.$g")" ] || fail "$what: generation $g restores wrong"
	done
	return 0
}
# goes_on WHAT: a later renew with the history completes and restores
goes_on() {
	local what=$1 last
	head -c 4096 /dev/urandom | img write "$T/run/vm.vhd" 0 >/dev/null || fail "$what: write"
	img renew -q --history "$T/run/H" "$T/run/vm.vhd" || fail "$what: renew after the crash"
	last=$(img history --json "$T/run/H" | python3 -c 'import json,sys; print(json.load(sys.stdin)["last_generation"])')
	rm -f "$T/r"
	img restore "$T/run/H" --generation "$last" "$T/r" >/dev/null || fail "$what: restore $last"
	cmp -s "$T/r" "$T/run/base.raw" || fail "$what: the last generation is not the base"
}

# point:expected generations after recovery (3: the kill was past the commit point)
n=0
for pw in history.link:1:2 renew.copy:3:2 renew.before_rename:1:2 renew.after_rename:1:3 renew.reopen:1:3 \
	  history.record:1:3 history.append.torn:1:3 history.append:1:3; do
	p=${pw%:*} want=${pw##*:}
	rm -rf "$T/run"; cp -a "$T/orig" "$T/run"
	RENEW_FAULT=$p img renew -q --history "$T/run/H" "$T/run/vm.vhd" >"$T/out" 2>&1
	rc=$?
	[ $rc -eq 137 ] || { cat "$T/out"; fail "$p: renew-img was not killed (exit $rc)"; }
	img check "$T/run/vm.vhd" >/dev/null || fail "$p: check"
	img convert "$T/run/vm.vhd" "$T/got" && cmp -s "$T/got" "$T/expect" || fail "$p: the disk changed"
	[ "$want" = 3 ] && cp "$T/sha.full" "$T/sha.3"
	consistent "kill at $p" "$want"
	goes_on "kill at $p"
	n=$((n + 1))
done
ok "renew-img renew --history killed at $n points: the history recovers, every generation restores, renews go on"

# killed while saving generation 0: the base is untouched, the next renew saves it
rm -rf "$T/run"; cp -a "$T/orig" "$T/run"; rm -rf "$T/run/H"
sha "$T/run/base.raw" >"$T/sha.b"
RENEW_FAULT=history.save_base img renew -q --history "$T/run/H" "$T/run/vm.vhd" >"$T/out" 2>&1
[ $? -eq 137 ] || { cat "$T/out"; fail "history.save_base: not killed"; }
[ "$(sha "$T/run/base.raw")" = "$(cat "$T/sha.b")" ] || fail "the base changed before generation 0 was saved"
img renew -q --history "$T/run/H" "$T/run/vm.vhd" || fail "renew after the kill while saving the base"
rm -f "$T/r"; img restore "$T/run/H" --generation 0 "$T/r" >/dev/null || fail "restore 0"
[ "$(sha "$T/r")" = "$(cat "$T/sha.b")" ] || fail "generation 0 is not the base before the first renew"
ls -A "$T/run/H" | grep -q tmp && fail "the interrupted copy of the base was left"
ok "killed while saving the base: base untouched, the next renew saves it"

# garbage after the last record (a torn append by hand): ignored, then cut
rm -rf "$T/run"; cp -a "$T/orig" "$T/run"
printf 'v=1 gen=3 kind=overl' >>"$T/run/H/log"
img history "$T/run/H" >/dev/null || fail "history with a torn record"
cp "$T/sha.full" "$T/sha.3"
consistent "torn record" 2
goes_on "torn record"
grep -c crc= "$T/run/H/log" | grep -qx 4 || { cat "$T/run/H/log"; fail "the log is not 4 good records"; }
grep -qv ' crc=[0-9a-f]*$' "$T/run/H/log" && fail "garbage left in the log"
ok "a torn last record is ignored, then cut before the next append"

# the daemon killed during live renews with the disk's default history
live=0
for pw in history.link:1:2 renew.before_rename:1:2 renew.after_rename:1:3 history.record:1:3 history.append.torn:1:3; do
	p=${pw%:*} want=${pw##*:}
	rm -rf "$T/run"; cp -a "$T/orig" "$T/run"
	out=$(RENEW_FAULT=$p tapctl create --socket-only -a "renew:$T/run/vm.vhd" --history "$T/run/H") || fail "$p: create"
	PID=$(tapctl list | grep -F "args=renew:$T/run/vm.vhd" | sed -n 's/.*pid=\([0-9]*\).*/\1/p')
	PIDS="$PIDS $PID"
	qio "$out" "write -P 9 20M 64k" >/dev/null || fail "$p: write"
	tapctl renew -p "$PID" -m 0 --wait >/dev/null 2>&1 && fail "$p: renew survived its kill"
	wait_for 10 sh -c "! kill -0 $PID" || fail "$p: the daemon is still there"
	printf '%s\n' "20M 64k 9" | tests/apply-writes.py "$T/expect" "$T/want"
	sha "$T/want" >"$T/sha.3"
	# the next history command completes or removes what the kill left
	consistent "live kill at $p" "$want"
	out=$(tapctl create --socket-only -a "renew:$T/run/vm.vhd" --history "$T/run/H") || fail "$p: create again"
	PID=$(tapctl list | grep -F "args=renew:$T/run/vm.vhd" | sed -n 's/.*pid=\([0-9]*\).*/\1/p')
	PIDS="$PIDS $PID"
	export_to "$out" "$T/got"
	cmp -s "$T/got" "$T/want" || fail "live $p: the disk lost an acknowledged write"
	tapctl renew -p "$PID" -m 0 --wait >"$T/out" 2>&1 || { cat "$T/out"; fail "live $p: renew after restart"; }
	grep -q "generation $((want + 1))\$" "$T/out" || { cat "$T/out"; fail "live $p: not generation $((want + 1))"; }
	tapctl destroy -p "$PID" -m 0 >/dev/null || fail "live $p: destroy"
	sha "$T/want" >"$T/sha.$((want + 1))"
	consistent "live kill at $p, then a renew" $((want + 1))
	live=$((live + 1))
done
ok "daemon killed at $live points of live renews with a history: consistent, restorable, renews go on"

# prune killed before its record and before its cleanup
for pw in history.prune:0 history.prune.clean:2; do
	p=${pw%:*} base=${pw##*:}
	rm -rf "$T/run"; cp -a "$T/orig" "$T/run"
	RENEW_FAULT=$p img history "$T/run/H" --prune-before 3 >"$T/out" 2>&1
	[ $? -eq 137 ] || { cat "$T/out"; fail "$p: prune was not killed"; }
	img history --json "$T/run/H" >"$T/h.json" || fail "$p: history"
	[ "$(jget "$T/h.json" 'j["base_generation"]')" = "$base" ] || fail "$p: the base is not generation $base"
	ls -A "$T/run/H" | grep -qE 'tmp|^2\.base' && [ "$base" = 0 ] && fail "$p: the unlogged base was left"
	[ "$base" = 2 ] && ls "$T/run/H" | grep -qE '^(0\.base|[12]\.vhd)$' && fail "$p: superseded files left"
	for g in $(seq "$base" 2); do
		rm -f "$T/r"; img restore "$T/run/H" --generation "$g" "$T/r" >/dev/null || fail "$p: restore $g"
		[ "$(sha "$T/r")" = "$(cat "$T/sha.$g")" ] || fail "$p: generation $g"
	done
	img history "$T/run/H" --prune-before 3 >/dev/null || fail "$p: prune again"
	[ "$(img history --json "$T/run/H" | python3 -c 'import json,sys; print(json.load(sys.stdin)["base_generation"])')" = 2 ] ||
		fail "$p: the second prune did not fold"
done
ok "prune killed before its record and before its cleanup: consistent, and prune completes later"

# killed while a guest write goes through to the parent: the write lands in
# a block the copier has passed and the overlay does not hold (so the
# overlay allocates it), and the daemon is killed once the overlay's data
# is there but before its bitmap. The parent must not hold that write then:
# if it did, the disk would show it from the parent, and no overlay, so no
# generation, would ever hold it
mkdir -p "$T/wt"
randfile "$T/wt/base.raw" 16
img snapshot "$T/wt/base.raw" "$T/wt/vm.vhd" >/dev/null || fail "snapshot wt"
for b in 0 1 3 4 5 6; do   # block 2 stays unallocated
	head -c 2M /dev/urandom | img write "$T/wt/vm.vhd" $(( b * 2097152 )) >/dev/null || fail "write wt $b"
done
RENEW_FAULT=alloc.data serve "renew:$T/wt/vm.vhd" "$T/wt.sock"
tapctl renew -p "$SPID" -m 0 --rate 2 --history "$T/wt/H" >/dev/null || fail "slow renew of wt"
wait_for 30 sh -c "$BIN/tap-ctl-renew stats -p $SPID -m 0 | python3 -c 'import json, sys; r = json.load(sys.stdin)[\"renew\"]; sys.exit(not (r[\"state\"] == \"copying\" and r[\"bytes_copied\"] >= 3 << 21))'" ||
	fail "the renew of wt never passed block 2"
qio "$T/wt.sock" "write -P 85 4M 4k" >/dev/null 2>&1 && fail "the write into block 2 was acknowledged"
wait "$SPID" 2>/dev/null
img check "$T/wt/vm.vhd" >/dev/null || fail "wt: check after the kill"
serve "renew:$T/wt/vm.vhd" "$T/wt.sock"
tapctl renew -p "$SPID" -m 0 --wait --history "$T/wt/H" >"$T/out" || { cat "$T/out"; fail "wt: renew after the kill"; }
gen=$(sed -n 's/.*generation \([0-9]*\)$/\1/p' "$T/out")
export_to "$T/wt.sock" "$T/wt-disk"
unserve "$SPID" "$T/wt.sock"
rm -f "$T/r"; img restore "$T/wt/H" --generation "$gen" "$T/r" >/dev/null || fail "wt: restore $gen"
same "$T/r" "$T/wt-disk"
ok "killed in a write-through: the parent never holds what the overlay lacks; generation $gen restores to the disk"
