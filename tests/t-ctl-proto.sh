#!/bin/bash
# The control protocol on the wire, spoken by hand: several requests on one
# connection, pipelined; another version is refused naming both versions;
# bad magic, oversized and malformed frames get an error reply (never a
# crash); a client that connects and goes away is harmless.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/ctl-lib.sh"

P=$(tapctl spawn) || fail "spawn"
PIDS="$PIDS $P"

python3 - "$RENEW_RUNDIR/ctl$P" "$P" <<'EOF' || fail "protocol checks"
import socket, struct, sys
path, pid = sys.argv[1], sys.argv[2]

def conn():
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(path)
    return s

def frame(text, version=1, magic=b"RNWC"):
    body = ("v=%d\n" % version + text).encode()
    return magic + struct.pack(">I", len(body)) + body

def recv_exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError("connection closed after %d of %d bytes" % (len(b), n))
        b += c
    return b

def reply(s):
    h = recv_exact(s, 8)
    assert h[:4] == b"RNWC", h
    (n,) = struct.unpack(">I", h[4:])
    lines = recv_exact(s, n).decode().splitlines()
    assert lines[0] == "v=1", lines
    return dict(l.split("=", 1) for l in lines[1:])

def check(cond, what):
    if not cond:
        print("FAIL:", what); sys.exit(1)
    print("ok:", what)

# several requests, pipelined on one connection, answered in order
s = conn()
s.sendall(frame("verb=version\n") + frame("verb=attach\nminor=4\n") + frame("verb=list\n"))
r1, r2, r3 = reply(s), reply(s), reply(s)
check(r1["status"] == "ok" and r1["pid"] == pid and r1["version"] == "1", "version reply %r" % r1)
check(r2["status"] == "ok", "attach reply %r" % r2)
check(r3["count"] == "1" and r3["minor.0"] == "4" and r3["state.0"] == "closed", "list reply %r" % r3)
# escaped values survive
s.sendall(frame("verb=open\nminor=4\nparams=aio:/no/such\\nfile\n"))
r = reply(s)
check(r["status"] == "error" and "/no/such\\nfile" in r["msg"], "escaped newline round trip: %r" % r)
s.sendall(frame("verb=job-status\nminor=4\n"))
r = reply(s)
check(r["status"] == "error" and r["msg"] == "minor 4 (closed) has had no renew", "job-status without a job: %r" % r)
s.sendall(frame("verb=detach\nminor=4\n"))
r = reply(s)
check(r["status"] == "ok" and r.get("exiting") == "1", "detach of the last vbd says exiting")
s.close()
EOF
wait_for 10 gone "$P" || fail "daemon did not exit after its last detach"
[ -z "$(lsrun)" ] || fail "left: $(lsrun)"

P=$(tapctl spawn) || fail "spawn 2"
PIDS="$PIDS $P"
python3 - "$RENEW_RUNDIR/ctl$P" "$P" <<'EOF' || fail "protocol error checks"
import socket, struct, sys
path, pid = sys.argv[1], sys.argv[2]

def conn():
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(path)
    return s

def frame(text, version=1, magic=b"RNWC"):
    body = ("v=%d\n" % version + text).encode()
    return magic + struct.pack(">I", len(body)) + body

def reply(s):
    b = b""
    while len(b) < 8:
        c = s.recv(8 - len(b))
        if not c:
            raise EOFError
        b += c
    (n,) = struct.unpack(">I", b[4:])
    body = b""
    while len(body) < n:
        body += s.recv(n - len(body))
    lines = body.decode().splitlines()
    return dict(l.split("=", 1) for l in lines[1:])

def check(cond, what):
    if not cond:
        print("FAIL:", what); sys.exit(1)
    print("ok:", what)

def closed(s):
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True

s = conn(); s.sendall(frame("verb=version\n", version=2)); r = reply(s)
check(r["status"] == "error" and "version 2" in r["msg"] and "version 1" in r["msg"],
      "other version refused: %r" % r["msg"])
check(closed(s), "connection closed after a version error")

s = conn(); s.sendall(struct.pack("=HH", 1, 0) + b"\0" * 540); r = reply(s)
check(r["status"] == "error" and "magic" in r["msg"], "blktap message refused: %r" % r["msg"])

s = conn(); s.sendall(b"RNWC" + struct.pack(">I", 1 << 30)); r = reply(s)
check(r["status"] == "error" and "exceeds" in r["msg"], "oversized frame refused: %r" % r["msg"])

s = conn(); s.sendall(frame("verb=list\nno equals sign\n")); r = reply(s)
check(r["status"] == "error" and "without '='" in r["msg"], "malformed line refused: %r" % r["msg"])

s = conn(); s.sendall(frame("verb=renew-everything\n")); r = reply(s)
check(r["status"] == "error" and r["errno"] == "38" and "renew-everything" in r["msg"],
      "unknown verb: %r" % r["msg"])
s.sendall(frame("minor=1\n")); r = reply(s)
check(r["status"] == "error" and "without a verb" in r["msg"], "no verb: %r" % r["msg"])

# clients that go away mid-frame or at once
s = conn(); s.sendall(b"RNWC\0\0\0\x20v=1\n"); s.close()
s = conn(); s.close()
s = conn(); s.sendall(frame("verb=version\n")); r = reply(s)
check(r["status"] == "ok", "still serving after clients vanished")
EOF
tapctl version -p "$P" >/dev/null || fail "daemon gone after bad frames"
ok "daemon survives bad frames"
tapctl attach -p "$P" -m 0 && tapctl detach -p "$P" -m 0 || fail "attach+detach"
gone "$P" || fail "daemon did not exit"
[ -z "$(lsrun)" ] || fail "left: $(lsrun)"
