#!/bin/bash
# The control verbs one by one on a raw disk: spawn, attach, open, list,
# stats, close, detach (the daemon exits after its last vbd), then create
# --socket-only with real I/O through the socket, and destroy leaving
# nothing behind.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/ctl-lib.sh"

mkraw "$T/a.raw" 0xaa $((4 << 20))

# --- spawn / attach / open / list / close / detach ---
P=$(tapctl spawn) || fail "spawn"
[[ $P =~ ^[0-9]+$ ]] || fail "spawn printed '$P'"
PIDS="$PIDS $P"
[ -S "$RENEW_RUNDIR/ctl$P" ] || fail "no control socket ctl$P"
[ "$(stat -c %a "$RENEW_RUNDIR/ctl$P")" = 600 ] || fail "control socket mode $(stat -c %a "$RENEW_RUNDIR/ctl$P")"
ok "spawn: pid $P, socket mode 0600"

tapctl version -p "$P" | grep -q "pid=$P protocol=1" || fail "version -p"
[ "$(tapctl list)" = "pid=$P" ] || fail "list of a daemon without vbds: '$(tapctl list)'"

tapctl attach -p "$P" -m 3 || fail "attach"
line=$(tapctl list -p "$P")
[ "$line" = "pid=$P minor=3 state=0x2" ] || fail "list after attach: '$line'"

SOCK=$(tapctl open -p "$P" -m 3 -a "aio:$T/a.raw") || fail "open"
[ "$SOCK" = "$RENEW_RUNDIR/nbd$P.3" ] || fail "open printed '$SOCK'"
[ -S "$SOCK" ] || fail "no NBD socket $SOCK"
line=$(tapctl list)
[ "$line" = "pid=$P minor=3 state=0 args=aio:$T/a.raw" ] || fail "list after open: '$line'"
ok "open: $line"

size=$(nbdinfo --size "$(nbd_uri "$SOCK")") || fail "nbdinfo"
[ "$size" = $((4 << 20)) ] || fail "size $size"
qio "$SOCK" "read -P 0xaa 0 1M" >/dev/null || fail "read through the socket"

tapctl close -p "$P" -m 3 || fail "close"
[ ! -e "$SOCK" ] || fail "NBD socket left after close"
[ "$(tapctl list -p "$P" -m 3)" = "pid=$P minor=3 state=0x2" ] || fail "list after close"

# reopen read-only: writes must fail, reads work
SOCK=$(tapctl open -p "$P" -m 3 -a "aio:$T/a.raw" -R) || fail "open -R"
qemu-io -r -f raw "$(nbd_uri "$SOCK")" -c "read -P 0xaa 0 4k" >/dev/null || fail "read of a read-only disk"
nbdinfo "$(nbd_uri "$SOCK")" | grep -q "is_read_only: true" || fail "export not read-only"
tapctl list --json >"$T/l.json" || fail "list --json"
[ "$(json_get "$T/l.json" 'j[0]["read_only"]')" = True ] || fail "read_only not listed"
tapctl close -p "$P" -m 3 || fail "close (ro)"

tapctl detach -p "$P" -m 3 || fail "detach"
wait_for 10 gone "$P" || fail "daemon $P still running after its last detach"
[ -z "$(lsrun)" ] || fail "left in the run directory: $(lsrun)"
[ -z "$(tapctl list)" ] || fail "list not empty: $(tapctl list)"
ok "detach: daemon exited, run directory clean"

# --- create --socket-only, I/O, stats, destroy ---
start_disk "aio:$T/a.raw"
[ "$MINOR" = 0 ] || fail "first create got minor $MINOR"
[ "$SOCK" = "$RENEW_RUNDIR/nbd$PID.0" ] || fail "create printed '$SOCK'"
qio "$SOCK" "write -P 0x55 0 64k" "write -P 0x56 64k 64k" "write -P 0x57 1M 64k" \
	"read -P 0x55 0 4k" "read -P 0x57 1M 4k" >"$T/qio.out" || { cat "$T/qio.out"; fail "qemu-io"; }
cmp <(head -c 65536 "$T/a.raw") <(python3 -c 'import sys; sys.stdout.buffer.write(b"\x55" * 65536)') ||
	fail "the raw file does not hold the written bytes"
ok "create --socket-only: qemu-io wrote and read through $SOCK"

tapctl stats -p "$PID" -m "$MINOR" >"$T/stats.json" || fail "stats"
cat "$T/stats.json"
[ "$(json_get "$T/stats.json" 'j["writes"]')" = 3 ] || fail "stats writes"
[ "$(json_get "$T/stats.json" 'j["write_bytes"]')" = $((3 * 65536)) ] || fail "stats write_bytes"
[ "$(json_get "$T/stats.json" 'j["reads"]')" = 2 ] || fail "stats reads"
[ "$(json_get "$T/stats.json" 'j["read_bytes"]')" = 8192 ] || fail "stats read_bytes"
[ "$(json_get "$T/stats.json" 'j["errors"]')" = 0 ] || fail "stats errors"
[ "$(wc -l <"$T/stats.json")" -gt 5 ] || fail "stats not pretty-printed"
ok "stats: 3 writes / 192 KiB, 2 reads / 8 KiB"
# three clients held open at once (qemu-io reads commands until its input
# closes): stats counts them, then none once they go
conns() { tapctl stats -p "$PID" -m "$MINOR" >"$T/conns.json" && json_get "$T/conns.json" 'j["nbd_connections"]'; }
conns_are() { [ "$(conns)" = "$1" ]; }
wait_for 5 conns_are 0 || fail "stats nbd_connections $(conns) after qemu-io left"
mkfifo "$T/hold"
QIOS=""
for _ in 1 2 3; do qemu-io -f raw "$(nbd_uri "$SOCK")" <"$T/hold" >/dev/null & QIOS="$QIOS $!"; done
exec 8>"$T/hold"
wait_for 10 conns_are 3 || fail "stats nbd_connections $(conns) with 3 clients"
exec 8>&-
# shellcheck disable=SC2086
wait $QIOS || fail "a qemu-io holding a connection failed"
wait_for 5 conns_are 0 || fail "stats nbd_connections $(conns) after the clients left"
ok "stats: nbd_connections counts 3 clients held open, 0 after"

tapctl destroy -p "$PID" -m "$MINOR" || fail "destroy"
gone "$PID" || fail "daemon $PID still running after destroy"
[ -z "$(lsrun)" ] || fail "left in the run directory: $(lsrun)"
[ -z "$(tapctl list)" ] || fail "list not empty after destroy"
ok "destroy: no process, no sockets"

# --- a relative path is made absolute (the daemon's directory is not ours) ---
S=$(cd "$T" && tapctl create --socket-only -a aio:a.raw) || fail "create with a relative path"
line=$(tapctl list)
[ "$(field args "$line")" = "aio:$T/a.raw" ] || fail "relative path listed as '$line'"
PIDS="$PIDS $(field pid "$line")"
tapctl destroy -p "$(field pid "$line")" -m "$(field minor "$line")" || fail "destroy"
ok "relative path: $line"

# --- destroy of a vbd that was attached but never opened ---
P=$(tapctl spawn) || fail "spawn"
PIDS="$PIDS $P"
tapctl attach -p "$P" -m 7 || fail "attach"
tapctl destroy -p "$P" -m 7 || fail "destroy of a closed vbd"
gone "$P" || fail "daemon $P still running"
[ -z "$(lsrun)" ] || fail "left in the run directory: $(lsrun)"
ok "destroy of an attached, unopened vbd"
