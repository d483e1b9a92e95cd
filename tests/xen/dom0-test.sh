#!/bin/bash
# dom0-test.sh: the Xen test proper, run inside the test dom0 (by dom0-init).
# A PV guest gets a renew: disk (an overlay over a raw base) hot-attached
# twice: through Xen's stock block-tap script with our tap-ctl-renew as
# tap-ctl (xvdb), and through our block-renew script (xvdc). On each, the
# guest makes ext4 and writes files of known checksums while dom0 renews
# the disk live three times; then the guest verifies every file, dom0
# detaches the disk and checks that nothing is left (daemon, nbd device,
# xenstore backend) and that the image is sound offline. First, attaches
# that must fail (missing image, not a VHD, no nbd module) must fail clearly
# and leave nothing behind, and a disk detached while a renew runs must be
# stopped once the renew ends. Every result is a line "XEN: PASS|FAIL name".
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/lib/xen-4.17/bin:/usr/sbin:/usr/bin:/sbin:/bin
P=/mnt/payload
D=/var/lib/renew-test
CON=/var/log/xen/console/guest-g1.log
RATE=${RATE:-4}
passed=0 failed=0
up() { cut -d' ' -f1 /proc/uptime; }
say() { echo "XEN: [$(up)s] $*"; }
pass() { passed=$((passed + 1)); echo "XEN: PASS $*"; }
fail() { failed=$((failed + 1)); echo "XEN: FAIL $*"; }
check() { local n=$1; shift; if "$@"; then pass "$n"; else fail "$n"; fi; }
# wait_for SECONDS CMD...: poll once a second until CMD succeeds (wall
# clock: under TCG the polling itself takes time).
wait_for() { local end=$((SECONDS + $1)); shift; until "$@" >/dev/null 2>&1; do [ $SECONDS -lt $end ] || return 1; sleep 1; done; }
con_has() { grep -aq "$1" "$CON" 2>/dev/null; }
# files DEV: how many files the guest has written on DEV so far.
files() { sed -n "s/^GUEST: $1 files \([0-9]*\).*/\1/p" "$CON" | tail -n 1 | grep . || echo 0; }
wait_files() { local want=$(($(files "$1") + $2)) end=$((SECONDS + 600)); while [ "$(files "$1")" -lt $want ] && [ $SECONDS -lt $end ]; do sleep 1; done; }
backend() { echo "/local/domain/0/backend/vbd/$domid/$1"; }
# stat_of PID MINOR KEY: one number (or word) from the disk's stats
stat_of() { tap-ctl-renew stats -p "$1" -m "$2" | tr -d ' \n' | sed -n "s/.*\"$3\":\([0-9a-z]*\).*/\1/p"; }

# nothing_left DEVID: no daemon, no connected nbd device, no xenstore backend.
nothing_left() {
	local what=""
	wait_for 20 sh -c "! pgrep -x tapdisk-renew" || what="$what daemon(s) $(pgrep -x tapdisk-renew | tr '\n' ' ')"
	[ -z "$(tap-ctl-renew list)" ] || what="$what list: $(tap-ctl-renew list)"
	wait_for 20 sh -c "! ls /sys/block/nbd*/pid" || what="$what connected: $(ls /sys/block/nbd*/pid | tr '\n' ' ')"
	wait_for 20 sh -c "! xenstore-read $(backend "$1")/state" || what="$what xenstore $(backend "$1")"
	[ -z "$what" ] && return 0
	echo "XEN:   left behind:$what"
	return 1
}

