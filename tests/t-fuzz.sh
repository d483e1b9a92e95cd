#!/bin/bash
# A short fuzzing run of the VHD parser and the NBD request parser
# (clang's libFuzzer with ASan and UBSan), seeded with real images and a
# real client's handshake; longer runs by hand: FUZZ_SECONDS=600.
. "$(dirname "$0")/lib.sh"
secs=${FUZZ_SECONDS:-20}
command -v clang >/dev/null || skip "clang is not installed"
CF="-g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64"
echo 'int LLVMFuzzerTestOneInput(const char *d, long n) { return 0; }' >"$T/probe.c"
clang $CF "$T/probe.c" -o "$T/probe" 2>/dev/null || skip "clang cannot link libFuzzer here (libclang-rt-14-dev missing)"

clang $CF -Ilib/vhd lib/vhd/[a-z]*.c tests/fuzz/fuzz-vhd.c -o "$T/fuzz-vhd" || fail "build fuzz-vhd"
clang $CF -Itapdisk-glue tests/fuzz/fuzz-nbd.c tapdisk-glue/nbd-parse.c -o "$T/fuzz-nbd" || fail "build fuzz-nbd"

# seeds: a dynamic disk with data, a differencing disk, a qemu-made VHD
mkdir -p "$T/vhd-seeds" "$T/nbd-seeds"
img create "$T/vhd-seeds/dyn.vhd" 4M >/dev/null
head -c 8192 /dev/urandom | img write "$T/vhd-seeds/dyn.vhd" 4096 >/dev/null
truncate -s 1M "$T/base.raw"
img snapshot "$T/base.raw" "$T/vhd-seeds/diff.vhd" >/dev/null
qemu-img create -q -f vpc "$T/vhd-seeds/qemu.vhd" 3M
# a client's opening bytes: flags, then NBD_OPT_GO for the default export
printf '\0\0\0\3IHAVEOPT\0\0\0\7\0\0\0\6\0\0\0\0\0\0' >"$T/nbd-seeds/go"

"$T/fuzz-vhd" -max_total_time="$secs" -max_len=65536 -print_final_stats=1 "$T/vhd-seeds" \
	>"$T/vhd.log" 2>&1 || { tail -40 "$T/vhd.log"; fail "fuzz-vhd found a crash"; }
"$T/fuzz-nbd" -max_total_time="$secs" -max_len=4096 -print_final_stats=1 "$T/nbd-seeds" \
	>"$T/nbd.log" 2>&1 || { tail -40 "$T/nbd.log"; fail "fuzz-nbd found a crash"; }
ok "fuzz-vhd: $(grep -m1 'stat::number_of_executed_units' "$T/vhd.log" | awk '{print $2}') runs in ${secs}s"
ok "fuzz-nbd: $(grep -m1 'stat::number_of_executed_units' "$T/nbd.log" | awk '{print $2}') runs in ${secs}s"
