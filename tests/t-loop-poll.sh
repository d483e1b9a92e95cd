#!/bin/bash
# The event loop's adaptive polling: under a client's queue of requests the
# daemon's waits end while it polls, an idle disk costs no CPU, 0 turns
# polling off, and a bad setting is refused before anything is opened.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/ctl-lib.sh"

mkraw "$T/disk.raw" 0x5a $((64 << 20))

# cpu_ticks PID: user + system time of PID, in clock ticks.
cpu_ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
# load SOCK: 2 s of verified 4k random writes at queue depth 32.
load() {
	fio --name=poll --ioengine=nbd --uri="$(nbd_uri "$1")" --rw=randwrite --bs=4k \
		--iodepth=32 --size=16m --time_based --runtime=2 --verify=crc32c \
		--verify_fatal=1 --output=/dev/null || fail "fio on $1"
}
# stat_of PID NAME: one field of the stats of minor 0 of PID.
stat_of() { tapctl stats -p "$1" -m 0 >"$T/stats.json" && json_get "$T/stats.json" "j[\"$2\"]"; }

serve "aio:$T/disk.raw" "$T/on.sock"
[ "$(stat_of "$SPID" loop_poll_max_us)" = 512 ] || fail "default window: $(cat "$T/stats.json")"
load "$T/on.sock"
hits=$(stat_of "$SPID" loop_poll_hits)
[ "$hits" -gt 0 ] || fail "no wait ended while polling under load: $(cat "$T/stats.json")"
ok "under load $hits waits ended while polling (window now $(stat_of "$SPID" loop_poll_us) us)"

# idle: once the client has gone, the daemon sleeps instead of polling
no_clients() { [ "$(stat_of "$SPID" nbd_connections)" = 0 ]; }
wait_for 20 no_clients || fail "fio's connection still open: $(cat "$T/stats.json")"
t0=$(cpu_ticks "$SPID")
sleep 2 # the span measured, not a wait
t1=$(cpu_ticks "$SPID")
[ $((t1 - t0)) -le 10 ] || fail "idle daemon used $((t1 - t0)) ticks of CPU in 2 s"
ok "idle: $((t1 - t0)) ticks of CPU in 2 s"
unserve "$SPID" "$T/on.sock"

RENEW_POLL_MAX_US=0 serve "aio:$T/disk.raw" "$T/off.sock"
load "$T/off.sock"
[ "$(stat_of "$SPID" loop_poll_max_us)" = 0 ] || fail "RENEW_POLL_MAX_US=0 not taken"
[ "$(stat_of "$SPID" loop_poll_hits)" = 0 ] || fail "polled with polling off: $(cat "$T/stats.json")"
ok "RENEW_POLL_MAX_US=0: no polling"
unserve "$SPID" "$T/off.sock"

serve "aio:$T/disk.raw" "$T/opt.sock" --poll-max-us 100
[ "$(stat_of "$SPID" loop_poll_max_us)" = 100 ] || fail "--poll-max-us 100 not taken"
ok "--poll-max-us 100 taken"
unserve "$SPID" "$T/opt.sock"

for v in x -1 10001 "" 5us; do
	expect_usage "--poll-max-us '$v'" "--poll-max-us: '$v' is not a number" \
		tapdisk --serve "aio:$T/disk.raw" --socket "$T/bad.sock" --poll-max-us "$v"
	[ ! -e "$T/bad.sock" ] || fail "--poll-max-us '$v': a socket was made"
done
expect_usage "RENEW_POLL_MAX_US=abc" "RENEW_POLL_MAX_US: 'abc' is not a number" \
	env RENEW_POLL_MAX_US=abc "$BIN/tapdisk-renew" --serve "aio:$T/disk.raw" --socket "$T/bad.sock"
[ ! -e "$T/bad.sock" ] || fail "RENEW_POLL_MAX_US=abc: a socket was made"