# diagnose PID MINOR: what the daemon and the nbd devices are doing, when a
# check has failed: the disk's stats and held requests, the daemon's sockets,
# the requests each nbd device has in flight and the kernel's last nbd and
# blkback messages.
diagnose() {
	echo "XEN:   stats: $(tap-ctl-renew stats -p "$1" -m "$2" 2>&1 | tr -d '\n' | cut -c1-1500)"
	echo "XEN:   list: $(tap-ctl-renew list --json -p "$1" -m "$2" 2>&1 | tr -d '\n')"
	for d in /sys/block/nbd*; do
		[ -e "$d/pid" ] && echo "XEN:   ${d##*/}: inflight $(cat "$d/inflight"), daemon $(cat "$d/pid")"
	done
	# the daemon's sockets: bytes the daemon has not read (Recv-Q) or the peer has not (Send-Q)
	ss -xpn 2>/dev/null | grep -a "pid=$1," | sed 's/^/XEN:   socket: /'
	mount -t debugfs none /sys/kernel/debug 2>/dev/null
	for t in /sys/kernel/debug/nbd/nbd*/tasks; do
		[ -e "$t" ] && sed "s|^|XEN:   ${t#/sys/kernel/debug/nbd/}: |" "$t"
	done
	# the threads running the nbd driver's receive work, one per live
	# connection (a rescuer thread is named after the workqueue, knbdN-recv)
	for s in /proc/[0-9]*/stack; do
		grep -q recv_work "$s" 2>/dev/null && echo "XEN:   receiver: $(cat "${s%/stack}/comm") (pid $(basename "${s%/stack}"))"
	done
	dmesg | grep -a -i 'nbd\|blkback\|xen-blkback' | tail -n 8 | sed 's/^/XEN:   dmesg: /'
	tail -n 5 $HLOG 2>/dev/null | sed 's/^/XEN:   hotplug: /'
}

# must_fail NAME VDEV DEVID SPEC PATTERN: xl block-attach SPEC fails, its
# error (or what the script logged to xen-hotplug.log) matches PATTERN, no
# daemon or nbd device is left; libxl keeps the failed device's xenstore
# entry until xl block-detach, which must clear it.
HLOG=/var/log/xen/xen-hotplug.log
must_fail() {
	local out log n
	n=$(cat $HLOG 2>/dev/null | wc -l)
	if out=$(timeout 120 xl block-attach g1 "$4" 2>&1); then
		fail "$1: xl block-attach '$4' succeeded"
		timeout 60 xl block-detach g1 "$2" >/dev/null 2>&1
		return
	fi
	# keep what says why: the script's hotplug-error as libxl prints it
	out=$( (echo "$out" | grep -o 'script: .*' || echo "$out" | head -n 1) | tr '\n' ' ' | cut -c1-300)
	log=$(tail -n +$((n + 1)) $HLOG 2>/dev/null | grep -a 'tap-ctl-renew:\|block-renew:' | tr '\n' ' ' | cut -c1-300)
	timeout 60 xl block-detach g1 "$2" >/dev/null 2>&1 || timeout 60 xl block-detach -f g1 "$2" >/dev/null 2>&1
	if ! echo "$out $log" | grep -q "$5"; then
		fail "$1: the error does not say '$5': $out; hotplug log: $log"
	elif nothing_left "$3"; then
		pass "$1: refused, no daemon or nbd device left, xl block-detach cleared the entry: $out${log:+; hotplug log: $log}"
	else
		fail "$1: refused, but left something behind"
	fi
}

# verify_offline NAME IMAGE: the image is sound once detached: renew-img
# check, e2fsck -fn of its flattened content, the guest's files (read out
# with debugfs) match their checksums.
verify_offline() {
	local img=$2 out=$D/$1.flat
	check "$1: renew-img check $img is clean" renew-img check "$img"
	renew-img convert "$img" "$out" || { fail "$1: renew-img convert $img"; return; }
	check "$1: e2fsck -fn of the detached disk" sh -c "e2fsck -fn '$out' >$D/$1.fsck 2>&1 || { tail -n 5 $D/$1.fsck; false; }"
	rm -rf "$D/$1.files" && mkdir -p "$D/$1.files"
	debugfs -R "dump /MANIFEST $D/$1.files/MANIFEST" "$out" >/dev/null 2>&1
	awk -v d="$D/$1.files" '{ print "dump /" $2 " " d "/" $2 }' "$D/$1.files/MANIFEST" >"$D/$1.cmds" 2>/dev/null
	debugfs -f "$D/$1.cmds" "$out" >/dev/null 2>&1
	check "$1: the guest's $(wc -l <"$D/$1.files/MANIFEST" 2>/dev/null) files match their checksums in the detached image" \
		sh -c "cd '$D/$1.files' && sha256sum --quiet -c MANIFEST"
	rm -rf "$out" "$D/$1.files"
}

