#!/usr/bin/env python3
"""A raw NBD client speaking the wire protocol byte by byte, so tests can
send what no well-behaved client would. Used by t-nbd-hostile.sh:
    nbd-wire.py SOCKET SCENARIO [ARGS...]
exits 0 when the server answered the scenario as expected."""
import os, random, socket, struct, sys, time

IHAVEOPT = 0x49484156454f5054
NBDMAGIC = 0x4e42444d41474943
REP_MAGIC = 0x3e889045565a9
REQ_MAGIC = 0x25609513
SIMPLE_MAGIC = 0x67446698
STRUCT_MAGIC = 0x668e33ef
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_INFO, OPT_GO, OPT_STRUCTURED = 1, 2, 3, 6, 7, 8
OPT_LIST_META, OPT_SET_META = 9, 10
REP_ACK, REP_SERVER, REP_INFO, REP_META = 1, 2, 3, 4
ERR_UNSUP, ERR_INVALID, ERR_TOO_BIG = 0x80000001, 0x80000003, 0x80000009
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_CACHE, CMD_ZEROES, CMD_BS = range(8)
EPERM, EIO, EINVAL, EOVERFLOW, ENOTSUP = 1, 5, 22, 75, 95


def fail(msg):
    print("FAIL:", msg, file=sys.stderr)
    sys.exit(1)


