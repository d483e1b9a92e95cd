# Shared pieces of the benchmarks: servers, fio runs, the ratio table.
# Sourced by bench/io and friends; TOP and DIR are set by the caller.

bench_setup() {
	DIR=$1
	mkdir -p "$DIR"
	for t in fio qemu-img qemu-nbd python3; do
		command -v "$t" >/dev/null || { echo "bench: $t is missing (make deps)" >&2; exit 1; }
	done
	[ -x "$TOP/bin/tapdisk-renew" ] || make -C "$TOP" -s >/dev/null
	export RENEW_RUNDIR=$DIR/run
	mkdir -p "$RENEW_RUNDIR"
	OURS_SOCK=$DIR/ours.sock QEMU_SOCK=$DIR/qemu.sock
	OURS_PID="" QEMU_PID=""
	trap stop_servers EXIT
}

# make_base FILE GIB: a base image of random bytes (kept between runs).
make_base() {
	local f=$1 g=$2
	if [ -f "$f" ] && [ "$(stat -c %s "$f")" = $((g << 30)) ]; then return; fi
	rm -f "$f"
	fio --name=base --filename="$f" --size="${g}G" --rw=write --bs=1M \
		--ioengine=libaio --direct=1 --iodepth=8 --refill_buffers \
		--output=/dev/null >/dev/null
}

start_servers() {
	rm -f "$OURS_SOCK" "$QEMU_SOCK"
	"$TOP/bin/tapdisk-renew" --serve "renew:$DIR/ov.vhd" --socket "$OURS_SOCK" \
		2>>"$DIR/tapdisk.log" &
	OURS_PID=$!
	qemu-nbd -f qcow2 --cache=none --aio=native --shared=16 --persistent -k "$QEMU_SOCK" \
		"$DIR/ov.qcow2" 2>>"$DIR/qemu-nbd.log" &
	QEMU_PID=$!
	for _ in $(seq 200); do
		[ -S "$OURS_SOCK" ] && [ -S "$QEMU_SOCK" ] && return 0
		sleep 0.05
	done
	echo "bench: servers did not start (see $DIR/*.log)" >&2
	exit 1
}

stop_servers() {
	for p in $OURS_PID $QEMU_PID; do
		kill "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
	OURS_PID="" QEMU_PID=""
}

# fio_json: the result of one job as "IOPS MiB/s".
fio_result() {
	python3 -c '
import json, sys
text = sys.stdin.read()
j = json.loads(text[text.index("{"):])["jobs"][0]
r = j["read"] if j["read"]["io_bytes"] > 0 else j["write"]
print("%.0f %.1f" % (r["iops"], r["bw_bytes"] / 1048576))'
}

# fio_jobs QD RW: for random I/O, QD spread over CONNS jobs (one NBD
# connection each, as the kernel's nbd client or a multi-queue guest would
# use), the same total depth; sequential I/O stays one stream.
fio_jobs() {
	local n=${CONNS:-1}
	case $2 in rand*) ;; *) n=1;; esac
	echo --numjobs="$n" --iodepth=$(( $1 / n > 0 ? $1 / n : 1 )) --group_reporting
}

# fio_file FILE NAME RW BS QD SECS: the limit, libaio direct=1 on a file.
fio_file() {
	# shellcheck disable=SC2046
	fio --name="$2" --filename="$1" --rw="$3" --bs="$4" $(fio_jobs "$5" "$3") \
		--ioengine=libaio --direct=1 --time_based --runtime="$6" \
		--randrepeat=0 --norandommap --output-format=json | fio_result
}

# fio_nbd SOCK NAME RW BS QD SECS: fio's nbd engine (SECS 0 = whole disk
# once, on one connection).
fio_nbd() {
	local t=(--time_based --runtime="$6") j
	j=$(fio_jobs "$5" "$3")
	[ "$6" = 0 ] && { t=(--size=100%); j="--iodepth=$5"; }
	# shellcheck disable=SC2086
	fio --name="$2" --ioengine=nbd --uri="nbd+unix:///?socket=$1" --rw="$3" \
		--bs="$4" $j "${t[@]}" --randrepeat=0 --norandommap \
		--output-format=json | fio_result
}

