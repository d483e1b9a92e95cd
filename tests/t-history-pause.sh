#!/bin/bash
# The guest's pause with a history is the pause without one plus a hard
# link and a directory fsync: it does not grow with the overlay. Live
# renews of a 16 MiB and a 512 MiB overlay, with and without a history,
# three times each; prints the longest pause of each (tap-ctl-renew stats,
# renew.pause_max_ms). Hashing 512 MiB takes seconds here: were it in the
# pause, every renew would pause that long, so the best of three must stay
# well below (the worst can meet a slow fsync, with or without history).
. "$(dirname "$0")/lib.sh"

# jget FILE EXPR: a python expression on the JSON in FILE (as j)
jget() { python3 -c 'import json, sys; j = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }

# disk NAME [--history DIR]: a 1 GiB sparse base, an overlay, a daemon; sets D_PID D_MINOR D_SOCK
disk() {
	local name=$1 out
	shift
	truncate -s 1G "$T/$name.raw"
	img snapshot "$T/$name.raw" "$T/$name.vhd" >/dev/null || fail "snapshot $name"
	out=$(tapctl create --socket-only -a "renew:$T/$name.vhd" "$@") || fail "create $name"
	D_SOCK=$(echo "$out" | tail -n1)
	D_PID=$(tapctl list | grep -F "args=renew:$T/$name.vhd" | sed -n 's/.*pid=\([0-9]*\).*/\1/p')
	D_MINOR=$(tapctl list | grep -F "args=renew:$T/$name.vhd" | sed -n 's/.*minor=\([0-9]*\).*/\1/p')
	PIDS="$PIDS $D_PID"
}

# pause SOCK PID MINOR MIB: fill MIB of the overlay, renew live; prints the longest pause in ms
pause() {
	fio --name=fill --ioengine=nbd --uri="$(nbd_uri "$1")" --rw=write --bs=1M --size="$4M" \
		--iodepth=8 --output=/dev/null || fail "fio fill $4M"
	tapctl renew -p "$2" -m "$3" --wait >"$T/out" 2>&1 || { cat "$T/out"; fail "renew of $4 MiB"; }
	tapctl stats -p "$2" -m "$3" >"$T/stats" || fail stats
	jget "$T/stats" 'j["renew"]["pause_max_ms"]'
}

disk plain
P="$D_SOCK $D_PID $D_MINOR"
disk kept --history "$T/hist"
K="$D_SOCK $D_PID $D_MINOR"

printf '%-10s %-9s %s\n' overlay history "longest pause of each renew (ms)" >"$T/table"
for mib in 16 512; do
	off="" on=""
	for rep in 1 2 3; do
		off="$off $(pause $P $mib)"
		on="$on $(pause $K $mib)"
	done
	printf '%-10s %-9s %s\n' "$mib MiB" off "$off" "$mib MiB" on "$on" >>"$T/table"
	best=$(echo $on | tr ' ' '\n' | sort -n | head -n1)
done
cat "$T/table"
start=$(date +%s.%N)
sha256sum "$T/hist/6.vhd" >/dev/null
hash_s=$(python3 -c "print(round($(date +%s.%N) - $start, 2))")
echo "hashing a kept 512 MiB overlay (sha256sum) takes $hash_s s"
img history --json "$T/hist" >"$T/h.json" || fail "history"
[ "$(jget "$T/h.json" 'j["last_generation"]')" = 6 ] || fail "the history does not hold 6 generations"
python3 -c "import sys; sys.exit(0 if $best < 1000 else 1)" ||
	fail "every renew of a 512 MiB overlay with a history paused the guest a second or more (best $best ms)"
ok "the pause with a history does not grow with the overlay (512 MiB: best $best ms; hashing it takes $hash_s s)"
