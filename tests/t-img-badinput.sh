#!/bin/bash
# Bad images and bad command lines: every case fails with a clear message
# (exit 1 for a bad image or request, 2 for a bad command line) and never
# changes the image (sha256 before and after).
. "$(dirname "$0")/lib.sh"
cd "$T" || exit 1

# poke FILE OFFSET HEXBYTES: overwrite bytes in place ("\x12\x34").
poke() { printf "$3" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none || fail "poke $1"; }
# flip FILE OFFSET: invert one byte.
flip() {
	local b
	b=$(od -An -tu1 -j "$2" -N1 "$1" | tr -d ' ')
	poke "$1" "$2" "$(printf '\\x%02x' $(( 255 - b )))"
}
fsize() { stat -c %s "$1"; }
# bad_image FILE PATTERN DESC: info, map, convert, check and write all fail
# with exit 1 and a message matching PATTERN; the image is unchanged.
bad_image() {
	local f=$1 pat=$2 d=$3 before cmd
	before=$(sha "$f")
	for cmd in "info $f" "info --json $f" "map $f" "convert $f $T/out.raw" "check $f"; do
		# shellcheck disable=SC2086
		run_rc 1 "$d" img $cmd
		grep -q -- "$pat" "$T/out" || { cat "$T/out"; fail "$d: '$cmd' message lacks '$pat'"; }
	done
	head -c 512 /dev/zero >"$T/sector"
	img write "$f" 0 512 <"$T/sector" >"$T/out" 2>&1 && fail "$d: write succeeded"
	grep -q '^renew-img: ' "$T/out" || fail "$d: write message: $(cat "$T/out")"
	[ "$(sha "$f")" = "$before" ] || fail "$d: the image changed"
	rm -f "$T/out.raw"
	ok "$d: $(img info "$f" 2>&1 | head -n1)"
}
# fresh NAME: a dynamic disk with two blocks of data.
fresh() {
	rm -f "$1"
	img create "$1" 16M || fail "create $1"
	head -c 4096 /dev/urandom | img write "$1" 0 4096 || fail "write $1"
	head -c 4096 /dev/urandom | img write "$1" 4M 4096 || fail "write $1"
}

fresh a.vhd
end=$(( $(fsize a.vhd) - 512 ))
flip a.vhd $(( end + 30 ))
bad_image a.vhd "checksum mismatch" "end footer checksum"
img info a.vhd 2>&1 | grep -q "copy at offset 0 is valid.*check --repair" || fail "torn footer message: $(img info a.vhd 2>&1)"
flip a.vhd 30
bad_image a.vhd "checksum mismatch" "both footer copies corrupt"

fresh b.vhd
flip b.vhd $(( 512 + 100 ))
bad_image b.vhd "header checksum mismatch" "header checksum"

fresh c.vhd
truncate -s $(( $(fsize c.vhd) - 1048576 )) c.vhd
bad_image c.vhd "end footer" "truncated by 1 MiB"
img check c.vhd | grep -q "past the end of the file" || fail "check does not name the truncated block"
fresh c2.vhd
truncate -s $(( $(fsize c2.vhd) - 100 )) c2.vhd
bad_image c2.vhd "not a multiple of 512\|not a whole number of sectors" "truncated mid-sector"

fresh d.vhd
poke d.vhd 1536 '\x00\x10\x00\x00'   # block 0 at sector 0x100000 = 512 MiB
bad_image d.vhd "past the end of the file" "BAT entry past EOF"

fresh e.vhd
poke e.vhd 1536 '\x00\x00\x00\x02'   # block 0 at sector 2: the header
bad_image e.vhd "overlaps the header" "BAT entry overlapping the header"
fresh e2.vhd
poke e2.vhd 1536 '\x00\x00\x00\x03'   # sector 3: the BAT itself
bad_image e2.vhd "overlaps the BAT" "BAT entry overlapping the BAT"
fresh e3.vhd
# entry 2 (the block at 4 MiB) made equal to entry 0
poke e3.vhd 1544 "$(od -An -tx1 -j1536 -N4 e3.vhd | sed 's/ /\\x/g')"
bad_image e3.vhd "overlap" "two BAT entries sharing a block"