print_header() {
	printf '\n%s\n' "$1"
	printf '%-16s %5s | %14s | %14s | %16s | %9s | %9s | %s\n' row bs "$2" "$3" "$4" "vs raw" "vs qemu" "vs raw, each repeat"
	printf '%s\n' "------------------------------------------------------------------------------------------------------------------"
}

# report_row NAME BS < runs: medians of the row's runs and the ratios.
report_row() {
	python3 -c '
import sys, statistics as st
name, bs = sys.argv[1], sys.argv[2]
rows = [l.split() for l in sys.stdin if l.split()[0] == name]
col = lambda k: st.median(float(r[k]) for r in rows)
big = bs.upper().endswith("M")
k = 3 if big else 2           # MiB/s for large blocks, IOPS for small
raw, ours, qemu = col(k), col(k + 2), col(k + 4)
unit = "MiB/s" if big else "IOPS"
# each repeat ran the three side by side: its own ratio shows how much
# the host moved between repeats, which the medians hide
each = " ".join("%.2f" % (float(r[k + 2]) / float(r[k])) for r in rows)
print("%-16s %5s | %8.0f %5s | %8.0f %5s | %10.0f %5s | %8.2fx | %8.2fx | %s" %
      (name, bs, raw, unit, ours, unit, qemu, unit, ours / raw, ours / qemu, each))
' "$1" "$2"
}

print_footer() {
	printf '%s\n' "(runs: $DIR/runs.txt; ratios are renew/raw and renew/qemu-nbd)"
}

# ---- pieces used by bench/commit and bench/renew-stall ----

# now: seconds since the epoch, to the nanosecond.
now() { date +%s.%N; }

# wait_socket SOCK PID: until PID listens on SOCK (fails if PID dies first).
wait_socket() {
	for _ in $(seq 400); do
		[ -S "$1" ] && return 0
		kill -0 "$2" 2>/dev/null || return 1
		sleep 0.05
	done
	return 1
}

# serve_renew PARAMS SOCK LOG / serve_qcow2 FILE SOCK LOG: one NBD server in
# the background; SERVE_PID is its pid. stop_pid PID ends it.
serve_renew() {
	rm -f "$2"
	"${BIN:-$TOP/bin}/tapdisk-renew" --serve "$1" --socket "$2" 2>>"$3" &
	SERVE_PID=$!
	wait_socket "$2" "$SERVE_PID" || { echo "bench: tapdisk-renew $1 did not start (see $3)" >&2; exit 1; }
}
serve_qcow2() {
	rm -f "$2"
	qemu-nbd -f qcow2 --cache=none --aio=native --persistent -k "$2" "$1" 2>>"$3" &
	SERVE_PID=$!
	wait_socket "$2" "$SERVE_PID" || { echo "bench: qemu-nbd $1 did not start (see $3)" >&2; exit 1; }
}
stop_pid() {
	kill "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
}

# copy_direct SRC DST: a byte copy that leaves neither file in the page cache.
copy_direct() {
	rm -f "$2"
	dd if="$1" of="$2" bs=4M iflag=direct oflag=direct status=none
}

# evict FILE...: write back and drop the files' pages from the page cache,
# so a timed run starts cold whatever touched the files before.
evict() {
	python3 -c '
import os, sys
for f in sys.argv[1:]:
    fd = os.open(f, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)' "$@"
}

# programs_line: which build of the programs a run used (for the table).
programs_line() {
	local b=${BIN:-$TOP/bin}
	echo "programs: $b (tapdisk-renew built $(date -r "$b/tapdisk-renew" '+%F %T'); repository HEAD at the end of the run: $(git -C "$TOP" rev-parse --short HEAD 2>/dev/null || echo "?"))"
}

# sha256 [FILE]: the hex digest of FILE or of standard input (OpenSSL's
# through python: several times faster than sha256sum here).
sha256() {
	python3 -c '
import hashlib, sys
h = hashlib.sha256()
f = open(sys.argv[1], "rb") if len(sys.argv) > 1 else sys.stdin.buffer
while True:
    b = f.read(1 << 22)
    if not b:
        break
    h.update(b)
print(h.hexdigest())' "$@"
}