# run_disk NAME VDEV DEVID SPEC IMAGE (POLL: the daemon's polling maximum
# expected): attach, renew three times under the
# guest's writes, stop the guest, detach, check.
run_disk() {
	local name=$1 vdev=$2 devid=$3 spec=$4 img=$5 out line pid minor k f0 f1 rate
	say "---- $name: xl block-attach g1 '$spec' ----"
	if ! out=$(timeout 120 xl block-attach g1 "$spec" 2>&1); then
		fail "$name: xl block-attach: $out"
		return
	fi
	line=$(tap-ctl-renew list -t renew -f "$img")
	pid=$(echo "$line" | sed -n 's/.*pid=\([0-9]*\).*/\1/p')
	minor=$(echo "$line" | sed -n 's/.*minor=\([0-9]*\).*/\1/p')
	dev=$(xenstore-read "$(backend $devid)/physical-device-path" 2>/dev/null)
	if [ -n "$pid" ] && [ -n "$minor" ] && [ -e "/sys/block/${dev#/dev/}/pid" ]; then
		pass "$name: attached: $line, blkback on $dev"
	else
		fail "$name: attached, but list says '$line' and the backend device is '$dev'"
	fi
	# tap-ctl create connects the device with one connection (see NBD_DEFAULT_CONNECTIONS)
	local conns queues
	conns=$(stat_of "$pid" "$minor" nbd_connections)
	queues=$(ls -d /sys/block/${dev#/dev/}/mq/* 2>/dev/null | wc -l)
	check "$name: $dev uses one connection: the daemon counts $conns, the device has $queues queues" \
		test "$conns" = 1 -a "$queues" = 1
	local poll
	poll=$(stat_of "$pid" "$minor" loop_poll_max_us)
	check "$name: the daemon polls up to $poll us (want $POLL)" test "$poll" = "$POLL"
	if ! wait_for 600 con_has "GUEST: $vdev writing"; then
		fail "$name: the guest did not start writing on $vdev"; tail -n 20 "$CON"
		timeout 60 xl block-detach g1 "$vdev"
		return
	fi
	pass "$name: the guest made ext4 on $vdev and writes"
	for k in 1 2 3; do
		wait_files "$vdev" 10
		rate=""; [ $k -gt 1 ] && rate="--rate $RATE"
		f0=$(files "$vdev")
		out=$(timeout 900 tap-ctl-renew renew -p "$pid" -m "$minor" --wait $rate 2>&1)
		local rc=$?
		f1=$(files "$vdev")
		local what="$name: renew $k ${rate:+($rate) }under the guest's writes: $out; guest files $f0 -> $f1 during it"
		if [ $rc != 0 ] || ! echo "$out" | grep -q "bytes committed"; then
			fail "$what (exit $rc)"
		elif [ $k -gt 1 ] && [ "$f1" -le "$f0" ]; then
			fail "$what: the guest wrote nothing during the renew"
		else
			pass "$what"
		fi
	done
	# 25 files: the guest rewrites its 8 MiB file at least twice, the
	# second time into full blocks of the fresh overlay
	wait_files "$vdev" 25
	say "stats: $(tap-ctl-renew stats -p "$pid" -m "$minor" | tr -d ' \n' | cut -c1-300)"
	wb=$(stat_of "$pid" "$minor" write_behind_writes)
	check "$name: guest rewrites acknowledged behind their landing: $wb" [ "${wb:-0}" -gt 0 ]
	# the guest reads "stop" on its console (the pty xenconsoled made for it)
	echo stop >"$(xenstore-read /local/domain/$domid/console/tty)"
	if wait_for 900 con_has "GUEST-VERIFY-.* $vdev\|GUEST-VERIFY-FAIL $vdev"; then
		out=$(grep -a "GUEST-VERIFY-.*$vdev" "$CON" | head -n 1 | tr -d '\r')
		case "$out" in GUEST-VERIFY-OK*) pass "$name: guest verified every file with cold caches: $out" ;;
		*) fail "$name: guest verify: $out" ;; esac
	else
		fail "$name: the guest did not verify $vdev"; tail -n 20 "$CON"
	fi
	grep -a "GUEST-FAIL: $vdev" "$CON" | tr -d '\r' | while read -r l; do echo "XEN:   $l"; done
	check "$name: no write failed in the guest" sh -c "! grep -aq 'GUEST-FAIL: $vdev' $CON"
	if out=$(timeout 120 xl block-detach g1 "$vdev" 2>&1); then
		check "$name: xl block-detach leaves no daemon, no nbd device, no xenstore backend" nothing_left "$devid"
	else
		fail "$name: xl block-detach: $out"
	fi
	wait_for 120 con_has "GUEST: $vdev detached" || fail "$name: the guest still sees $vdev"
	verify_offline "$name" "$img"
}

