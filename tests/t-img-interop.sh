#!/bin/bash
# Interoperability of our VHDs with clients we did not write: images made
# and filled by renew-img read identically through qemu-img (vpc) and are
# described correctly by vhdiinfo (libvhdi); VHDs made by qemu-img read
# correctly through renew-img convert/info.
. "$(dirname "$0")/lib.sh"
command -v qemu-img >/dev/null || skip "qemu-img not installed"
command -v vhdiinfo >/dev/null || skip "vhdiinfo (libvhdi-utils) not installed"
cd "$T" || exit 1

# put IMAGE EXPECTED OFFSET BYTES: random data into the image and the expected raw copy.
put() {
	head -c "$4" /dev/urandom >"$T/chunk"
	img write "$1" "$3" "$4" <"$T/chunk" || fail "write $4 bytes at $3 into $1"
	dd if="$T/chunk" of="$2" bs=512 seek=$(( $3 / 512 )) conv=notrunc status=none || fail "dd"
}
json_num() { sed -n "s/.*\"$1\": *\([0-9]*\).*/\1/p"; }
vhdi() { vhdiinfo "$1" | sed -n "s/^[[:space:]]*$2[[:space:]]*:[[:space:]]*//p" | head -n1; }

# 1. A dynamic disk of an exact (not CHS-rounded) size, filled at awkward places.
SIZE=$(( 100 * 1024 * 1024 + 3 * 512 ))
img create dyn.vhd $SIZE || fail "create"
truncate -s $SIZE dyn.expect
put dyn.vhd dyn.expect 0 4096
put dyn.vhd dyn.expect $(( 2 * 1048576 - 1024 )) 8192           # crosses a block boundary
put dyn.vhd dyn.expect $(( 37 * 1048576 + 512 )) $(( 5 * 1048576 ))  # spans three blocks
put dyn.vhd dyn.expect $(( SIZE - 1536 )) 1536                  # the last sectors (partial last block)
img check dyn.vhd || fail "check after writes"
qsize=$(qemu-img info --output=json -f vpc dyn.vhd | json_num virtual-size)
[ "$qsize" = $SIZE ] || fail "qemu-img sees virtual size $qsize, want $SIZE"
qemu-img convert -f vpc -O raw dyn.vhd dyn.qemu.raw || fail "qemu-img convert"
same dyn.qemu.raw dyn.expect
qemu-img compare -f vpc -F raw dyn.vhd dyn.expect >/dev/null || fail "qemu-img compare"
img convert dyn.vhd dyn.ours.raw || fail "our convert"
same dyn.ours.raw dyn.expect
img convert dyn.vhd - | cmp - dyn.expect || fail "convert to stdout differs"
ok "dynamic disk: qemu-img reads what renew-img wrote"
[ "$(vhdi dyn.vhd 'Media size' | sed 's/.*(\([0-9]*\) bytes).*/\1/')" = $SIZE ] || { vhdiinfo dyn.vhd; fail "vhdiinfo media size"; }
[ "$(vhdi dyn.vhd 'Disk type')" = Dynamic ] || fail "vhdiinfo disk type"
uuid=$(img info --json dyn.vhd | sed -n 's/.*"uuid": "\([^"]*\)".*/\1/p')
[ "$(vhdi dyn.vhd Identifier)" = "$uuid" ] || fail "vhdiinfo identifier $(vhdi dyn.vhd Identifier) != $uuid"
ok "dynamic disk: vhdiinfo agrees on size, type and identifier"
# allocated space: blocks 0, 1, 18..21, 50 (the last, partial) = 7 blocks
info=$(img info --json dyn.vhd)
[ "$(echo "$info" | json_num allocated_bytes)" = $(( 7 * 2097152 )) ] || fail "allocated_bytes: $info"
[ "$(echo "$info" | json_num data_bytes)" = $(( 4096 + 8192 + 5 * 1048576 + 1536 )) ] || fail "data_bytes: $info"
ok "info: allocated and data bytes"

