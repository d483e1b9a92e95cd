#!/bin/sh
# install-deps.sh [PACKAGE...]: install the Debian packages the build and
# the tests use (or the ones named), when missing.
set -e
pkgs="build-essential libaio-dev zlib1g-dev libssl-dev qemu-utils libnbd-bin nbdkit fio libvhdi-utils nbd-client valgrind util-linux e2fsprogs xfsprogs python3 clang libclang-rt-14-dev"
opts=""
if [ $# -gt 0 ]; then
	pkgs="$*"
	opts="--no-install-recommends"   # the VM tests' packages: only what they name
fi
missing=""
for p in $pkgs; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "installing:$missing"
if [ "$(id -u)" != 0 ]; then
	echo "install-deps: need root to install:$missing" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq $opts $missing >/dev/null