head -c 8M /dev/urandom >base.raw
img snapshot base.raw f.vhd || fail "snapshot"
mv base.raw base.gone
bad_image f.vhd "parent not found" "parent missing"
mv base.gone base.raw
truncate -s 4M base.raw
bad_image f.vhd "smaller than the virtual size" "raw parent shrunk"

img create mid.vhd 8M || fail "create mid"
img snapshot mid.vhd g.vhd || fail "snapshot mid"
old=$(img info --json mid.vhd | sed -n 's/.*"uuid": "\([^"]*\)".*/\1/p')
rm mid.vhd
img create mid.vhd 8M || fail "re-create mid"
new=$(img info --json mid.vhd | sed -n 's/.*"uuid": "\([^"]*\)".*/\1/p')
bad_image g.vhd "parent UUID mismatch" "parent UUID mismatch"
img info g.vhd 2>&1 | grep "g.vhd" | grep "mid.vhd" | grep "$old" | grep -q "$new" ||
	fail "mismatch message must name both files and UUIDs: $(img info g.vhd 2>&1)"

img snapshot base.raw la.vhd 2>/dev/null || { truncate -s 8M base.raw; img snapshot base.raw la.vhd; } || fail "snapshot la"
img snapshot la.vhd lb.vhd || fail "snapshot lb"
mv la.vhd la.old
img snapshot lb.vhd la.vhd || fail "snapshot la over lb"   # la -> lb -> la
bad_image la.vhd "parent loop" "parent loop"

qemu-img create -q -f vpc -o subformat=fixed fixed.vhd 4M 2>/dev/null &&
	bad_image fixed.vhd "fixed-size VHD is not supported" "fixed VHD"

# creation refusals: nothing is left behind
run_rc 1 "size not a multiple of 512" img create h.vhd 1000
grep -q "not a multiple of 512" "$T/out" || fail "message: $(cat "$T/out")"
run_rc 1 "size above 2040 GiB" img create h.vhd 2041G
grep -q "2040 GiB" "$T/out" || fail "message: $(cat "$T/out")"
run_rc 1 "size zero" img create h.vhd 0
run_rc 1 "bad size text" img create h.vhd 12Q
[ ! -e h.vhd ] || fail "a refused create left h.vhd behind"
ok "create refuses bad sizes"
before=$(sha a.vhd)
run_rc 1 "create over an existing file" img create a.vhd 1M
grep -q "exists" "$T/out" || fail "message: $(cat "$T/out")"
run_rc 1 "snapshot over an existing file" img snapshot base.raw a.vhd
[ "$(sha a.vhd)" = "$before" ] || fail "an existing file was overwritten"
truncate -s 1000 odd.raw
run_rc 1 "raw parent not whole sectors" img snapshot odd.raw odd.vhd
grep -q "not a multiple of 512" "$T/out" || fail "message: $(cat "$T/out")"
ok "create and snapshot never overwrite"

# write refusals
fresh w.vhd
before=$(sha w.vhd)
head -c 512 /dev/zero >sec
img write w.vhd 100 512 <sec >out 2>&1 && fail "unaligned write accepted"
img write w.vhd 16M 512 <sec >out 2>&1 && fail "write past the end accepted"
img write w.vhd 0 1024 <sec >out 2>&1 && fail "short input accepted"
img write base.raw 0 512 <sec >out 2>&1 && fail "write into a raw file accepted"
[ "$(sha w.vhd)" = "$before" ] || fail "refused writes changed the image"
ok "write refuses unaligned, out-of-range and short input"

# command-line errors: exit 2 with a usage message
run_rc 2 "no command" img
run_rc 2 "unknown command" img frobnicate x
grep -q "unknown command" "$T/out" && grep -q "usage:" "$T/out" || fail "message: $(cat "$T/out")"
run_rc 2 "bad flag" img info --bogus a.vhd
grep -q "unknown option --bogus" "$T/out" || fail "message: $(cat "$T/out")"
run_rc 2 "missing operand" img create x.vhd
run_rc 2 "extra operand" img check a.vhd b.vhd
run_rc 2 "repair on info" img info --repair a.vhd
[ ! -e x.vhd ] || fail "usage error created a file"
ok "usage errors exit 2"
run_rc 1 "missing file" img info nosuch.vhd
grep -q "renew-img: open: nosuch.vhd: No such file" "$T/out" || fail "message: $(cat "$T/out")"
ok "missing file"
exit 0
