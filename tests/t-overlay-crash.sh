#!/bin/bash
# Kill the daemon at each step of a block allocation (after reserving the
# space, after the data, after the bitmap; before each metadata write;
# once a data write or fsync ran) while a client writes: every
# write acknowledged before the kill reads back after a restart, and the
# image checks clean (reserved space may leak, never more).
. "$(dirname "$0")/lib.sh"

alloc_setup "$T"
runs=0
for point in alloc.reserved alloc.data alloc.bitmap; do
	for n in 1 2 5 8; do
		killed_at "$T" "$point:$n"
		runs=$((runs + 1))
	done
done
# and just before a metadata write, or just after a data write landed
# (before the daemon saw it)
for point in vhd.write.end-footer:3 vhd.write.bitmap:2 vhd.write.bitmap:4 vhd.write.bat-sector:2 \
	vhd.write.bat-sector:6 aio.write:1 aio.write:4 aio.write:7 aio.fsync:3; do
	killed_at "$T" "$point"
	runs=$((runs + 1))
done
ok "killed at $runs steps of writes: acknowledged writes survive, images check clean"