# 2. Differencing disks over a raw base, in another directory, and over a VHD.
mkdir -p base
head -c $(( 64 * 1048576 )) /dev/urandom >base/base.raw
img snapshot base/base.raw child.vhd || fail "snapshot raw"
cp base/base.raw child.expect
put child.vhd child.expect $(( 3 * 1048576 + 4096 )) 65536
put child.vhd child.expect $(( 64 * 1048576 - 512 )) 512
img convert child.vhd child.ours.raw || fail "convert child"
same child.ours.raw child.expect
[ "$(vhdi child.vhd 'Disk type')" = Differential ] || fail "vhdiinfo disk type of child"
[ "$(vhdi child.vhd 'Parent identifier')" = 00000000-0000-0000-0000-000000000000 ] || fail "raw parent uuid"
[ "$(vhdi child.vhd 'Parent filename')" = base.raw ] || fail "parent filename $(vhdi child.vhd 'Parent filename')"
[ "$(vhdi child.vhd 'Media size' | sed 's/.*(\([0-9]*\) bytes).*/\1/')" = $(( 64 * 1048576 )) ] || fail "child media size"
ok "differencing over raw: our convert correct; vhdiinfo parent fields"

img create base/mid.vhd 64M || fail "create mid"
truncate -s 64M top.expect
put base/mid.vhd top.expect $(( 10 * 1048576 )) 3145728
img snapshot base/mid.vhd top.vhd || fail "snapshot vhd"
put top.vhd top.expect $(( 11 * 1048576 )) 4096
midu=$(img info --json base/mid.vhd | sed -n 's/.*"uuid": "\([^"]*\)".*/\1/p')
[ "$(vhdi top.vhd 'Parent identifier')" = "$midu" ] || fail "vhdiinfo parent identifier $(vhdi top.vhd 'Parent identifier') != $midu"
[ "$(vhdi top.vhd 'Parent filename')" = mid.vhd ] || fail "vhdiinfo parent filename"
img info --json top.vhd | grep -q "\"parent_uuid\": \"$midu\"" || fail "info parent_uuid"
img convert top.vhd top.ours.raw || fail "convert top"
same top.ours.raw top.expect
img check top.vhd || fail "check top"
img map --json top.vhd >map.json || fail "map"
grep -q '"layer": 0' map.json && grep -q '"layer": 1' map.json && grep -q '"zero": true' map.json || fail "map: $(cat map.json)"
ok "differencing over VHD: parent UUID, chain read, map"

# 3. VHDs made by qemu-img read through renew-img.
qemu-img create -q -f vpc -o subformat=dynamic q.vhd 100M || fail "qemu-img create"
qsize=$(qemu-img info --output=json q.vhd | json_num virtual-size)
[ "$(img info --json q.vhd | json_num virtual_size)" = "$qsize" ] || fail "virtual size of qemu's image"
img check q.vhd || fail "check of qemu's empty image"
truncate -s 20M src.raw
head -c 3000000 /dev/urandom | dd of=src.raw bs=512 seek=100 conv=notrunc status=none
head -c 1000000 /dev/urandom | dd of=src.raw bs=512 seek=30000 conv=notrunc status=none
for force in off on; do
	rm -f q2.vhd
	qemu-img convert -f raw -O vpc -o subformat=dynamic,force_size=$force src.raw q2.vhd || fail "qemu-img convert -O vpc"
	img check q2.vhd || fail "check of qemu's image"
	qemu-img convert -f vpc -O raw q2.vhd q2.qemu.raw || fail "qemu-img convert back"
	img convert q2.vhd q2.ours.raw || fail "our convert of qemu's image"
	same q2.ours.raw q2.qemu.raw
	cmp -n $(( 20 * 1048576 )) q2.ours.raw src.raw || fail "qemu's image data differs from the source"
	qsize=$(qemu-img info --output=json q2.vhd | json_num virtual-size)
	[ "$(img info --json q2.vhd | json_num virtual_size)" = "$qsize" ] || fail "virtual size (force_size=$force)"
done
# we can write into qemu's image and qemu reads it back
put q2.vhd q2.qemu.raw $(( 8 * 1048576 )) 1048576
qemu-img convert -f vpc -O raw q2.vhd q2.after.raw || fail "qemu-img convert after our write"
same q2.after.raw q2.qemu.raw
ok "qemu-img's VHDs: read, checked and written by renew-img"
exit 0
