# Shared helpers for the shell tests: source it first.
#   T         a fresh scratch directory, removed on success
#   BIN       the programs under test
#   RENEW_RUNDIR  a private run directory for sockets
set -u
TOP=${RENEW_TOP:-$(cd "$(dirname "$0")/.." && pwd)}
BIN=$TOP/${BINDIR:-bin}
T=$(mktemp -d "$TOP/tests/tmp/$(basename "$0" .sh).XXXXXX")
export RENEW_RUNDIR=$T/run
mkdir -p "$RENEW_RUNDIR"
PIDS=""

# With VALGRIND=1 the programs run under valgrind, failing on any error or
# definite leak (a daemon ending with a worker thread still running leaves
# its stack "possibly lost": not reported).
if [ "${VALGRIND:-}" = 1 ]; then
	VG="valgrind -q --error-exitcode=99 --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite"
	# daemons spawned by tap-ctl-renew too, each reporting into $T/vg.PID
	export RENEW_TAPDISK_WRAPPER="valgrind -q --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite --log-file=$T/vg.%p"
else
	VG=""
fi
tapdisk() { $VG "$BIN/tapdisk-renew" "$@"; }
tapctl() { $VG "$BIN/tap-ctl-renew" "$@"; }
img() { $VG "$BIN/renew-img" "$@"; }

fail() { echo "FAIL: $*" >&2; exit 1; }
skip() { echo "skip: $*"; exit 77; }
ok() { echo "ok: $*"; }
# expect_fail DESCRIPTION CMD...: the command must exit non-zero.
expect_fail() { local d=$1; shift; if "$@" >"$T/out" 2>&1; then cat "$T/out"; fail "$d: succeeded"; fi; ok "$d: $(head -c 300 "$T/out" | tr '\n' ' ')"; }
# run_rc WANT DESC CMD...: the command exits WANT; its output is in $T/out.
run_rc() {
	local want=$1 d=$2 rc
	shift 2
	"$@" >"$T/out" 2>&1 </dev/null
	rc=$?
	[ $rc = "$want" ] || { cat "$T/out"; fail "$d: '$*' exit $rc, want $want"; }
}
# wait_for SECONDS CMD...: poll until CMD succeeds.
wait_for() { local n=$(( $1 * 20 )); shift; while ! "$@" >/dev/null 2>&1; do n=$((n-1)); [ $n -gt 0 ] || return 1; sleep 0.05; done; }
same() { cmp "$1" "$2" >/dev/null || fail "$1 and $2 differ"; }
sha() { sha256sum "$1" | cut -d' ' -f1; }

# A daemon serving one disk: start_disk "renew:/path" sets PID, MINOR, SOCK.
start_disk() {
	local out
	out=$(tapctl create --socket-only -a "$1") || fail "create $1"
	SOCK=$(echo "$out" | tail -n1)
	PID=$(tapctl list | grep -F "args=$1" | head -n1 | sed -n 's/.*pid=\([0-9]*\).*/\1/p')
	MINOR=$(tapctl list | grep -F "args=$1" | head -n1 | sed -n 's/.*minor=\([0-9]*\).*/\1/p')
	[ -S "$SOCK" ] || fail "no socket $SOCK"
	PIDS="$PIDS $PID"
}
nbd_uri() { echo "nbd+unix:///?socket=$1"; }

cleanup() {
	local rc=$?
	for p in $PIDS; do kill "$p" 2>/dev/null; done
	for p in $PIDS; do wait_for 5 sh -c "! kill -0 $p" || kill -9 "$p" 2>/dev/null; done
	# filesystems a test mounted under $T (small ones, to fill up)
	awk -v t="$T/" 'index($2, t) == 1 { print $2 }' /proc/mounts | sort -r |
		while read -r m; do umount "$m" 2>/dev/null || umount -l "$m"; done
	if [ -n "$VG" ] && [ $rc -eq 0 ] && cat "$T"/vg.* 2>/dev/null | grep -q .; then
		cat "$T"/vg.*
		echo "FAIL: valgrind reported errors in a spawned daemon"
		rc=1
	fi
	if [ $rc -eq 0 ] || [ $rc -eq 77 ]; then rm -rf "$T"; else echo "kept $T"; fi
	exit $rc
}
trap cleanup EXIT