class Conn:
    def __init__(self, path, timeout=20):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path)
        self.structured = False
        self.handle = 0

    def recvn(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.s.recv(n - len(buf))
            if not chunk:
                raise EOFError("server closed after %d of %d bytes" % (len(buf), n))
            buf += chunk
        return buf

    def closed_by_server(self, timeout=5):
        """True once the server has closed the connection (EOF or reset)."""
        self.s.settimeout(timeout)
        try:
            while True:
                if not self.s.recv(65536):
                    return True
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def greeting(self, flags=3):
        magic, opt, hflags = struct.unpack(">QQH", self.recvn(18))
        if magic != NBDMAGIC or opt != IHAVEOPT:
            fail("bad greeting")
        if not hflags & 1:
            fail("server is not fixed newstyle")
        self.s.sendall(struct.pack(">I", flags))

    def option(self, opt, data=b""):
        self.s.sendall(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)

    def opt_reply(self):
        magic, opt, rtype, length = struct.unpack(">QIII", self.recvn(20))
        if magic != REP_MAGIC:
            fail("bad option reply magic %x" % magic)
        return opt, rtype, self.recvn(length)

    def go(self, structured=True, meta=False):
        self.greeting()
        if structured:
            self.option(OPT_STRUCTURED)
            if self.opt_reply()[1] != REP_ACK:
                fail("structured replies refused")
            self.structured = True
        if meta:
            q = b"base:allocation"
            self.option(OPT_SET_META, struct.pack(">I", 0) + struct.pack(">I", 1) + struct.pack(">I", len(q)) + q)
            _, t, d = self.opt_reply()
            if t != REP_META:
                fail("base:allocation not granted: %x" % t)
            if self.opt_reply()[1] != REP_ACK:
                fail("no ack after meta context")
        self.option(OPT_GO, struct.pack(">IH", 0, 0))
        size = flags = None
        while True:
            _, t, d = self.opt_reply()
            if t == REP_INFO and struct.unpack(">H", d[:2])[0] == 0:
                size, flags = struct.unpack(">QH", d[2:12])
            elif t == REP_ACK:
                break
            elif t & 0x80000000:
                fail("GO refused %x" % t)
        self.size, self.flags = size, flags
        return size, flags

    def request(self, cmd, offset, length, flags=0, payload=b"", magic=REQ_MAGIC):
        self.handle += 1
        self.s.sendall(struct.pack(">IHHQQI", magic, flags, cmd, self.handle, offset, length) + payload)
        return self.handle

    def reply(self, read_len=0):
        """(handle, error, data) of one reply; structured: the whole chain."""
        magic = struct.unpack(">I", self.recvn(4))[0]
        if magic == SIMPLE_MAGIC:
            err, handle = struct.unpack(">IQ", self.recvn(12))
            data = self.recvn(read_len) if (not err and read_len) else b""
            return handle, err, data
        if magic != STRUCT_MAGIC:
            fail("bad reply magic %x" % magic)
        data, err = b"", 0
        while True:
            flags, typ, handle, length = struct.unpack(">HHQI", self.recvn(16))
            body = self.recvn(length)
            if typ == 1:
                data += body[8:]
            elif typ & 0x8000:
                err = struct.unpack(">I", body[:4])[0]
            elif typ == 5:
                data += body
            if flags & 1:
                return handle, err, data
            magic = struct.unpack(">I", self.recvn(4))[0]

    def expect(self, what, cmd, offset, length, err, flags=0, payload=b""):
        h = self.request(cmd, offset, length, flags, payload)
        rh, rerr, data = self.reply(length if cmd == CMD_READ else 0)
        if rh != h:
            fail("%s: reply for handle %d, expected %d" % (what, rh, h))
        if rerr != err:
            fail("%s: error %d, expected %d" % (what, rerr, err))
        print("ok:", what, "-> error", rerr)
        return data


def sc_garbage(path):
    """Garbage instead of an option: the server hangs up."""
    c = Conn(path)
    c.greeting()
    c.s.sendall(os.urandom(64))
    if not c.closed_by_server():
        fail("garbage option: connection left open")
    print("ok: garbage option closes the connection")
    c = Conn(path)
    c.recvn(18)
    c.s.sendall(struct.pack(">I", 0))  # not fixed newstyle
    if not c.closed_by_server():
        fail("old-style client flags: connection left open")
    print("ok: client without fixed newstyle refused")


def sc_options(path):
    """Unknown, malformed and oversized options are answered, not fatal."""
    c = Conn(path)
    c.greeting()
    c.option(4242, b"xyz")
    if c.opt_reply()[1] != ERR_UNSUP:
        fail("unknown option not ERR_UNSUP")
    c.option(OPT_GO, b"\xff\xff\xff\xff")
    if c.opt_reply()[1] != ERR_INVALID:
        fail("malformed GO not ERR_INVALID")
    c.option(OPT_SET_META, struct.pack(">I", 0) + struct.pack(">I", 1) + struct.pack(">I", 15) + b"base:allocation")
    if c.opt_reply()[1] != ERR_INVALID:
        fail("SET_META_CONTEXT without structured replies accepted")
    c.option(OPT_LIST_META, struct.pack(">II", 0, 2) + struct.pack(">I", 1000) + b"x")
    if c.opt_reply()[1] != ERR_INVALID:
        fail("meta context with lying lengths accepted")
    c.option(OPT_LIST_META, struct.pack(">II", 0, 0))
    t1, t2 = c.opt_reply()[1], c.opt_reply()[1]
    if (t1, t2) != (REP_META, REP_ACK):
        fail("LIST_META_CONTEXT: %x %x" % (t1, t2))
    big = 200000
    c.s.sendall(struct.pack(">QII", IHAVEOPT, OPT_INFO, big))
    c.s.sendall(b"\0" * big)
    if c.opt_reply()[1] != ERR_TOO_BIG:
        fail("oversized option not ERR_TOO_BIG")
    c.option(OPT_LIST)
    _, t, d = c.opt_reply()
    if t != REP_SERVER or c.opt_reply()[1] != REP_ACK:
        fail("LIST after an oversized option")
    c.option(OPT_ABORT)
    if c.opt_reply()[1] != REP_ACK or not c.closed_by_server():
        fail("ABORT")
    print("ok: unknown/malformed/oversized options answered, ABORT closes")


def sc_requests(path, expect_ro):
    """Misaligned, out-of-range, oversized and unknown requests get errors."""
    for structured in (False, True):
        c = Conn(path)
        size, flags = c.go(structured=structured)
        ro = bool(flags & 2)
        if ro != expect_ro:
            fail("read-only flag %s, expected %s" % (ro, expect_ro))
        mode = "structured" if structured else "simple"
        c.expect(mode + " read past the end", CMD_READ, size, 512, EINVAL)
        c.expect(mode + " read across the end", CMD_READ, size - 512, 1024, EINVAL)
        c.expect(mode + " read at 2^64-512", CMD_READ, (1 << 64) - 512, 512, EINVAL)
        c.expect(mode + " misaligned read offset", CMD_READ, 100, 512, EINVAL)
        c.expect(mode + " misaligned read length", CMD_READ, 0, 100, EINVAL)
        c.expect(mode + " read above the maximum", CMD_READ, 0, 64 << 20, EOVERFLOW)
        c.expect(mode + " unknown command", 99, 0, 512, EINVAL)
        c.expect(mode + " unknown flag", CMD_READ, 0, 512, EINVAL, flags=0x100)
        c.expect(mode + " block status without a context", CMD_BS, 0, 4096, EINVAL)
        wr_err = EPERM if ro else 0
        c.expect(mode + " misaligned write (payload skipped)", CMD_WRITE, 100, 1000, EINVAL,
                 payload=b"\xee" * 1000)
        c.expect(mode + " write past the end (payload skipped)", CMD_WRITE, size, 4096, EINVAL,
                 payload=b"\xee" * 4096)
        c.expect(mode + " zeroes past the end", CMD_ZEROES, size - 4096, 8192, EINVAL)
        c.expect(mode + " trim misaligned", CMD_TRIM, 1, 4096, EINVAL)
        # in step after the skipped payloads: a good read returns data
        data = c.expect(mode + " read after the refusals", CMD_READ, 0, 4096, 0)
        if len(data) != 4096:
            fail("short read after refusals")
        c.expect(mode + " write on this export", CMD_WRITE, 8192, 4096, wr_err, payload=data[:4096])
        c.expect(mode + " zeroes on this export", CMD_ZEROES, 1 << 20, 4096, EPERM if ro else ENOTSUP,
                 flags=16)  # FAST_ZERO: not fast here
        c.expect(mode + " trim on this export", CMD_TRIM, 0, 4096, wr_err)
        c.expect(mode + " flush", CMD_FLUSH, 0, 0, 0)
        c.request(CMD_DISC, 0, 0)
        if not c.closed_by_server():
            fail("DISC did not close")
        print("ok:", mode, "DISC closes")
    # a write above the maximum cannot be skipped: error, then hang up
    c = Conn(path)
    c.go()
    h = c.request(CMD_WRITE, 0, 64 << 20)
    rh, err, _ = c.reply()
    if rh != h or err == 0:
        fail("oversized write accepted")
    if not c.closed_by_server():
        fail("oversized write: connection left open")
    print("ok: oversized write refused (error %d) and connection closed" % err)
    # bad request magic
    c = Conn(path)
    c.go()
    c.request(CMD_READ, 0, 512, magic=0xdeadbeef)
    if not c.closed_by_server():
        fail("bad request magic: connection left open")
    print("ok: bad request magic closes the connection")


def sc_block_status(path):
    c = Conn(path)
    size, _ = c.go(meta=True)
    data = c.expect("block status", CMD_BS, 0, 1 << 20, 0)
    ctx, length, fl = struct.unpack(">III", data[:12])
    if length != 1 << 20 or fl != 0:
        fail("block status extent %d/%d" % (length, fl))
    c.expect("block status past the end", CMD_BS, size, 4096, EINVAL)
    c.request(CMD_DISC, 0, 0)


def sc_deep(path):
    """Thousands of requests sent by one thread while another reads the
    replies: the server keeps a deep queue, throttles, answers all."""
    import threading
    c = Conn(path, timeout=60)
    size, _ = c.go()
    n, ln = 3000, 128 * 1024
    offs = [random.randrange(0, (size - ln) // 512) * 512 for _ in range(n)]
    got, errors = set(), []

    def reader():
        try:
            for _ in range(n):
                h, err, data = c.reply(ln)
                if err or len(data) != ln or h in got:
                    errors.append("bad reply %d err %d" % (h, err))
                got.add(h)
        except Exception as e:  # report in the main thread
            errors.append(repr(e))
    t = threading.Thread(target=reader)
    t.start()
    hdrs = b"".join(struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD_READ, i + 1, offs[i], ln) for i in range(n))
    c.s.sendall(hdrs)
    t.join()
    if errors or len(got) != n:
        fail("deep queue: %s, %d answered" % (errors[:3], len(got)))
    print("ok: %d requests sent back to back, all answered" % n)
    c.handle = n
    c.request(CMD_DISC, 0, 0)


def sc_abrupt(path):
    """Clients vanishing with requests in flight or mid-payload."""
    for i in range(20):
        c = Conn(path)
        c.go(structured=bool(i & 1))
        for j in range(50):
            c.request(CMD_READ, j * 65536, 65536)
        if i % 3 == 0:
            c.s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD_WRITE, 7, 0, 1 << 20) + b"x" * 1000)
        c.s.close()
    print("ok: 20 clients hung up with requests in flight")


