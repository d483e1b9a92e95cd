#!/bin/bash
# renew-img check: clean on fresh images; a crash-leaked block is a
# "leak:" line (exit 0) that --repair truncates; a torn footer is an error
# (exit 1) that --repair rewrites from the valid copy; unsafe cases are
# refused and left untouched.
. "$(dirname "$0")/lib.sh"
cd "$T" || exit 1

fsize() { stat -c %s "$1"; }
# clean FILE: exit 0 and only the all-clear line.
clean() {
	img check "$1" >out 2>&1 || { cat out; fail "check $1 is not clean"; }
	[ "$(cat out)" = "$1: no problems found" ] || { cat out; fail "check $1 printed findings"; }
}
# crash_reserve FILE: what a crash right after allocation step 1 leaves:
# the footer copied past a new block's place, nothing else written.
crash_reserve() {
	local foot=$(( $(fsize "$1") - 512 )) bm newend
	bm=$(( (foot + 512 + 4095) / 4096 * 4096 - 512 ))
	newend=$(( bm + 512 + 2097152 ))
	dd if="$1" of="$1" bs=512 skip=$(( foot / 512 )) seek=$(( newend / 512 )) count=1 conv=notrunc status=none
}

head -c 16M /dev/urandom >base.raw
img create a.vhd 64M && clean a.vhd
img snapshot base.raw b.vhd && clean b.vhd
img snapshot a.vhd c.vhd && clean c.vhd
head -c 3M /dev/urandom | img write a.vhd 1M 3M && clean a.vhd
if command -v qemu-img >/dev/null; then
	qemu-img create -q -f vpc -o subformat=dynamic q.vhd 64M && clean q.vhd
fi
ok "fresh images check clean"

# leaked block at the end: reported, exit 0, --repair truncates it
img convert a.vhd before.raw
size=$(fsize a.vhd)
crash_reserve a.vhd
[ "$(fsize a.vhd)" -gt "$size" ] || fail "simulated crash did not grow the file"
img check a.vhd >out 2>&1 || { cat out; fail "a leak alone must not fail check"; }
grep -q '^leak: a.vhd: ' out || { cat out; fail "no leak line"; }
ok "leak reported: $(cat out)"
img info a.vhd >/dev/null || fail "info on a leaked image"
img check --repair a.vhd >rep 2>&1 || { cat rep; fail "repair of a leak failed"; }
grep -q '^repaired: ' rep || { cat rep; fail "repair said nothing"; }
[ "$(fsize a.vhd)" = "$size" ] || fail "repair left $(fsize a.vhd) bytes, want $size"
clean a.vhd
img convert a.vhd after.raw && same before.raw after.raw
ok "leak repaired: $(grep repaired rep)"

# a leak followed by a real block: interior, reported, never moved
crash_reserve a.vhd
head -c 1M /dev/urandom >more
img write a.vhd 40M <more || fail "write after leak"
img check --repair a.vhd >out 2>&1 || { cat out; fail "interior leak failed check"; }
grep -q '^leak: ' out && ! grep -q '^repaired' out || { cat out; fail "interior leak handling"; }
img convert a.vhd after.raw || fail "convert"
cmp -n $(( 40 * 1048576 )) before.raw after.raw || fail "data before 40M changed"
cmp -i $(( 40 * 1048576 )):0 -n 1048576 after.raw more || fail "data at 40M"
ok "interior leak reported, left in place"

# torn end footer: error, repaired from the copy at offset 0
img convert b.vhd before.raw
sum=$(sha b.vhd)
end=$(( $(fsize b.vhd) - 512 ))
dd if=/dev/zero of=b.vhd bs=1 seek=$(( end + 200 )) count=312 conv=notrunc status=none
dd if=/dev/urandom of=b.vhd bs=1 seek=$(( end + 8 )) count=40 conv=notrunc status=none
img check b.vhd >out 2>&1 && { cat out; fail "torn footer passed check"; }
grep -q 'end footer' out || { cat out; fail "torn footer not named"; }
img info b.vhd 2>&1 | grep -q 'check --repair' || fail "info does not suggest repair"
ok "torn end footer detected: $(head -n1 out)"
img check --repair b.vhd >rep 2>&1 || { cat rep; fail "repair of the torn footer failed"; }
grep -q '^repaired: .*end footer' rep || { cat rep; fail "repair did not say what it did"; }
clean b.vhd
[ "$(sha b.vhd)" = "$sum" ] || fail "repaired file differs from the original"
img convert b.vhd after.raw && same before.raw after.raw
ok "torn end footer repaired: $(grep repaired rep)"

# corrupt copy at offset 0: repaired from the end footer
dd if=/dev/urandom of=b.vhd bs=1 seek=20 count=30 conv=notrunc status=none
img check b.vhd >out 2>&1 && fail "corrupt footer copy passed check"
grep -q 'offset 0' out || { cat out; fail "copy at 0 not named"; }
img check --repair b.vhd >out 2>&1 || { cat out; fail "repair of the copy at 0 failed"; }
[ "$(sha b.vhd)" = "$sum" ] || fail "repaired file differs from the original"
ok "footer copy at offset 0 repaired"

# truncated: the footer is not rewritten over a file missing its blocks
img create t.vhd 16M && head -c 4M /dev/urandom | img write t.vhd 0 4M || fail "setup t.vhd"
truncate -s $(( $(fsize t.vhd) - 1048576 )) t.vhd
sum=$(sha t.vhd)
img check --repair t.vhd >out 2>&1 && { cat out; fail "repair of a truncated file succeeded"; }
grep -q 'past the end of the file' out && grep -q 'not repairing' out || { cat out; fail "truncation findings"; }
[ "$(sha t.vhd)" = "$sum" ] || fail "repair touched a truncated file"
ok "truncated file: repair refused"

# parents are checked too
img create p.vhd 8M && img snapshot p.vhd k.vhd || fail "setup chain"
rm p.vhd && img create p.vhd 8M || fail "re-create parent"
img check k.vhd >out 2>&1 && { cat out; fail "mismatched parent passed check"; }
grep -q 'parent UUID mismatch' out || { cat out; fail "mismatch not reported"; }
rm p.vhd
img check k.vhd >out 2>&1 && fail "missing parent passed check"
grep -q 'parent not found' out || { cat out; fail "missing parent not reported"; }
ok "check follows the chain"
sum=$(sha c.vhd)
img check --repair c.vhd >out 2>&1 || fail "repair of a clean image"
[ "$(cat out)" = "c.vhd: no problems found" ] && [ "$(sha c.vhd)" = "$sum" ] || fail "repair changed a clean image"
ok "repair leaves a clean image alone"
exit 0
