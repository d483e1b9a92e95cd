#!/bin/bash
# History: ten renews of one disk, each after other writes (five offline
# with renew-img, five live through the daemon, with the disk's default
# history and with --history); every generation restores to exactly the
# base as it was right after its renew (sha256 snapshots), --at picks by
# time, restores never touch the history; clear errors for a generation
# that does not exist, a corrupt or missing overlay, a gap in the log, an
# existing OUT, no room, a history on another filesystem or of another
# disk; prune, then the remaining generations restore; a VHD base; the
# space the history takes.
. "$(dirname "$0")/lib.sh"

H=$T/hist
snap() { sha "$T/base.raw" >"$T/sha.$1"; }
# put OFFSET KIB: random bytes written into the overlay offline
put() { head -c "$(( $2 << 10 ))" /dev/urandom | img write "$T/vm.vhd" "$1" >/dev/null || fail "write at $1"; }
# jget FILE EXPR: a python expression on the JSON in FILE (as j)
jget() { python3 -c 'import json, sys; j = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }
# restored H GEN OUT: restore generation GEN of history H into OUT
restored() { rm -f "$3"; img restore "$1" --generation "$2" "$3" >"$T/rout" 2>&1 || { cat "$T/rout"; fail "restore $2 from $1"; }; }

randfile "$T/base.raw" 64
img snapshot "$T/base.raw" "$T/vm.vhd" >/dev/null || fail snapshot
snap 0

# renews 1..5 offline, each over other places of the disk
for i in 1 2 3 4 5; do
	put $(( (i * 7 % 29) * 2097152 + i * 4096 )) 1536
	put $(( i * 5242880 + 512 * i )) 4
	img renew --history "$H" "$T/vm.vhd" >"$T/out" 2>&1 || { cat "$T/out"; fail "offline renew $i"; }
	grep -q "generation $i\$" "$T/out" || { cat "$T/out"; fail "renew $i did not report generation $i"; }
	snap $i
done
ok "5 renews with renew-img renew --history"

# renews 6..10 live: the disk's default history (create --history), and --history given
out=$(tapctl create --socket-only -a "renew:$T/vm.vhd" --history "$H") || fail "create --history"
SOCK=$(echo "$out" | tail -n1)
PID=$(tapctl list | grep -F "args=renew:$T/vm.vhd" | sed -n 's/.*pid=\([0-9]*\).*/\1/p')
MINOR=$(tapctl list | grep -F "args=renew:$T/vm.vhd" | sed -n 's/.*minor=\([0-9]*\).*/\1/p')
PIDS="$PIDS $PID"
tc() { tapctl "$@" -p "$PID" -m "$MINOR"; }
for i in 6 7 8 9 10; do
	qio "$SOCK" "write -P $i $(( (i * 11 % 29) * 2097152 + i * 4096 )) 1536k" \
		"write -P $((i + 100)) $(( i * 5242880 + 512 * i )) 4k" >/dev/null || fail "write $i"
	if [ $i = 9 ]; then tc renew --wait --history "$H" >"$T/out"; else tc renew --wait >"$T/out"; fi ||
		{ cat "$T/out"; fail "live renew $i"; }
	grep -q "generation $i\$" "$T/out" || { cat "$T/out"; fail "live renew $i did not report generation $i"; }
	tc stats >"$T/stats"
	[ "$(jget "$T/stats" 'j["renew"]["generation"]')" = $i ] || fail "stats: not generation $i"
	echo "pause with history, live renew $i: $(jget "$T/stats" 'j["renew"]["pause_max_ms"]') ms"
	snap $i
done
export_to "$SOCK" "$T/disk-live"
tapctl destroy -p "$PID" -m "$MINOR" || fail destroy
ok "5 live renews through tap-ctl-renew (the disk's default history and --history)"

img history --json "$H" >"$T/h.json" || fail "history --json"
[ "$(jget "$T/h.json" 'j["last_generation"]')" = 10 ] || fail "history: last generation is not 10"
[ "$(jget "$T/h.json" '[g["generation"] for g in j["generations"] if g["present"]]')" = "$(python3 -c 'print(list(range(11)))')" ] ||
	fail "history: not every generation 0..10 is present"
img history "$H" >"$T/h.txt" || fail "history"
grep -q "^10 .*overlay" "$T/h.txt" || { cat "$T/h.txt"; fail "history text lists no generation 10"; }
ok "history lists generations 0..10"

(cd "$H" && sha256sum * | sort) >"$T/hist-files"
for g in $(seq 0 10); do
	restored "$H" $g "$T/r$g"
	[ "$(sha "$T/r$g")" = "$(cat "$T/sha.$g")" ] || fail "generation $g does not restore to the base as it was after renew $g"
	rm -f "$T/r$g"
done
ok "every generation 0..10 restores to exactly the base after its renew (sha256)"

# --at: the time of generation 7, and just before generation 8, give generation 7
t7=$(jget "$T/h.json" 'j["generations"][7]["time"]')
t8=$(jget "$T/h.json" 'j["generations"][8]["time_us"]')
img restore "$H" --at "$t7" "$T/at" >/dev/null || fail "restore --at $t7"
[ "$(sha "$T/at")" = "$(cat "$T/sha.7")" ] || fail "--at $t7 is not generation 7"
rm -f "$T/at"
img restore "$H" --at "@$(( (t8 - 1) / 1000000 )).$(printf %06d $(( (t8 - 1) % 1000000 )))" "$T/at" >/dev/null ||
	fail "restore --at just before generation 8"
[ "$(sha "$T/at")" = "$(cat "$T/sha.7")" ] || fail "--at just before generation 8 is not generation 7"
expect_fail "--at before the history began" img restore "$H" --at 2000-01-01T00:00:00Z "$T/at2"
grep -q "no generation at or before" "$T/out" || fail "no clear message for --at too early"
ok "restore --at picks the generation current at that time"

# errors
expect_fail "a generation that does not exist" img restore "$H" --generation 11 "$T/x"
grep -q "generation 11 does not exist" "$T/out" || fail "no clear message for generation 11"
expect_fail "OUT exists" img restore "$H" --generation 3 "$T/at"
grep -q "exists" "$T/out" || fail "no clear message for an existing OUT"
expect_fail "OUT inside the history" img restore "$H" --generation 3 "$H/out"
cp -a "$H" "$T/h-bad"
printf 'X' | dd of="$T/h-bad/4.vhd" bs=1 seek=3000000 conv=notrunc 2>/dev/null
restored "$T/h-bad" 3 "$T/x"
[ "$(sha "$T/x")" = "$(cat "$T/sha.3")" ] || fail "generation 3 of a history with a corrupt generation 4"
expect_fail "a corrupt overlay" img restore "$T/h-bad" --generation 6 "$T/y"
grep -q "4.vhd (generation 4) is corrupt" "$T/out" || fail "the message does not name the corrupt overlay"
[ ! -e "$T/y" ] && ! ls -A "$T" | grep -q restore.tmp || fail "a failed restore left its output"
rm -rf "$T/h-bad"; cp -a "$H" "$T/h-bad"; rm "$T/h-bad/6.vhd"
expect_fail "a missing overlay" img restore "$T/h-bad" --generation 8 "$T/y"
grep -q "missing overlay .*6.vhd (generation 6)" "$T/out" || fail "the message does not name the missing overlay"
rm -rf "$T/h-bad"; cp -a "$H" "$T/h-bad"; sed -i '/^v=1 gen=5 /d' "$T/h-bad/log"
expect_fail "a gap in the log" img restore "$T/h-bad" --generation 7 "$T/y"
grep -q "generation 5 is missing from the log (a gap" "$T/out" || fail "no clear message for the gap"
rm -f "$T/x"; restored "$T/h-bad" 4 "$T/x"
rm -rf "$T/h-bad"; cp -a "$H" "$T/h-bad"; sed -i '/^v=1 gen=5 /s/alloc=/alloc=9/' "$T/h-bad/log"
expect_fail "a corrupt record in the log" img restore "$T/h-bad" --generation 7 "$T/y"
grep -q "line 6 of the log is corrupt" "$T/out" || fail "no clear message for the corrupt record"
img history "$T/h-bad" | grep -q "corrupt record" || fail "history does not report the corrupt record"
rm -rf "$T/h-bad"; cp -a "$H" "$T/h-bad"; rm "$T/h-bad/0.base"
expect_fail "a missing saved base" img restore "$T/h-bad" --generation 2 "$T/y"
grep -q "missing saved base" "$T/out" || fail "no clear message for the missing base"
rm -rf "$T/h-bad" "$T/x"
if mkdir -p "$T/small" && mount -t tmpfs -o size=8M tmpfs "$T/small" 2>/dev/null; then
	expect_fail "no room for OUT" img restore "$H" --generation 10 "$T/small/out"
	grep -q "no room" "$T/out" || fail "no clear message for no room"
	[ -z "$(ls -A "$T/small")" ] || fail "a refused restore left files"
	cp "$T/vm.vhd" "$T/vm-copy.vhd"
	expect_fail "a history on another filesystem" img renew --history "$T/small/h" "$T/vm.vhd"
	grep -q "not on the filesystem of" "$T/out" || fail "no clear message for another filesystem"
	cmp -s "$T/vm.vhd" "$T/vm-copy.vhd" || fail "a refused renew changed the disk"
	rm "$T/vm-copy.vhd"
	umount "$T/small"
else
	echo "note: cannot mount a small tmpfs here; the no-room case is not run"
fi
(cd "$H" && sha256sum * | sort) >"$T/hist-files2"
cmp -s "$T/hist-files" "$T/hist-files2" || fail "restores changed the history's files"
ok "clear errors: missing generation, existing OUT, corrupt and missing overlay, gap, corrupt record, no room; the history untouched"

# another disk (another base) cannot use this history
randfile "$T/other.raw" 8
img snapshot "$T/other.raw" "$T/other.vhd" >/dev/null
head -c 4096 /dev/urandom | img write "$T/other.vhd" 0 >/dev/null
expect_fail "the history of another base" img renew --history "$H" "$T/other.vhd"
grep -q "is the history of the base" "$T/out" || fail "no clear message for another base"

# space: the saved base plus the overlays' allocated bytes
du_h=$(du -s -B1 "$H" | cut -f1)
base_b=$(du -B1 "$H/0.base" | cut -f1)
alloc=$(jget "$T/h.json" 'sum(g["allocated_bytes"] for g in j["generations"] if g["kind"] == "overlay")')
echo "space: history of 10 renews: $du_h bytes on disk (du) = saved base $base_b + overlays $((du_h - base_b)); overlays allocated $alloc; base file $(stat -c %s "$T/base.raw")"
[ "$du_h" -le $((base_b + alloc + 65536)) ] || fail "the history takes more than the base and the overlays' allocation"

# prune: generations before 4 fold into the base; 3..10 still restore
img history "$H" --prune-before 4 >"$T/out" || { cat "$T/out"; fail "prune"; }
img history --json "$H" >"$T/h.json" || fail "history after prune"
[ "$(jget "$T/h.json" 'j["base_generation"]')" = 3 ] || fail "prune: the base is not generation 3"
ls "$H" | grep -qE '^(0\.base|[123]\.vhd)$' && fail "prune left the folded files"
for g in $(seq 3 10); do
	restored "$H" $g "$T/r$g"
	[ "$(sha "$T/r$g")" = "$(cat "$T/sha.$g")" ] || fail "after prune, generation $g does not restore"
	rm -f "$T/r$g"
done
expect_fail "a pruned generation" img restore "$H" --generation 2 "$T/x"
grep -q "generation 2 was pruned" "$T/out" || fail "no clear message for a pruned generation"
echo "space after prune: $(du -s -B1 "$H" | cut -f1) bytes (was $du_h)"
img history "$H" --prune-before 2 | grep -q "nothing to prune" || fail "prune of nothing"
put 1048576 8
img renew --history "$H" "$T/vm.vhd" >/dev/null 2>&1 || fail "renew after prune"
snap 11
restored "$H" 11 "$T/r11"
[ "$(sha "$T/r11")" = "$(cat "$T/sha.11")" ] || fail "generation 11 after prune"
ok "prune folds generations 0..2 into the base; 3..11 restore; pruned ones refused clearly"

# a renew without the history breaks the chain: the next one with it refuses
put 0 4
img renew "$T/vm.vhd" >/dev/null 2>&1 || fail "renew without history"
put 4096 4
expect_fail "a renew after one without the history" img renew --history "$H" "$T/vm.vhd"
grep -q "without this history" "$T/out" || fail "no clear message for the broken chain"

# a VHD base: the restored VHD converts to the base's bytes
img create "$T/b.vhd" 32M >/dev/null || fail "create b.vhd"
head -c 3M /dev/urandom | img write "$T/b.vhd" 0 >/dev/null
img snapshot "$T/b.vhd" "$T/top.vhd" >/dev/null
img convert "$T/b.vhd" - | sha256sum >"$T/vsha.0"
for i in 1 2 3; do
	head -c 1M /dev/urandom | img write "$T/top.vhd" $(( i * 6291456 + 4096 )) >/dev/null
	img renew --history "$T/vh" "$T/top.vhd" >/dev/null 2>&1 || fail "renew over a VHD base $i"
	img convert "$T/b.vhd" - | sha256sum >"$T/vsha.$i"
done
for g in 0 1 2 3; do
	restored "$T/vh" $g "$T/v$g.vhd"
	img check "$T/v$g.vhd" >/dev/null || fail "restored VHD $g does not check clean"
	[ "$(img convert "$T/v$g.vhd" - | sha256sum)" = "$(cat "$T/vsha.$g")" ] || fail "VHD base: generation $g"
done
ok "a VHD base: every generation restores to a VHD with the base's bytes"

# reflink: on XFS the saved base shares the base's blocks (where mkfs.xfs and loop mounts exist)
if command -v mkfs.xfs >/dev/null && truncate -s 1G "$T/xfs.img" && mkfs.xfs -q -m reflink=1 "$T/xfs.img" 2>/dev/null &&
	mkdir -p "$T/xfs" && mount -o loop "$T/xfs.img" "$T/xfs" 2>/dev/null; then
	randfile "$T/xfs/base.raw" 256
	img snapshot "$T/xfs/base.raw" "$T/xfs/vm.vhd" >/dev/null
	used0=$(df -B1 --output=used "$T/xfs" | tail -n1)
	img history "$T/xfs/H" --init "$T/xfs/base.raw" >/dev/null || fail "history --init on XFS"
	used1=$(df -B1 --output=used "$T/xfs" | tail -n1)
	echo "reflink: saving a 256 MiB base took $(( used1 > used0 ? (used1 - used0) >> 20 : 0 )) MiB of the filesystem"
	[ $((used1 - used0)) -lt $((16 << 20)) ] || fail "the saved base on XFS is not a reflink"
	head -c 4M /dev/urandom | img write "$T/xfs/vm.vhd" 0 >/dev/null
	img renew -q --history "$T/xfs/H" "$T/xfs/vm.vhd" || fail "renew on XFS"
	img restore "$T/xfs/H" --generation 1 "$T/xfs/r1" >/dev/null || fail "restore on XFS"
	cmp -s "$T/xfs/r1" "$T/xfs/base.raw" || fail "generation 1 on XFS"
	umount "$T/xfs"
	ok "on XFS the saved base is a reflink; renew and restore work"
else
	umount "$T/xfs" 2>/dev/null
	echo "note: no XFS with reflink here (mkfs.xfs, loop mount); the reflink case is not run"
fi
