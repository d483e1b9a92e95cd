#!/bin/bash
# renew-img commit and renew: the disk's bytes are the same before and
# after, the parent holds them, the overlay at the same path is a fresh
# empty file (a new inode), for raw and VHD parents and deeper chains;
# the guards refuse a shared, locked or too small parent.
. "$(dirname "$0")/lib.sh"

# put PATH OFFSET MIB: random data written into an image offline
put() { head -c "$(( $3 << 20 ))" /dev/urandom >"$T/data"; img write "$1" "$2" <"$T/data" >/dev/null || fail "write $1 at $2"; }

randfile "$T/base.raw" 64
img snapshot "$T/base.raw" "$T/vm.vhd" || fail snapshot
put "$T/vm.vhd" 1048576 3
put "$T/vm.vhd" 41943040 1
printf 'x%.0s' $(seq 4096) | img write "$T/vm.vhd" 67104768 >/dev/null || fail "write last 4k"
img convert "$T/vm.vhd" "$T/before" || fail convert
ino=$(stat -c %i "$T/vm.vhd")

img commit "$T/vm.vhd" || fail commit
same "$T/base.raw" "$T/before"
img convert "$T/vm.vhd" "$T/after-commit"
same "$T/after-commit" "$T/before"
[ "$(stat -c %i "$T/vm.vhd")" = "$ino" ] || fail "commit replaced the overlay"
ok "commit: the parent holds every byte, the overlay still shows the same disk"

img renew "$T/vm.vhd" || fail renew
img convert "$T/vm.vhd" "$T/after" || fail "convert after renew"
same "$T/after" "$T/before"
[ "$(stat -c %i "$T/vm.vhd")" != "$ino" ] || fail "renew kept the old inode"
img info --json "$T/vm.vhd" >"$T/info.json"
python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); assert j["allocated_bytes"] == 0, j' "$T/info.json" || fail "fresh overlay not empty"
img check "$T/vm.vhd" >/dev/null || fail "check after renew"
ls -A "$T" | grep -q 'renew-new' && fail "temporary left behind"
ok "renew: same bytes, parent complete, fresh empty overlay at the same path (new inode), no temporaries"

# a VHD parent, and a three-level chain (commit into the middle)
img create "$T/base.vhd" 48M || fail create
put "$T/base.vhd" 0 2
img snapshot "$T/base.vhd" "$T/mid.vhd" && put "$T/mid.vhd" 3145728 5
img snapshot "$T/mid.vhd" "$T/top.vhd" && put "$T/top.vhd" 5242880 4
img convert "$T/top.vhd" "$T/chain-before"
img convert "$T/base.vhd" "$T/base-before"
img renew "$T/top.vhd" || fail "renew over a VHD parent"
img convert "$T/top.vhd" "$T/chain-after"
same "$T/chain-after" "$T/chain-before"
img convert "$T/base.vhd" "$T/base-after"
same "$T/base-after" "$T/base-before"
img check "$T/mid.vhd" >/dev/null || fail "check mid after renew"
ok "renew into a VHD parent in a three-level chain; the base below is untouched"

# guards: another overlay of the same parent
img snapshot "$T/base.raw" "$T/other.vhd"
put "$T/vm.vhd" 0 1
sha0=$(sha "$T/base.raw")
expect_fail "second overlay of the parent" img renew "$T/vm.vhd"
grep -q "other.vhd" "$T/out" || fail "message does not name the other overlay"
[ "$(sha "$T/base.raw")" = "$sha0" ] || fail "refused renew changed the parent"
rm "$T/other.vhd"

# guards: the parent locked by another process
python3 -c 'import fcntl, sys, time; f = open(sys.argv[1]); fcntl.flock(f, fcntl.LOCK_SH); time.sleep(60)' "$T/base.raw" &
locker=$!
wait_for 5 sh -c "grep -q ' $locker ' /proc/locks"
expect_fail "parent locked by another process" img renew "$T/vm.vhd"
grep -q "pid $locker" "$T/out" || fail "message does not name the locking pid"
kill $locker; wait $locker 2>/dev/null
[ "$(sha "$T/base.raw")" = "$sha0" ] || fail "refused renew changed the parent"
img renew "$T/vm.vhd" >/dev/null || fail "renew once the lock is gone"

# guards: not enough room on the parent's filesystem (sparse parent)
if mkdir -p "$T/small" && mount -t tmpfs -o size=4M tmpfs "$T/small" 2>/dev/null; then
	truncate -s 64M "$T/small/sparse.raw"
	img snapshot "$T/small/sparse.raw" "$T/s.vhd"
	put "$T/s.vhd" 0 3
	put "$T/s.vhd" 8388608 2
	before=$(img convert "$T/s.vhd" - | sha256sum)
	expect_fail "no room on the parent's filesystem" img renew "$T/s.vhd"
	grep -q "no room" "$T/out" || fail "message does not say why"
	[ "$(img convert "$T/s.vhd" - | sha256sum)" = "$before" ] || fail "refused renew changed the disk"
	# the room needed is counted from the parent's holes under allocated
	# blocks only: one block (2 MiB of hole) fits in the 4 MiB
	rm -f "$T/s.vhd"
	img snapshot "$T/small/sparse.raw" "$T/s2.vhd"
	put "$T/s2.vhd" 16777216 1
	before=$(img convert "$T/s2.vhd" - | sha256sum)
	img renew "$T/s2.vhd" >"$T/out" 2>&1 || { cat "$T/out"; fail "renew that fits was refused"; }
	[ "$(img convert "$T/s2.vhd" - | sha256sum)" = "$before" ] || fail "renew that fits changed the disk"
	umount "$T/small"
else
	echo "note: cannot mount a small tmpfs here; the no-room case is not run"
fi

expect_fail "renew of a dynamic VHD (no parent)" img renew "$T/base.vhd"
expect_fail "renew of a missing file" img renew "$T/nope.vhd"
expect_fail "bad flag" img renew --bogus "$T/vm.vhd"
