#!/bin/bash
# list: two disks in two daemons get distinct minors; the tap-ctl line form
# and its -p -m -t -f filters (what Xen's block-tap calls); --json for
# programs; sockets of dead daemons are ignored and removed.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/ctl-lib.sh"

mkraw "$T/a.raw" 0xaa $((1 << 20))
mkraw "$T/b.raw" 0xbb $((2 << 20))

start_disk "aio:$T/a.raw"; PA=$PID MA=$MINOR SA=$SOCK
start_disk "aio:$T/b.raw"; PB=$PID MB=$MINOR SB=$SOCK
[ "$PA" != "$PB" ] || fail "both disks in one daemon"
[ "$MA" = 0 ] && [ "$MB" = 1 ] || fail "minors $MA and $MB, expected 0 and 1"
qio "$SA" "read -P 0xaa 0 64k" >/dev/null || fail "disk a reads wrong"
qio "$SB" "read -P 0xbb 0 64k" >/dev/null || fail "disk b reads wrong"
ok "two daemons: pid $PA minor $MA, pid $PB minor $MB"

tapctl list >"$T/all"
cat "$T/all"
[ "$(wc -l <"$T/all")" = 2 ] || fail "list: expected 2 lines"
grep -qx "pid=$PA minor=0 state=0 args=aio:$T/a.raw" "$T/all" || fail "line for a"
grep -qx "pid=$PB minor=1 state=0 args=aio:$T/b.raw" "$T/all" || fail "line for b"

# Xen's block-tap: tap-ctl list -t TYPE -f FILE, then pid= and minor=
out=$(tapctl list -t aio -f "$T/b.raw")
[ "$(field pid "$out")" = "$PB" ] && [ "$(field minor "$out")" = 1 ] || fail "-t -f: '$out'"
[ -z "$(tapctl list -t renew -f "$T/b.raw")" ] || fail "-t renew matched an aio disk"
[ -z "$(tapctl list -f "$T/nonexistent.raw")" ] || fail "-f matched a missing file"
ln -s "$T/a.raw" "$T/a-link.raw"
[ "$(field pid "$(tapctl list -f "$T/a-link.raw")")" = "$PA" ] || fail "-f through a symlink"
[ "$(tapctl list -m 1)" = "pid=$PB minor=1 state=0 args=aio:$T/b.raw" ] || fail "-m 1"
[ "$(tapctl list -p "$PA")" = "pid=$PA minor=0 state=0 args=aio:$T/a.raw" ] || fail "-p"
[ -z "$(tapctl list -p "$PA" -m 1)" ] || fail "-p PA -m 1 should be empty"
ok "filters -t -f -m -p"

tapctl list --json >"$T/l.json" || fail "list --json"
cat "$T/l.json"
[ "$(json_get "$T/l.json" 'len(j)')" = 2 ] || fail "--json: 2 entries"
[ "$(json_get "$T/l.json" '[e["minor"] for e in j]')" = "[0, 1]" ] || fail "--json minors"
[ "$(json_get "$T/l.json" 'j[1]["path"]')" = "$T/b.raw" ] || fail "--json path"
[ "$(json_get "$T/l.json" 'j[1]["type"]')" = aio ] || fail "--json type"
[ "$(json_get "$T/l.json" 'j[1]["state"]')" = running ] || fail "--json state"
[ "$(json_get "$T/l.json" 'j[1]["nbd"]')" = "$SB" ] || fail "--json nbd"
[ "$(json_get "$T/l.json" 'j[0]["pid"]')" = "$PA" ] || fail "--json pid"
tapctl list --json -t aio -f "$T/a.raw" >"$T/f.json" || fail "list --json -t -f"
[ "$(json_get "$T/f.json" '[e["pid"] for e in j]')" = "[$PA]" ] || fail "--json with filters"
tapctl list --json -t renew >"$T/e.json" || fail "list --json (empty)"
[ "$(json_get "$T/e.json" 'j')" = "[]" ] || fail "empty --json list"
ok "--json parses"

# a paused disk shows tap-ctl's paused bit
tapctl pause -p "$PA" -m 0 || fail "pause"
[ "$(field state "$(tapctl list -m 0)")" = 0x20 ] || fail "paused state: $(tapctl list -m 0)"
tapctl unpause -p "$PA" -m 0 || fail "unpause"
[ "$(field state "$(tapctl list -m 0)")" = 0 ] || fail "state after unpause"

# the next create takes the lowest free minor again
tapctl destroy -p "$PA" -m 0 || fail "destroy a"
start_disk "aio:$T/a.raw"
[ "$MINOR" = 0 ] || fail "minor 0 not reused (got $MINOR)"
ok "lowest free minor reused"

# a dead daemon's sockets: ignored and removed
sh -c 'exit 0' & dead=$!; wait $dead
python3 -c 'import socket, sys
for p in sys.argv[1:]:
    s = socket.socket(socket.AF_UNIX); s.bind(p)' "$RENEW_RUNDIR/ctl$dead" "$RENEW_RUNDIR/nbd$dead.5"
[ -S "$RENEW_RUNDIR/ctl$dead" ] || fail "could not make a stale socket"
[ "$(tapctl list | wc -l)" = 2 ] || fail "stale daemon listed: $(tapctl list)"
[ ! -e "$RENEW_RUNDIR/ctl$dead" ] && [ ! -e "$RENEW_RUNDIR/nbd$dead.5" ] || fail "stale sockets not removed"
ok "stale sockets of dead pid $dead removed"

tapctl destroy -p "$PID" -m "$MINOR" || fail "destroy"
tapctl destroy -p "$PB" -m "$MB" || fail "destroy b"
[ -z "$(lsrun)" ] || fail "left in the run directory: $(lsrun)"

# four creates at once: four daemons, minors 0..3, no two alike
for i in 1 2 3 4; do
	mkraw "$T/p$i.raw" $((0x10 + i)) $((1 << 20))
	tapctl create --socket-only -a "aio:$T/p$i.raw" >"$T/c$i.out" 2>&1 &
done
wait || fail "a parallel create failed: $(cat "$T"/c*.out)"
tapctl list >"$T/par"
cat "$T/par"
[ "$(sed -n 's/.*minor=\([0-9]*\).*/\1/p' "$T/par" | sort -n | tr '\n' ' ')" = "0 1 2 3 " ] || fail "parallel minors"
[ "$(sed -n 's/^pid=\([0-9]*\).*/\1/p' "$T/par" | sort -u | wc -l)" = 4 ] || fail "parallel pids"
for i in 1 2 3 4; do
	line=$(tapctl list -f "$T/p$i.raw")
	PIDS="$PIDS $(field pid "$line")"
	qio "$(cat "$T/c$i.out")" "read -P $((0x10 + i)) 0 64k" >/dev/null || fail "parallel disk $i reads wrong"
	tapctl destroy -p "$(field pid "$line")" -m "$(field minor "$line")" || fail "destroy parallel $i"
done
[ -z "$(lsrun)" ] || fail "left in the run directory: $(lsrun)"
ok "parallel creates"
