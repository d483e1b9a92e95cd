# Shell functions shared by the control tests (tests/t-ctl-*.sh); source after tests/lib.sh.

# mkraw FILE BYTE SIZE: a raw disk of SIZE bytes, every byte BYTE (e.g. 0xaa).
mkraw() {
	python3 -c 'import sys; open(sys.argv[1], "wb").write(bytes([int(sys.argv[2], 0)]) * int(sys.argv[3]))' "$1" "$2" "$3"
}
# gone PID: the process has ended (or is a zombie nobody reaped yet): its
# main thread is a zombie and no other thread is left.
gone() {
	[ ! -e "/proc/$1" ] && return 0
	awk '{ sub(/.*\) /, ""); exit !($1 == "Z" || $1 == "X") }' "/proc/$1/stat" 2>/dev/null &&
		[ "$(ls "/proc/$1/task" 2>/dev/null | wc -l)" -le 1 ]
}
# lsrun: the run directory's entries, one a line (empty when clean).
lsrun() { ls -A "$RENEW_RUNDIR" | grep -v '^\.create\.lock$' || true; }
# field NAME LINE: the value of NAME=... in a tap-ctl list line.
field() { echo "$2" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
# expect_usage DESCRIPTION PATTERN CMD...: a usage error: exit 2, a message
# matching PATTERN and the usage text.
expect_usage() {
	local d=$1 pat=$2
	shift 2
	run_rc 2 "$d" "$@"
	grep -q -- "$pat" "$T/out" || { cat "$T/out"; fail "$d: message lacks '$pat'"; }
	grep -q "^usage:" "$T/out" || fail "$d: no usage text"
	ok "$d: $(head -n1 "$T/out")"
}
