#!/bin/bash
# The overlay on XFS, the other filesystem Xen hosts keep images on: its
# direct I/O into holes, its extents and its end-of-file handling differ
# from ext4's. Fresh and partial blocks written through NBD verify, a
# kill -9 at each step of an allocation loses no acknowledged write, and
# the image reads the same through qemu-img and checks clean. Rewrites are
# not acked before they land here: an XFS overwrite may allocate (shared
# extents after a reflink copy), so a full disk could fail one.
. "$(dirname "$0")/lib.sh"

command -v mkfs.xfs >/dev/null || skip "no mkfs.xfs (xfsprogs): the XFS case is not run"
truncate -s 2G "$T/xfs.img"
mkfs.xfs -q "$T/xfs.img" || fail "mkfs.xfs"
mkdir "$T/x"
mount -o loop "$T/xfs.img" "$T/x" 2>"$T/mount.err" ||
	skip "cannot loop-mount an XFS image here ($(head -c 200 "$T/mount.err")): the XFS case is not run"
X=$T/x

randfile "$X/base.raw" 256
img snapshot "$X/base.raw" "$X/ov.vhd" >/dev/null || fail snapshot

# 4k writes at random over 32 blocks (first writes allocate, later ones
# fill holes), four connections, verified; then rewritten and verified
# again, from a restarted daemon whose blocks are all from an earlier open
serve "renew:$X/ov.vhd" "$T/s.sock"
run_fio() {
	fio --name=xfs --ioengine=nbd --uri="$(nbd_uri "$T/s.sock")" --rw=randwrite --bs=4k \
		--iodepth=16 --numjobs=4 --size=16M --offset_increment=64M --io_size=4M \
		--verify=crc32c --verify_fatal=1 --randrepeat=1 --randseed="$1" --output=/dev/null
}
run_fio 1 || fail "fio randwrite+verify on a fresh overlay on XFS"
unserve
serve "renew:$X/ov.vhd" "$T/s.sock"
run_fio 2 || fail "fio rewrite+verify after a restart on XFS"
"$BIN/tap-ctl-renew" stats -p "$SPID" -m 0 >"$T/stats" || fail stats
[ "$(json_get "$T/stats" "j['images'][0]['write_behind']")" = False ] ||
	fail "write-behind is on on XFS: $(tr -d ' \n' <"$T/stats")"
export_to "$T/s.sock" "$T/got"
unserve
img check "$X/ov.vhd" >"$T/check" || { cat "$T/check"; fail "check on XFS"; }
img convert "$X/ov.vhd" "$T/flat.raw" || fail "convert"
cmp -s "$T/got" "$T/flat.raw" || fail "renew-img convert reads the overlay otherwise than we serve it"
# qemu-img reads dynamic VHDs (a differencing one's parent it ignores)
img create "$X/dyn.vhd" 256M >/dev/null || fail create
serve "renew:$X/dyn.vhd" "$T/s.sock"
run_fio 3 || fail "fio randwrite+verify on a dynamic VHD on XFS"
export_to "$T/s.sock" "$T/got"
unserve
qemu-img convert -f vpc -O raw "$X/dyn.vhd" "$T/qemu.raw" || fail "qemu-img convert"
cmp -s "$T/got" "$T/qemu.raw" || fail "qemu-img reads the dynamic VHD on XFS otherwise than we serve it"
ok "fresh writes and rewrites verify on XFS (write-behind off); renew-img and qemu-img read the same"

# a kill -9 at each step of an allocation, as t-overlay-crash does on ext4
alloc_setup "$X"
runs=0
for point in alloc.reserved alloc.data alloc.bitmap; do
	for n in 1 3 5; do
		killed_at "$X" "$point:$n"
		runs=$((runs + 1))
	done
done
ok "killed at $runs allocation steps on XFS: acknowledged writes survive, images check clean"
