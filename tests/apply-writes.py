#!/usr/bin/env python3
"""Apply a list of writes to a copy of an image: the expected disk.

usage: apply-writes.py IN OUT < writes
Each line of writes: OFFSET LENGTH BYTE (BYTE 0..255; sizes in bytes,
suffixes k/M accepted). Lines starting with # are ignored.
"""
import shutil
import sys


def num(s):
    mult = {"k": 1024, "K": 1024, "M": 1 << 20, "G": 1 << 30}
    return int(s[:-1]) * mult[s[-1]] if s[-1] in mult else int(s, 0)


def main():
    src, dst = sys.argv[1], sys.argv[2]
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as f:
        for line in sys.stdin:
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            off, length, byte = num(parts[0]), num(parts[1]), num(parts[2])
            f.seek(off)
            f.write(bytes([byte]) * length)


main()
