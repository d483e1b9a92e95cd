#!/bin/bash
# Image locks: an image another process holds is refused at once, naming
# the holder, and nothing changes; a holder on its way out (its main thread
# gone, another thread still inside a system call) is waited for, so a
# disk restarted right after its daemon was killed opens; tap-ctl-renew
# does not call such a daemon gone.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/ctl-lib.sh"

randfile "$T/base.raw" 16
img snapshot "$T/base.raw" "$T/vm.vhd" >/dev/null || fail snapshot
python3 -c 'import sys; sys.stdout.buffer.write(b"\x07" * 1048576)' | img write "$T/vm.vhd" 0 >/dev/null ||
	fail "write into the overlay"

# hold FILE MODE SECONDS: a process locking FILE exclusively for SECONDS;
# MODE exiting: its main thread exits at once and another thread holds on.
# Sets HOLDER once the lock is taken.
hold() {
	rm -f "$T/held"
	python3 - "$1" "$T/held" "$2" "$3" <<'P' &
import ctypes, fcntl, sys, threading, time
f = open(sys.argv[1], "rb")
fcntl.flock(f, fcntl.LOCK_EX)
open(sys.argv[2], "w").close()
if sys.argv[3] == "exiting":
    threading.Thread(target=time.sleep, args=(float(sys.argv[4]),)).start()
    ctypes.CDLL(None).pthread_exit(None)
time.sleep(float(sys.argv[4]))
P
	HOLDER=$!
	PIDS="$PIDS $HOLDER"
	wait_for 10 test -e "$T/held" || fail "the holder never took its lock"
}

# a running holder: refused at once, named, the image untouched
sum=$(sha "$T/vm.vhd")
hold "$T/vm.vhd" running 60
start=$(date +%s)
run_rc 1 "open of a held image" tapctl create --socket-only -a "renew:$T/vm.vhd"
grep -q "vm.vhd: in use by pid $HOLDER (python3) (exclusive lock refused)" "$T/out" ||
	{ cat "$T/out"; fail "the refusal does not name the holder"; }
[ $(( $(date +%s) - start )) -lt 5 ] || fail "a running holder was waited for"
[ -z "$(lsrun)" ] || fail "a refused create left $(lsrun)"
[ "$(sha "$T/vm.vhd")" = "$sum" ] || fail "a refused open changed the image"
kill "$HOLDER"; wait "$HOLDER" 2>/dev/null
ok "held by a running process: $(head -n1 "$T/out")"

# a holder on its way out: waited for, then the disk opens
hold "$T/vm.vhd" exiting 1.5
wait_for 10 sh -c "awk '{ exit \$3 != \"Z\" }' /proc/$HOLDER/stat" || fail "the holder's main thread did not exit"
gone "$HOLDER" && fail "gone calls a process with a live thread gone"
start_disk "renew:$T/vm.vhd"
gone "$HOLDER" || fail "the disk opened while the lock was still held"
qio "$SOCK" "read -P 7 0 1M" >/dev/null || fail "the disk opened after the wait reads wrong"
tapctl destroy -p "$PID" -m "$MINOR" || fail destroy
ok "held by a process on its way out: the open waited for it"

# kill -9 right after a renew, the disk restarted at once: the daemon's
# worker may still be closing the old overlay, its lock with it; list
# passes over the dying daemon at once
for i in 1 2 3 4 5; do
	start_disk "renew:$T/vm.vhd"
	fio --name=fill --ioengine=nbd --uri="$(nbd_uri "$SOCK")" --rw=randwrite --bs=64k --size=16M \
		--io_size=8M --iodepth=8 --output=/dev/null || fail "fio fill $i"
	tapctl renew -p "$PID" -m "$MINOR" --wait >/dev/null || fail "renew $i"
	kill -9 "$PID"
	# restarted as soon as its main thread is dead, as a supervisor would
	wait_for 10 sh -c "[ ! -e /proc/$PID ] || awk '{ exit \$3 != \"Z\" }' /proc/$PID/stat" ||
		fail "daemon $PID still running after kill -9"
	tapctl list >"$T/list" 2>&1 || { cat "$T/list"; fail "list after kill -9"; }
	grep -q "pid=$PID " "$T/list" && fail "list shows the killed daemon $PID"
done
start_disk "renew:$T/vm.vhd"
tapctl destroy -p "$PID" -m "$MINOR" || fail destroy
img check "$T/vm.vhd" >/dev/null || fail "check after the kills"
ok "killed right after a renew, five times: each restart opened the disk"
