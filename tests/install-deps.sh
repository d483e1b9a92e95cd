#!/bin/sh
# Install the Debian packages the build and the tests use, when missing.
set -e
pkgs="build-essential libaio-dev zlib1g-dev qemu-utils libnbd-bin nbdkit fio libvhdi-utils nbd-client valgrind util-linux e2fsprogs python3 clang libclang-rt-14-dev"
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
apt-get install -y -qq $missing >/dev/null
