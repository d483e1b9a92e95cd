#!/bin/bash
# pause holds I/O: a read issued while paused is held by the daemon (seen in
# list --json "held") and completes only after unpause; unpause -a reopens
# another image and the held read gets that image's bytes.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/ctl-lib.sh"

mkraw "$T/a.raw" 0xaa $((1 << 20))
mkraw "$T/b.raw" 0xbb $((1 << 20))
start_disk "aio:$T/a.raw"

# held N: the daemon holds at least N requests of our disk.
held() {
	tapctl list --json -p "$PID" -m "$MINOR" >"$T/h.json" &&
		[ "$(json_get "$T/h.json" 'j[0]["held"]')" -ge "$1" ]
}

tapctl pause -p "$PID" -m "$MINOR" || fail "pause"
tapctl pause -p "$PID" -m "$MINOR" || fail "pause of a paused disk"
[ "$(field state "$(tapctl list -m "$MINOR")")" = 0x20 ] || fail "not paused: $(tapctl list)"
qio "$SOCK" "read -P 0xaa 0 64k" >"$T/r1.out" 2>&1 &
r1=$!
wait_for 20 held 1 || fail "the read was not held"
kill -0 $r1 2>/dev/null || fail "the read completed while paused"
ok "read held while paused"
tapctl unpause -p "$PID" -m "$MINOR" || fail "unpause"
wait $r1 || { cat "$T/r1.out"; fail "the held read failed after unpause"; }
held 0 && [ "$(json_get "$T/h.json" 'j[0]["held"]')" = 0 ] || fail "requests still held"
ok "held read completed after unpause"

# unpause -a: a failed reopen keeps the disk paused on its image
tapctl pause -p "$PID" -m "$MINOR" || fail "pause 2"
expect_fail "unpause -a of a missing file" tapctl unpause -p "$PID" -m "$MINOR" -a "aio:$T/missing.raw"
grep -q "missing.raw" "$T/out" || fail "the error does not name the file"
[ "$(field state "$(tapctl list -m "$MINOR")")" = 0x20 ] || fail "not paused after a failed reopen"
[ "$(field args "$(tapctl list -m "$MINOR")")" = "aio:$T/a.raw" ] || fail "image changed after a failed reopen"

qio "$SOCK" "read -P 0xbb 0 64k" >"$T/r2.out" 2>&1 &
r2=$!
wait_for 20 held 1 || fail "the second read was not held"
tapctl unpause -p "$PID" -m "$MINOR" -a "aio:$T/b.raw" || fail "unpause -a"
wait $r2 || { cat "$T/r2.out"; fail "the held read did not see b's bytes"; }
[ "$(field args "$(tapctl list -m "$MINOR")")" = "aio:$T/b.raw" ] || fail "list does not show b"
qio "$SOCK" "read -P 0xbb 512k 64k" >/dev/null || fail "a new client does not see b"
ok "unpause -a: the held read and new clients see the new image"

# wrong states
expect_fail "unpause of a running disk" tapctl unpause -p "$PID" -m "$MINOR"
grep -q "not paused" "$T/out" || fail "unpause message"
tapctl destroy -p "$PID" -m "$MINOR" || fail "destroy"
[ -z "$(lsrun)" ] || fail "left in the run directory: $(lsrun)"
