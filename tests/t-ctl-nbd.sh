#!/bin/bash
# check, and create without --socket-only: a kernel /dev/nbdN connected to
# the daemon's socket (one connection, or --connections N) reads the
# disk's bytes and destroy disconnects it; or,
# where the nbd module cannot be loaded, create fails naming the cause and
# undoes every step (that part is then skipped, the rest still runs).
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/ctl-lib.sh"

mkraw "$T/a.raw" 0xaa $((4 << 20))

tapctl check >"$T/check.out" 2>"$T/check.err" || { cat "$T/check.err"; fail "check"; }
[ "$(cat "$T/check.out")" = ok ] || fail "check printed '$(cat "$T/check.out")'"
ok "check: ok $(tr '\n' ' ' <"$T/check.err")"
RENEW_RUNDIR=/proc/nonexistent/run tapctl check >"$T/out" 2>&1 && fail "check with an unusable run directory passed"
grep -q "/proc/nonexistent/run" "$T/out" || fail "check does not name the run directory"
ok "check with an unusable run directory: $(cat "$T/out")"

if DEV=$(tapctl create -a "aio:$T/a.raw" 2>"$T/create.err"); then
	line=$(tapctl list -f "$T/a.raw")
	PID=$(field pid "$line") MINOR=$(field minor "$line")
	PIDS="$PIDS $PID"
	[[ $DEV =~ ^/dev/nbd[0-9]+$ ]] || fail "create printed '$DEV'"
	wait_for 10 test -e "/sys/block/${DEV#/dev/}/pid" || fail "$DEV not connected"
	cmp <(head -c 1048576 "$DEV") <(head -c 1048576 "$T/a.raw") || fail "$DEV reads wrong bytes"
	tapctl list --json -p "$PID" >"$T/l.json"
	[ "$(json_get "$T/l.json" 'j[0]["device"]')" = "$DEV" ] || fail "list does not record $DEV"
	ok "create: $DEV reads the disk"
	tapctl stats -p "$PID" -m "$MINOR" >"$T/stats.json" || fail "stats"
	n=$(json_get "$T/stats.json" 'j["nbd_connections"]')
	[ "$n" = 1 ] || fail "$DEV: the daemon counts $n connections, not 1"
	ok "create: $DEV uses one connection"
	tapctl destroy -p "$PID" -m "$MINOR" || fail "destroy"
	[ ! -e "/sys/block/${DEV#/dev/}/pid" ] || fail "$DEV still connected after destroy"
	gone "$PID" || fail "daemon left running"
	# and destroy -d DEV
	DEV=$(tapctl create -a "aio:$T/a.raw" --connections 3) || fail "second create"
	line=$(tapctl list -f "$T/a.raw")
	PIDS="$PIDS $(field pid "$line")"
	tapctl stats -p "$(field pid "$line")" -m "$(field minor "$line")" >"$T/stats.json" || fail "stats"
	[ "$(json_get "$T/stats.json" 'j["nbd_connections"]')" = 3 ] || fail "create --connections 3: not 3 connections"
	cmp <(head -c 1048576 "$DEV") <(head -c 1048576 "$T/a.raw") || fail "$DEV reads wrong bytes on 3 connections"
	ok "create --connections 3: $DEV reads the disk over 3 connections"
	tapctl destroy -d "$DEV" || fail "destroy -d $DEV"
	[ -z "$(tapctl list)" ] || fail "destroy -d left: $(tapctl list)"
	ok "destroy -d $DEV"
else
	cat "$T/create.err"
	grep -q "^tap-ctl-renew: create: .*nbd" "$T/create.err" || fail "create failed without naming the nbd cause"
	[ -z "$(tapctl list)" ] || fail "the failed create left a daemon: $(tapctl list)"
	[ -z "$(lsrun)" ] || fail "the failed create left: $(lsrun)"
	ok "create without nbd: failed cleanly"
	echo "skip: kernel nbd device part: $(head -n1 "$T/create.err")"
fi
[ -z "$(lsrun)" ] || fail "left in the run directory: $(lsrun)"
