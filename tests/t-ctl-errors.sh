#!/bin/bash
# Bad input: every mistake ends with a clear message and a non-zero exit
# (2 for usage errors), and leaves no daemon or socket behind.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/ctl-lib.sh"

mkraw "$T/a.raw" 0xaa $((1 << 20))

# expect_msg DESCRIPTION PATTERN CMD...: exit 1 with "tap-ctl-renew: VERB: ..." matching.
expect_msg() {
	local d=$1 pat=$2
	shift 2
	run_rc 1 "$d" "$@"
	grep -q "^tap-ctl-renew: [a-z-]*: .*$pat" "$T/out" || { cat "$T/out"; fail "$d: message lacks '$pat'"; }
	ok "$d: $(head -n1 "$T/out")"
}

expect_usage "no verb" "missing verb" tapctl
expect_usage "unknown verb" "unknown verb 'frobnicate'" tapctl frobnicate
expect_usage "bad flag" "unknown option '-x'" tapctl list -x
expect_usage "bad long flag" "unknown option '--bogus'" tapctl list --bogus
expect_usage "flag of another verb" "option -a is not valid for attach" tapctl attach -p 1 -m 0 -a aio:/x
expect_usage "missing -p" "missing -p" tapctl attach -m 0
expect_usage "missing -m" "missing -m" tapctl open -p 1 -a "aio:$T/a.raw"
expect_usage "missing -a" "missing -a" tapctl create
expect_usage "-p without a value" "needs a value" tapctl attach -m 0 -p
expect_usage "non-numeric pid" "bad -p 'abc'" tapctl attach -p abc -m 0
expect_usage "no connections" "bad --connections '0'" tapctl create -a "aio:$T/a.raw" --connections 0
expect_usage "too many connections" "bad --connections '17'" tapctl create -a "aio:$T/a.raw" --connections 17
expect_usage "connections with --socket-only" "not with --socket-only" tapctl create -a "aio:$T/a.raw" --socket-only --connections 2
expect_usage "connections for another verb" "option --connections is not valid for open" tapctl open -p 1 -m 0 -a "aio:$T/a.raw" --connections 2
expect_usage "negative minor" "bad -m '-1'" tapctl attach -p 1 -m -1
expect_usage "-a without a colon" "expected TYPE:PATH" tapctl create -a "$T/a.raw"
expect_usage "stray argument" "unexpected argument 'extra'" tapctl list extra
expect_usage "destroy without target" "missing -p" tapctl destroy
tapctl --help | grep -q "^usage:" || fail "--help"

# a pid with no daemon
sh -c 'exit 0' & dead=$!; wait $dead
expect_msg "nonexistent pid" "no daemon with pid $dead" tapctl attach -p "$dead" -m 0
expect_msg "stats of nonexistent pid" "no daemon with pid $dead" tapctl stats -p "$dead" -m 0
expect_msg "destroy of nonexistent pid" "no daemon with pid $dead" tapctl destroy -p "$dead" -m 0

P=$(tapctl spawn) || fail "spawn"
PIDS="$PIDS $P"
tapctl attach -p "$P" -m 0 || fail "attach"
expect_msg "attach twice" "minor 0 is already attached" tapctl attach -p "$P" -m 0
expect_msg "nonexistent minor" "minor 9 is not attached to daemon $P" tapctl open -p "$P" -m 9 -a "aio:$T/a.raw"
expect_msg "detach of nonexistent minor" "minor 9 is not attached" tapctl detach -p "$P" -m 9
expect_msg "destroy of nonexistent minor" "minor 9 is not attached" tapctl destroy -p "$P" -m 9
expect_msg "open of a missing file" "$T/missing.raw.*No such file" tapctl open -p "$P" -m 0 -a "aio:$T/missing.raw"
expect_msg "open of an unknown type" "unknown disk type.*foo:/x" tapctl open -p "$P" -m 0 -a foo:/x
expect_msg "close of a closed vbd" "minor 0 has no image open" tapctl close -p "$P" -m 0
expect_msg "pause of a closed vbd" "minor 0 has no image open" tapctl pause -p "$P" -m 0
tapctl open -p "$P" -m 0 -a "aio:$T/a.raw" >/dev/null || fail "open after failures"
expect_msg "open twice" "minor 0 already has aio:$T/a.raw open" tapctl open -p "$P" -m 0 -a "aio:$T/a.raw"
expect_msg "detach of an open vbd" "minor 0 has aio:$T/a.raw open; close it first" tapctl detach -p "$P" -m 0
expect_msg "unpause -a of an unknown type" "not paused" tapctl unpause -p "$P" -m 0 -a foo:/x
tapctl destroy -p "$P" -m 0 || fail "destroy"
gone "$P" || fail "daemon $P left running"

# create failures undo everything: no daemon, no socket
expect_msg "create of a missing file" "$T/missing.raw" tapctl create --socket-only -a "aio:$T/missing.raw"
expect_msg "create of an unknown type" "unknown disk type" tapctl create --socket-only -a "foo:$T/a.raw"
[ -z "$(lsrun)" ] || fail "failed creates left: $(lsrun)"
[ -z "$(tapctl list)" ] || fail "failed creates left daemons: $(tapctl list)"
ok "failed creates leave nothing behind"