def sc_fuzz(path, rounds=300):
    """Random bytes at every stage; the server must just cope."""
    rnd = random.Random(int(os.environ.get("SEED", "1")))
    for i in range(rounds):
        try:
            c = Conn(path, timeout=2)
            stage = rnd.randrange(4)
            if stage >= 1:
                c.recvn(18)
                c.s.sendall(struct.pack(">I", 3))
            if stage >= 2:
                c.option(OPT_STRUCTURED)
                c.opt_reply()
                c.option(OPT_GO, struct.pack(">IH", 0, 0))
                while c.opt_reply()[1] != REP_ACK:
                    pass
            if stage == 3:
                # plausible headers with random fields
                for j in range(rnd.randrange(1, 20)):
                    c.s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, rnd.getrandbits(16) & 0x1f,
                                            rnd.randrange(10), j, rnd.getrandbits(rnd.choice([9, 20, 30, 64])),
                                            rnd.getrandbits(rnd.choice([9, 13, 20, 26, 32]))))
            c.s.sendall(bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(1, 300))))
            c.s.settimeout(0.2)
            try:
                c.s.recv(65536)
            except (socket.timeout, ConnectionResetError, BrokenPipeError):
                pass
            c.s.close()
        except (EOFError, ConnectionResetError, BrokenPipeError, socket.timeout):
            pass
    print("ok: %d fuzzed connections" % rounds)


def sc_idle(path, n=int(os.environ.get("N", "100"))):
    """Hold n connections open mid-handshake until stdin closes."""
    conns = []
    for i in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        if i % 2:
            s.recv(18)
            s.sendall(b"\0\0")  # half of the client flags
        conns.append(s)
    print("ready", flush=True)
    sys.stdin.read()


def main():
    path, sc = sys.argv[1], sys.argv[2]
    if sc == "garbage":
        sc_garbage(path)
    elif sc == "options":
        sc_options(path)
    elif sc == "requests":
        sc_requests(path, expect_ro=False)
    elif sc == "requests-ro":
        sc_requests(path, expect_ro=True)
    elif sc == "block-status":
        sc_block_status(path)
    elif sc == "deep":
        sc_deep(path)
    elif sc == "abrupt":
        sc_abrupt(path)
    elif sc == "fuzz":
        sc_fuzz(path)
    elif sc == "idle":
        sc_idle(path)
    else:
        fail("unknown scenario " + sc)


if __name__ == "__main__":
    main()
