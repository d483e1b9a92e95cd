#!/bin/bash
# A guided run: a base image, an overlay over it, a daemon serving it over
# NBD, a real client (qemu-io) writing and reading, then a live renew.
set -euo pipefail
TOP=$(cd "$(dirname "$0")/.." && pwd)
B=$TOP/bin
D=$(mktemp -d /tmp/renew-demo.XXXXXX)
export RENEW_RUNDIR=$D/run
PID="" MINOR=""
cleanup() { [ -n "$PID" ] && "$B/tap-ctl-renew" destroy -p "$PID" -m "$MINOR" >/dev/null 2>&1; rm -rf "$D"; }
trap cleanup EXIT
step() { printf '\n== %s\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

step "a 256 MiB base image and an empty overlay over it"
head -c 256M /dev/urandom >"$D/base.raw"
run "$B/renew-img" snapshot "$D/base.raw" "$D/vm1.vhd"
run "$B/renew-img" info "$D/vm1.vhd"

step "serve it: a daemon exports the disk over NBD"
SOCK=$("$B/tap-ctl-renew" create --socket-only -a "renew:$D/vm1.vhd")
run "$B/tap-ctl-renew" list
PID=$("$B/tap-ctl-renew" list | sed -n 's/.*pid=\([0-9]*\).*/\1/p')
MINOR=$("$B/tap-ctl-renew" list | sed -n 's/.*minor=\([0-9]*\).*/\1/p')
URI="nbd+unix:///?socket=$SOCK"
run nbdinfo "$URI"

step "a client writes 8 MiB and reads it back"
run qemu-io -f raw -c "write -P 0x5a 16M 8M" -c "read -P 0x5a 16M 8M" "$URI"
run "$B/renew-img" info "$D/vm1.vhd"

step "renew, live: the base absorbs the overlay, a fresh one takes its place"
run "$B/tap-ctl-renew" renew -p "$PID" -m "$MINOR" --wait
run "$B/renew-img" info "$D/vm1.vhd"
run qemu-io -f raw -c "read -P 0x5a 16M 8M" "$URI"
cmp -s <(dd if="$D/base.raw" bs=1M skip=16 count=8 2>/dev/null) <(head -c 8M /dev/zero | tr '\0' 'Z') &&
	echo "the base now holds the client's 8 MiB"

step "stop"
run "$B/tap-ctl-renew" destroy -p "$PID" -m "$MINOR"
PID=""
run "$B/renew-img" check "$D/vm1.vhd"