say "xl info: $(xl info | sed -n 's/^xen_version *: //p') on $(uname -r)"
check "xl list shows Domain-0" sh -c "xl list | grep -q '^Domain-0'"
check "tap-ctl on PATH is make install's link to tap-ctl-renew: $(command -v tap-ctl) -> $(readlink -f "$(command -v tap-ctl)")" \
	sh -c '[ "$(readlink -f "$(command -v tap-ctl)")" = "$(readlink -f "$(command -v tap-ctl-renew)")" ]'
check "tap-ctl check" tap-ctl check
check "block-renew installed in /etc/xen/scripts" test -x /etc/xen/scripts/block-renew
modprobe xen-blkback

mkdir -p $D
cat >$D/g1.cfg <<EOF
name = "g1"
type = "pv"
kernel = "$P/domu-vmlinuz"
ramdisk = "$P/domu-initrd.gz"
extra = "console=hvc0 loglevel=4 renew.disks=xvdb,xvdc renew.hotplug=1"
memory = 256
vcpus = 1
on_poweroff = "destroy"
on_crash = "destroy"
EOF
t=$(up)
xl create $D/g1.cfg >/dev/null || { fail "xl create g1"; echo "XEN: $passed passed, $failed failed"; exit 1; }
domid=$(xl domid g1)
if wait_for 600 con_has "GUEST: booted"; then
	pass "PV guest g1 (domid $domid) booted in $(awk -v a="$t" -v b="$(up)" 'BEGIN { printf "%.0f", b - a }')s"
else
	fail "PV guest g1 did not boot"; cat "$CON"; xl dmesg | tail -n 20
	echo "XEN: $passed passed, $failed failed"; exit 1
fi

# ---- attaches that must fail, and leave nothing behind ----
truncate -s 64M $D/plain.raw
must_fail "block-renew, missing image" xvdd 51760 "vdev=xvdd,access=rw,script=block-renew,target=$D/missing.vhd" "no such image"
must_fail "block-renew, not a VHD" xvdd 51760 "vdev=xvdd,access=rw,script=block-renew,target=$D/plain.raw" "not a VHD"
must_fail "block-tap, missing image" xvdd 51760 "vdev=xvdd,access=rw,script=block-tap,target=renew:$D/missing.vhd" "missing.vhd"
renew-img snapshot $D/plain.raw $D/nonbd.vhd >/dev/null
# no nbd module: hide it from modprobe (nothing has loaded it yet)
ko=$(modinfo -n nbd 2>/dev/null)
if [ -n "$ko" ] && [ ! -e /sys/module/nbd ] && mount --bind /dev/null "$ko"; then
	must_fail "block-renew, no nbd module" xvdd 51760 "vdev=xvdd,access=rw,script=block-renew,target=$D/nonbd.vhd" "nbd kernel module not available"
	must_fail "block-tap, no nbd module" xvdd 51760 "vdev=xvdd,access=rw,script=block-tap,target=renew:$D/nonbd.vhd" "nbd kernel module not available"
	umount "$ko"
