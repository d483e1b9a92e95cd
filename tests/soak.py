#!/usr/bin/env python3
"""Randomized soak of a live disk: rounds of concurrent writes (qemu-io aio)
while, at a random moment, the disk is renewed, paused, killed -9 (during a
renew or not), stopped with SIGTERM, or stopped and renewed offline with
renew-img, all with a history; other rounds end with a renew while no
write is in flight. After every round:
- every acknowledged write reads back (nbdcopy of the whole disk);
- each sector of a write that was in flight at a kill reads as before it
  or as written, nothing else;
- a killed daemon's image checks clean, and a disk restarted as soon as
  the daemon's main thread is dead opens;
- no sanitizer report.
At the end, generations a quiet or offline renew recorded restore to
exactly the disk as it was: SOAK_RESTORES of them (default 24, picked by
the seed, the last always in it; "all", or 0 for none). SOAK_KEEP=1 keeps
each such disk as DIR/want.N to compare a bad restore with.

usage: soak.py DIR SEED SECONDS   (BIN: the programs, default ../bin)
The same seed gives the same rounds; only their timing varies."""
import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.environ.get("BIN", os.path.join(HERE, "..", "bin"))
D, SEED, SECS = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
SIZE = 64 << 20  # 32 blocks: renews, kills and restarts come quickly
SEC = 512
KINDS = ["none", "renew", "renew", "pause", "kill", "renew-kill", "term", "offline", "quiet-renew"]
rnd = random.Random(SEED)
os.makedirs(D + "/run", exist_ok=True)
os.environ["RENEW_RUNDIR"] = D + "/run"
os.environ["ASAN_OPTIONS"] = "log_path=%s/asan" % D
VHD = D + "/vm.vhd"
HIST = D + "/history"
LOG = open(D + "/tap-ctl.log", "ab")
state = {"round": 0, "kind": "start"}


def die(msg):
    print("FAIL: seed %d round %d (%s): %s" % (SEED, state["round"], state["kind"], msg), flush=True)
    sys.exit(1)


def run(*args, ok=True):
    p = subprocess.run(list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       stdin=subprocess.DEVNULL, timeout=300)
    if ok and p.returncode != 0:
        die("%s: exit %d: %s" % (" ".join(args), p.returncode,
                                 p.stdout.decode(errors="replace")[-2000:]))
    return p


def main_thread_dead(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] in "ZX"
    except OSError:
        return True


def holders():
    """The locks on the disk's files and the daemons still there, for a failure's message."""
    ino = {"%02x:%02x:%d " % (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino): f
           for f in (VHD, D + "/base.raw") if os.path.exists(f) for st in [os.stat(f)]}
    lines = ["lock: %s on %s" % (line.strip(), f) for line in open("/proc/locks")
             for k, f in ino.items() if k in line]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if open("/proc/%s/comm" % pid).read().strip() == "tapdisk-renew":
                tasks = os.listdir("/proc/%s/task" % pid)
                lines.append("daemon %s: threads %s" % (pid, " ".join(
                    t + ":" + open("/proc/%s/task/%s/stat" % (pid, t)).read().rsplit(")", 1)[1].split()[0]
                    for t in tasks)))
        except OSError:
            pass
    return "\n".join(lines)


class Disk:
    """The disk, served by a daemon tap-ctl-renew spawned."""

    def start(self):
        p = subprocess.run([BIN + "/tap-ctl-renew", "create", "--socket-only", "-a", "renew:" + VHD,
                            "--history", HIST],
                           stdout=subprocess.PIPE, stderr=LOG, stdin=subprocess.DEVNULL, timeout=300)
        if p.returncode != 0:
            die("create: exit %d (see %s/tap-ctl.log)\n%s" % (p.returncode, D, holders()))
        self.sock = p.stdout.decode().strip().splitlines()[-1]
        out = run(BIN + "/tap-ctl-renew", "list").stdout.decode()
        m = re.search(r"pid=(\d+) minor=(\d+) state=\S+ args=renew:" + re.escape(VHD) + "$", out, re.M)
        if not m:
            die("list does not show the disk: " + out)
        self.pid, self.minor = int(m.group(1)), int(m.group(2))

    def ctl(self, verb, *extra, ok=True):
        return run(BIN + "/tap-ctl-renew", verb, "-p", str(self.pid), "-m", str(self.minor), *extra, ok=ok)

    def wait_dead(self):
        """Until the main thread is dead, as a supervisor would see it."""
        end = time.time() + 60
        while not main_thread_dead(self.pid):
            if time.time() > end:
                die("daemon %d still running" % self.pid)
            time.sleep(0.01)


