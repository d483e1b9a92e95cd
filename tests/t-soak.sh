#!/bin/bash
# A randomized soak (tests/soak.py) of a live disk: rounds of writes in
# flight while it is renewed, paused, killed -9, stopped or renewed
# offline, every acknowledged write read back after each round. The same
# seed gives the same rounds. make check runs SOAK_SECS=40 with seed 1;
# make soak runs a long one with a random seed (SOAK_SEED=random).
. "$(dirname "$0")/lib.sh"

seed=${SOAK_SEED:-1}
[ "$seed" = random ] && seed=$(( $(od -An -N2 -tu2 /dev/urandom) ))
echo "seed $seed, ${SOAK_SECS:-40} s"
BIN=$BIN python3 "$TOP/tests/soak.py" "$T/soak" "$seed" "${SOAK_SECS:-40}" || fail "soak (seed $seed)"
ok "soak"