# serve PARAMS SOCK [ARGS...]: tapdisk-renew --serve in the background,
# waiting for its socket; sets SPID.
serve() {
	local p=$1 s=$2
	shift 2
	rm -f "$s"  # a killed daemon leaves its socket behind
	( exec $VG "$BIN/tapdisk-renew" --serve "$p" --socket "$s" "$@" ) 2>>"$T/tapdisk.log" &
	SPID=$!
	PIDS="$PIDS $SPID"
	wait_for 20 test -S "$s" || { cat "$T/tapdisk.log"; fail "serve $p: no socket $s"; }
}
# unserve [PID SOCK]: SIGTERM must drain, exit 0 and remove the socket
# (default: the daemon serve started last).
unserve() {
	local pid=${1:-$SPID} sock=${2:-}
	kill -TERM "$pid" 2>/dev/null
	wait "$pid" 2>/dev/null
	local rc=$?
	[ $rc -eq 0 ] || { tail -20 "$T/tapdisk.log"; fail "tapdisk-renew $pid exited with $rc"; }
	[ -z "$sock" ] || [ ! -e "$sock" ] || fail "socket $sock left behind"
}
# export_to SOCK FILE: the whole export copied into FILE.
export_to() { nbdcopy "$(nbd_uri "$1")" "$2" || fail "nbdcopy from $1"; }
# qio SOCK CMD...: qemu-io on an NBD socket, one -c per CMD. qemu-io writes
# through by default (a flush after every write); QIO_CACHE=writeback
# makes it behave as a guest with a write cache.
qio() {
	local sock=$1 a=()
	shift
	for c in "$@"; do a+=(-c "$c"); done
	qemu-io -t "${QIO_CACHE:-writethrough}" -f raw "$(nbd_uri "$sock")" "${a[@]}"
}
# json_get FILE EXPR: evaluate a python expression on the JSON in FILE (as j).
json_get() { python3 -c 'import json, sys; j = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }
# randfile FILE MIB: random bytes.
randfile() { head -c "$(( $2 << 20 ))" /dev/urandom >"$1"; }
# fio keeps no verify state files (it would drop them in the working tree)
fio() { command fio --verify_state_save=0 "$@"; }

# alloc_setup DIR: DIR/orig/base.raw (24 MiB) and an overlay DIR/orig/vm.vhd
# over it, and $T/writes: ten writes (OFFSET LENGTH BYTE), most into blocks
# not yet allocated: new blocks, a new piece of an allocated block (the
# 4th), 512 bytes, 1 MiB.
alloc_setup() {
	mkdir -p "$1/orig"
	randfile "$1/orig/base.raw" 24
	img snapshot "$1/orig/base.raw" "$1/orig/vm.vhd" >/dev/null || fail snapshot
	printf '%s\n' "0 65536 1" "2097152 4096 2" "4194304 1048576 3" "65536 4096 4" \
		"6291456 512 5" "8388608 131072 6" "10485760 4096 7" "12582912 8192 8" \
		"14680064 4096 9" "16777216 4096 10" >"$T/writes"
}
# killed_at DIR POINT:N: DIR/orig copied to DIR/run and served with a kill -9
# at the Nth POINT while qemu-io makes the writes of $T/writes; the image
# checks clean and a restarted daemon serves every acknowledged write (and
# maybe the one in flight) over the base.
killed_at() {
	local dir=$1 point=$2 cmds=() off len byte acked
	while read -r off len byte; do cmds+=(-c "write -P $byte $off $len"); done <"$T/writes"
	rm -rf "$dir/run"; cp -a "$dir/orig" "$dir/run"
	RENEW_FAULT=$point serve "renew:$dir/run/vm.vhd" "$T/s.sock"
	qemu-io -f raw "$(nbd_uri "$T/s.sock")" "${cmds[@]}" >"$T/qio" 2>&1
	wait "$SPID" 2>/dev/null
	acked=$(grep -c '^wrote' "$T/qio")
	[ "$acked" -lt "${#cmds[@]}" ] || fail "$point: the daemon was not killed"
	img check "$dir/run/vm.vhd" >"$T/check" || { cat "$T/check"; fail "$point: check"; }
	serve "renew:$dir/run/vm.vhd" "$T/s.sock"
	export_to "$T/s.sock" "$T/got"
	unserve
	head -n "$acked" "$T/writes" | tests/apply-writes.py "$dir/orig/base.raw" "$T/want"
	head -n $((acked + 1)) "$T/writes" | tests/apply-writes.py "$dir/orig/base.raw" "$T/want2"
	cmp -s "$T/got" "$T/want" || cmp -s "$T/got" "$T/want2" ||
		fail "$point: $acked acknowledged writes did not all read back"
}