else
	fail "cannot hide the nbd module for the no-nbd case (ko=$ko)"
fi
modprobe nbd nbds_max=16
renew-img snapshot $D/plain.raw $D/bad.vhd >/dev/null
echo "RENEW_CONNECTIONS=two" >/etc/default/renew
must_fail "block-renew, a bad /etc/default/renew" xvdd 51760 "vdev=xvdd,access=rw,script=block-renew,target=$D/bad.vhd" "RENEW_CONNECTIONS=two is not a number"
rm -f /etc/default/renew $D/nonbd.vhd $D/bad.vhd $D/plain.raw

# gone_after_renew: wait (up to 5 min) for the daemon to go, then nothing_left.
gone_after_renew() { wait_for 300 sh -c "! pgrep -x tapdisk-renew"; nothing_left 51760; }

# ---- xl block-detach while a renew runs (block-renew): the detach returns,
# the disk is destroyed once the renew ends, the image is intact ----
say "---- detach during a renew ----"
truncate -s 128M $D/c-base.raw
renew-img snapshot $D/c-base.raw $D/c.vhd >/dev/null
head -c 48M /dev/urandom >$D/c.data
renew-img write $D/c.vhd 1048576 <$D/c.data
if timeout 120 xl block-attach g1 "vdev=xvdd,access=rw,script=block-renew,target=$D/c.vhd" >/dev/null 2>&1; then
	line=$(tap-ctl-renew list -t renew -f $D/c.vhd)
	pid=$(echo "$line" | sed -n 's/.*pid=\([0-9]*\).*/\1/p') minor=$(echo "$line" | sed -n 's/.*minor=\([0-9]*\).*/\1/p')
	tap-ctl-renew renew -p "$pid" -m "$minor" --rate 1 >/dev/null || fail "detach during a renew: renew did not start"
	t=$(up)
	if out=$(timeout 120 xl block-detach g1 xvdd 2>&1); then
		pass "detach during a renew: xl block-detach returned after $(awk -v a="$t" -v b="$(up)" 'BEGIN { printf "%.0f", b - a }')s while the renew ran"
	else
		fail "detach during a renew: xl block-detach: $out"
		diagnose "$pid" "$minor"
		timeout 60 xl block-detach -f g1 xvdd >/dev/null 2>&1
	fi
	check "detach during a renew: once it ended, no daemon, no nbd device, no xenstore backend" gone_after_renew
	check "detach during a renew: the image is clean and holds the data" \
		sh -c "renew-img check $D/c.vhd >/dev/null && renew-img convert $D/c.vhd - | cmp -s -i 1048576:0 -n 50331648 - $D/c.data"
else
	fail "detach during a renew: xl block-attach"
fi
rm -f $D/c.vhd $D/c-base.raw $D/c.data

# ---- the two working spellings ----
truncate -s 256M $D/a-base.raw $D/b-base.raw
renew-img snapshot $D/a-base.raw $D/a.vhd >/dev/null
renew-img snapshot $D/b-base.raw $D/b.vhd >/dev/null
POLL=512 run_disk "block-tap" xvdb 51728 "vdev=xvdb,access=rw,script=block-tap,target=renew:$D/a.vhd" $D/a.vhd
# block-renew reads the admin's settings for the daemons it starts
echo "RENEW_POLL_MAX_US=256" >/etc/default/renew
POLL=256 run_disk "block-renew" xvdc 51744 "vdev=xvdc,access=rw,script=block-renew,target=$D/b.vhd" $D/b.vhd
rm -f /etc/default/renew

if wait_for 300 sh -c "! xl domid g1"; then
	pass "guest g1 powered off"
else
	fail "guest g1 still running"; xl destroy g1
fi
echo "XEN: guest console:"
tr -d '\r' <"$CON" | grep -v "files [0-9]" | sed 's/^/XEN:   | /'
echo "XEN: $passed passed, $failed failed"
[ $failed = 0 ]