def record(p):
    """A renew with no write in flight: its generation holds the disk as it is."""
    m = re.search(r"generation (\d+)$", p.stdout.decode(errors="replace"), re.M)
    if not m:
        die("the renew reported no generation: " + p.stdout.decode(errors="replace"))
    generations[int(m.group(1))] = hashlib.sha256(model).hexdigest()
    if os.environ.get("SOAK_KEEP") == "1":  # the disk itself, to compare a bad restore with
        with open("%s/want.%s" % (D, m.group(1)), "wb") as f:
            f.write(model)


def pick_writes():
    """Up to 48 writes, none overlapping another: single sectors to two
    blocks, a third of them across a block boundary, a tenth of them
    WRITE_ZEROES (pattern 0)."""
    taken, ws = [], []
    for _ in range(rnd.randint(1, 48)):
        n = rnd.choice([1, 7, 8, 8, 8, 64, 128, 1000, 2048, 4096, 4100])
        if rnd.random() < 0.3:
            s = max(0, rnd.randrange(1, SIZE >> 21) * 4096 - rnd.randint(0, n))
        else:
            s = rnd.randrange(0, SIZE // SEC - n)
        s = min(s, SIZE // SEC - n)
        if any(s < e and t < s + n for t, e in taken):
            continue
        taken.append((s, s + n))
        ws.append((s * SEC, n * SEC, 0 if rnd.random() < 0.1 else rnd.randint(1, 255)))
    return ws


def act(kind, delay, pause_for, rate, out):
    """What happens to the disk while the round's writes run."""
    time.sleep(delay)
    if kind == "renew":
        out["renew"] = disk.ctl("renew", "--wait", *rate, ok=False)
    elif kind == "pause":
        out["pause"] = disk.ctl("pause", ok=False)
        time.sleep(pause_for)
        out["unpause"] = disk.ctl("unpause", ok=False)
    elif kind == "renew-kill":
        subprocess.Popen([BIN + "/tap-ctl-renew", "renew", "-p", str(disk.pid), "-m", str(disk.minor)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(pause_for * 2)
        os.kill(disk.pid, signal.SIGKILL)
    elif kind == "kill":
        os.kill(disk.pid, signal.SIGKILL)
    elif kind == "term":
        os.kill(disk.pid, signal.SIGTERM)


def verify(model, pending):
    got = D + "/got.raw"
    if os.path.exists(got):
        os.unlink(got)
    run("nbdcopy", "nbd+unix:///?socket=" + disk.sock, got)
    with open(got, "rb") as f:
        g = f.read()
    if len(g) != SIZE:
        die("the export is %d bytes, not %d" % (len(g), SIZE))
    for off, ln, pat in pending:
        for o in range(off, off + ln, SEC):
            sec = g[o:o + SEC]
            if sec != bytes(model[o:o + SEC]) and sec != bytes([pat]) * SEC:
                die("sector %d of a write in flight at the kill (offset %d, %d bytes, pattern %d) "
                    "is neither what it was nor what was written" % (o // SEC, off, ln, pat))
            model[o:o + SEC] = sec
    if g != model:
        bad = next(i for i in range(0, SIZE, SEC) if g[i:i + SEC] != model[i:i + SEC])
        die("sector %d is not what the acknowledged writes left there" % (bad // SEC))


with open(D + "/base.raw", "wb") as f:
    f.write(rnd.randbytes(SIZE))
model = bytearray(open(D + "/base.raw", "rb").read())
run(BIN + "/renew-img", "snapshot", D + "/base.raw", VHD)
disk = Disk()
disk.start()
counts = {}
generations = {}  # generation -> sha256 of the disk right after its renew
START = time.time()
end = START + SECS
while time.time() < end:
    state["round"] += 1
    ws = pick_writes()
    kind = state["kind"] = rnd.choice(KINDS)
    counts[kind] = counts.get(kind, 0) + 1
    rate = rnd.choice([[], [], ["--rate", str(rnd.choice([20, 50, 200]))]])
    out = {}
    th = None
    if kind not in ("none", "offline", "quiet-renew"):
        th = threading.Thread(target=act, args=(kind, rnd.random() * 0.15, rnd.random() * 0.25, rate, out))
        th.start()
    cmds = []
    for off, ln, pat in ws:
        cmds += ["-c", ("aio_write -P %d %d %d" % (pat, off, ln)) if pat else ("aio_write -z %d %d" % (off, ln))]
    q = run("qemu-io", "-t", "writeback", "-f", "raw", "nbd+unix:///?socket=" + disk.sock,
            *cmds, "-c", "aio_flush", ok=False)
    if th:
        th.join()
    acked = {(int(m.group(2)), int(m.group(1)))
             for m in re.finditer(r"wrote (\d+)/\d+ bytes at offset (\d+)", q.stdout.decode(errors="replace"))}
    pending = []
    for off, ln, pat in ws:
        if (off, ln) in acked:
            model[off:off + ln] = bytes([pat]) * ln
        else:
            pending.append((off, ln, pat))
    stopped = kind in ("kill", "renew-kill", "term")
    counts["in flight at a stop"] = counts.get("in flight at a stop", 0) + len(pending)
    if pending and not stopped:
        die("%d writes failed with the daemon up: %s" % (len(pending), q.stdout.decode(errors="replace")[-2000:]))
    for verb, p in out.items():
        if p.returncode != 0:
            die("%s: %s" % (verb, p.stdout.decode(errors="replace")))
    if out.get("renew"):
        counts["renewed"] = counts.get("renewed", 0) + 1
    if stopped:
        disk.wait_dead()
        run(BIN + "/renew-img", "check", VHD)
        disk.start()
    elif kind == "offline":
        disk.ctl("destroy")
        run(BIN + "/renew-img", "check", VHD)
        record(run(BIN + "/renew-img", "renew", "--history", HIST, VHD))
        run(BIN + "/renew-img", "check", VHD)
        disk.start()
    elif kind == "quiet-renew":
        record(disk.ctl("renew", "--wait"))
    verify(model, pending)
    if any(f.startswith("asan") for f in os.listdir(D)):
        die("a sanitizer report is in " + D)
disk.ctl("destroy")
run(BIN + "/renew-img", "check", VHD)
# Restoring generation N replays N overlays, so restoring all of a long
# soak's generations grows with their square: a long soak restores a
# sample, the last generation always in it.
cap = os.environ.get("SOAK_RESTORES", "24")
gens = sorted(generations)
if cap == "0":
    gens = []
elif cap != "all" and len(gens) > int(cap):
    gens = sorted(random.Random(SEED).sample(gens[:-1], int(cap) - 1)) + gens[-1:]
# a timeout during the restores then shows where the time went
print("seed %d: %d rounds in %.0f s; restoring %d of %d generations" %
      (SEED, state["round"], time.time() - START, len(gens), len(generations)), flush=True)
for gen in gens:
    want = generations[gen]
    out = D + "/restored.raw"
    if os.path.exists(out):
        os.unlink(out)
    run(BIN + "/renew-img", "restore", HIST, "--generation", str(gen), out)
    with open(out, "rb") as f:
        if hashlib.sha256(f.read()).hexdigest() != want:
            os.rename(out, "%s/restored.%d" % (D, gen))
            die("generation %d does not restore to the disk as it was right after its renew "
                "(kept as restored.%d)" % (gen, gen))
counts["generations restored"] = len(gens)
print("seed %d: %d rounds, %s" % (SEED, state["round"],
                                   ", ".join("%s %d" % kv for kv in sorted(counts.items()))), flush=True)
