#!/usr/bin/env python3
"""Check a disk after guest-init's powercut writer lost its power.

usage: powercut-verify.py DISK BASE N
The Ith write put "W<I>" lines in 4 KiB unit loc(I) = I*7 mod 640, unit L
at byte (L mod 32 * 512 + L // 32) * 4096; writes up to N were flushed
before the cut. Each unit must hold its last writer up to N (the base if
none), or a later writer's lines (written, maybe landed, not flushed);
every byte outside the units must be the base's. Prints one line.
"""
import sys

UNITS, LATER = 640, 4096


def unit_off(loc):
    return (loc % 32 * 512 + loc // 32) * 4096


def lines(i):
    s = b"W%d\n" % i
    return (s * (4096 // len(s) + 1))[:4096]


def main():
    disk = open(sys.argv[1], "rb").read()
    base = open(sys.argv[2], "rb").read()
    n = int(sys.argv[3])
    if len(disk) != len(base):
        print("the disk is %d bytes, the base %d" % (len(disk), len(base)))
        return 1
    last, later = {}, {}
    for i in range(1, n + 1):
        last[i * 7 % UNITS] = i
    for i in range(n + 1, n + LATER):
        later.setdefault(i * 7 % UNITS, []).append(i)
    bad, landed = [], 0
    covered = bytearray(base)
    for loc in range(UNITS):
        off = unit_off(loc)
        got = disk[off:off + 4096]
        want = lines(last[loc]) if loc in last else base[off:off + 4096]
        covered[off:off + 4096] = got
        if got == want:
            continue
        if any(got == lines(i) for i in later.get(loc, ())):
            landed += 1
            continue
        who = "write %d" % last[loc] if loc in last else "the base"
        bad.append("unit %d (byte %d) lost %s: holds %r" % (loc, off, who, got[:12]))
    if bad:
        print("%d of %d units wrong after %d flushed writes: %s" % (len(bad), UNITS, n, "; ".join(bad[:4])))
        return 1
    if bytes(covered) != disk:
        print("bytes outside the written units differ from the base")
        return 1
    print("all %d flushed writes read back (%d units hold a later, unflushed write)" % (n, landed))
    return 0


sys.exit(main())
