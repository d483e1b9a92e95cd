/* Unit tests of the runtime: the vbd request engine over the aio driver
 * (read/write/zeroes/flush/FUA, range and permission checks, pause with
 * held requests, unpause with reopen and a failed reopen, deep chains of
 * synchronous completions), a reopen ending a pause whose last request
 * allocated an overlay block, and td_forward_request past the last image. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "scheduler.h"
#include "vbd.h"
#include "vhd.h"

static int failures;
static char dir[256];

#define CHECK(cond, ...) do { if (!(cond)) { failures++; fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
	fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); } } while (0)

struct waiter {
	int done;
	int err;
	int expect;
};

static int looping; /* sched_stop() is sticky: only stop a running loop */

/* A request finished: note it; stop the loop once all expected are in. */
static void req_cb(td_vbd_request_t *vreq, int err, void *arg)
{
	struct waiter *w = arg;

	if (err && !w->err)
		w->err = err;
	if (++w->done == w->expect && looping)
		sched_stop();
}

/* Give up on a loop that does not stop by itself. */
static void timeout_cb(void *arg)
{
	int *fired = arg;

	*fired = 1;
	sched_stop();
}

/* Run the loop until the waiter has all its callbacks (or 10 s). */
static void run(struct waiter *w)
{
	int fired = 0, t;

	if (w->done >= w->expect)
		return;
	t = sched_timer(10000, timeout_cb, &fired);
	looping = 1;
	sched_run();
	looping = 0;
	sched_cancel_timer(t);
	CHECK(!fired, "timed out with %d of %d callbacks", w->done, w->expect);
}

/* Run the loop for `ms` milliseconds, whatever completes meanwhile. */
static void run_for(int ms)
{
	int fired = 0;

	sched_timer((uint64_t)ms, timeout_cb, &fired);
	looping = 0; /* req_cb must not stop it early */
	sched_run();
}

/* An aligned buffer filled with `byte`. */
static char *buffer(size_t len, int byte)
{
	void *p;

	if (posix_memalign(&p, 4096, len))
		abort();
	memset(p, byte, len);
	return p;
}

/* A file of `len` bytes filled with `byte`; returns "aio:PATH". */
static char *make_disk(const char *name, size_t len, int byte)
{
	static char params[2][512];
	static int which;
	char *p = params[which++ & 1];
	char *buf = buffer(len, byte);
	int fd;

	snprintf(p, 512, "aio:%s/%s", dir, name);
	fd = open(p + 4, O_CREAT | O_TRUNC | O_WRONLY, 0644);
	if (fd < 0 || write(fd, buf, len) != (ssize_t)len)
		abort();
	close(fd);
	free(buf);
	return p;
}

/* Queue one request of `op` on `vbd`. */
static void queue(td_vbd_t *vbd, td_vbd_request_t *v, int op, char *buf, uint64_t sec, uint32_t secs,
		  struct waiter *w)
{
	memset(v, 0, sizeof(*v));
	v->op = op;
	v->buf = buf;
	v->sec = sec;
	v->secs = secs;
	v->cb = req_cb;
	v->cb_data = w;
	tapdisk_vbd_queue(vbd, v);
}

/* Do every byte of buf equal `byte`? */
static int all(const char *buf, size_t len, int byte)
{
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)buf[i] != byte)
			return 0;
	return 1;
}

static void test_io(void)
{
	td_vbd_t *vbd = tapdisk_vbd_create(1);
	td_vbd_request_t v[4];
	struct waiter w = { 0, 0, 1 };
	char *buf = buffer(1 << 20, 0x5a), *rd = buffer(1 << 20, 0);
	char err[256];
	const char *params = make_disk("io.raw", 32 << 20, 0x11);

	CHECK(tapdisk_vbd_open(vbd, params, 0, err, sizeof(err)) == 0, "open: %s", err);
	CHECK(vbd->size == (32 << 20) / 512, "size %llu", (unsigned long long)vbd->size);
	queue(vbd, &v[0], VBD_OP_WRITE, buf, 2048, 2048, &w);
	run(&w);
	CHECK(!w.err, "write: %d", w.err);
	w = (struct waiter){ 0, 0, 1 };
	queue(vbd, &v[0], VBD_OP_READ, rd, 2048, 2048, &w);
	run(&w);
	CHECK(!w.err && all(rd, 1 << 20, 0x5a), "read back");
	/* 20 MiB of zeroes: pieces pumped through a window; then FUA and flush */
	w = (struct waiter){ 0, 0, 3 };
	queue(vbd, &v[0], VBD_OP_WRITE_ZEROES, NULL, 4096, 40960, &w);
	v[1].op = 0;
	queue(vbd, &v[1], VBD_OP_WRITE, buf, 0, 8, &w);
	v[1].fua = 1; /* too late to matter for this one; the next is FUA */
	queue(vbd, &v[2], VBD_OP_FLUSH, NULL, 0, 0, &w);
	run(&w);
	CHECK(!w.err, "zeroes/write/flush: %d", w.err);
	w = (struct waiter){ 0, 0, 1 };
	memset(&v[3], 0, sizeof(v[3]));
	v[3] = (td_vbd_request_t){ .op = VBD_OP_WRITE, .fua = 1, .buf = buf, .sec = 8, .secs = 8, .cb = req_cb, .cb_data = &w };
	tapdisk_vbd_queue(vbd, &v[3]);
	run(&w);
	CHECK(!w.err, "fua write: %d", w.err);
	w = (struct waiter){ 0, 0, 1 };
	queue(vbd, &v[0], VBD_OP_READ, rd, 4096, 2048, &w);
	run(&w);
	CHECK(!w.err && all(rd, 1 << 20, 0), "zeroes read back");
	w = (struct waiter){ 0, 0, 1 };
	queue(vbd, &v[0], VBD_OP_READ, rd, 4096 + 40960, 8, &w);
	run(&w);
	CHECK(!w.err && all(rd, 4096, 0x11), "zeroes went past their end");
	/* out of range, then a trim */
	w = (struct waiter){ 0, 0, 3 };
	queue(vbd, &v[0], VBD_OP_READ, rd, vbd->size - 1, 2, &w);
	queue(vbd, &v[1], VBD_OP_WRITE, buf, UINT64_MAX - 1, 8, &w);
	queue(vbd, &v[2], VBD_OP_TRIM, NULL, 0, 8, &w);
	run(&w);
	CHECK(w.err == -EINVAL && w.done == 3, "range: err %d", w.err);
	CHECK(vbd->stats.errors == 2 && vbd->stats.inflight == 0, "stats: %llu errors, %llu inflight",
	      (unsigned long long)vbd->stats.errors, (unsigned long long)vbd->stats.inflight);
	{
		char *json = tapdisk_vbd_stats_json(vbd);

		CHECK(json && strstr(json, "\"write_zeroes\":1") && strstr(json, "\"type\":\"aio\""), "json %s", json);
		free(json);
	}
	tapdisk_vbd_close(vbd);
	tapdisk_vbd_free(vbd);
	free(buf);
	free(rd);
}

static void test_open_errors(void)
{
	td_vbd_t *a = tapdisk_vbd_create(2), *b = tapdisk_vbd_create(3);
	const char *params = make_disk("lock.raw", 1 << 20, 0);
	char err[512];

	CHECK(tapdisk_vbd_open(a, params, 0, err, sizeof(err)) == 0, "open: %s", err);
	err[0] = 0;
	CHECK(tapdisk_vbd_open(b, params, 0, err, sizeof(err)) == -EBUSY, "second exclusive open");
	CHECK(strstr(err, "lock.raw") && strstr(err, "in use"), "lock error names the file: %s", err);
	CHECK(tapdisk_vbd_open(b, "nosuch:/x", 0, err, sizeof(err)) < 0 && strstr(err, "unknown disk type"),
	      "type error: %s", err);
	CHECK(tapdisk_vbd_open(b, "aio:/nonexistent/disk.raw", 0, err, sizeof(err)) == -ENOENT &&
	      strstr(err, "/nonexistent/disk.raw"), "enoent: %s", err);
	CHECK(tapdisk_vbd_find(3) == b && tapdisk_vbd_find(9) == NULL, "find");
	tapdisk_vbd_free(a);
	tapdisk_vbd_free(b);
}

static void test_read_only(void)
{
	td_vbd_t *vbd = tapdisk_vbd_create(4);
	const char *params = make_disk("ro.raw", 1 << 20, 7);
	td_vbd_request_t v[3];
	struct waiter w = { 0, 0, 3 };
	char *buf = buffer(4096, 1);
	char err[256];

	CHECK(tapdisk_vbd_open(vbd, params, TD_OPEN_RDONLY, err, sizeof(err)) == 0, "open ro: %s", err);
	queue(vbd, &v[0], VBD_OP_WRITE, buf, 0, 8, &w);
	queue(vbd, &v[1], VBD_OP_WRITE_ZEROES, NULL, 0, 8, &w);
	queue(vbd, &v[2], VBD_OP_READ, buf, 0, 8, &w);
	run(&w);
	CHECK(w.err == -EPERM && all(buf, 4096, 7), "read-only: %d", w.err);
	tapdisk_vbd_free(vbd);
	free(buf);
}

struct pause_state {
	int quiesced;
	int inflight_then;
};

/* The vbd is quiesced: record how much was in flight at that moment. */
static void on_quiesced(td_vbd_t *vbd, void *arg)
{
	struct pause_state *p = arg;

	p->quiesced++;
	p->inflight_then = !list_empty(&vbd->inflight);
}

static void test_pause(void)
{
	td_vbd_t *vbd = tapdisk_vbd_create(5);
	const char *one = make_disk("one.raw", 4 << 20, 1);
	char two[512];
	td_vbd_request_t v[40];
	struct waiter w = { 0, 0, 20 };
	struct pause_state ps = { 0, 0 };
	char *bufs[40];
	char err[512];
	int i;

	snprintf(two, sizeof(two), "%s", make_disk("two.raw", 4 << 20, 2));
	CHECK(tapdisk_vbd_open(vbd, one, 0, err, sizeof(err)) == 0, "open: %s", err);
	for (i = 0; i < 40; i++)
		bufs[i] = buffer(65536, 0);
	for (i = 0; i < 20; i++)
		queue(vbd, &v[i], VBD_OP_READ, bufs[i], (uint64_t)i * 128, 128, &w);
	tapdisk_vbd_pause(vbd, on_quiesced, &ps);
	CHECK(vbd->state == VBD_PAUSING && !ps.quiesced, "pausing with I/O in flight");
	for (i = 20; i < 40; i++) /* held */
		queue(vbd, &v[i], VBD_OP_READ, bufs[i], (uint64_t)i * 128, 128, &w);
	run(&w);
	CHECK(ps.quiesced == 1 && !ps.inflight_then && vbd->state == VBD_PAUSED, "quiesced once, nothing in flight");
	CHECK(w.done == 20 && !list_empty(&vbd->held), "held requests wait: %d done", w.done);
	/* a failed reopen leaves it paused on the old image */
	CHECK(tapdisk_vbd_unpause(vbd, "aio:/nonexistent/x.raw", err, sizeof(err)) < 0, "bad reopen");
	CHECK(vbd->state == VBD_PAUSED && vbd->top && !strcmp(vbd->params, one), "still paused on %s", vbd->params);
	/* reopen on another image: the held requests read it */
	CHECK(tapdisk_vbd_unpause(vbd, two, err, sizeof(err)) == 0, "reopen: %s", err);
	CHECK(!strcmp(vbd->params, two) && vbd->state == VBD_RUNNING, "running on %s", vbd->params);
	w.expect = 40;
	run(&w);
	CHECK(w.done == 40 && !w.err, "held requests done: %d err %d", w.done, w.err);
	for (i = 0; i < 40; i++)
		CHECK(all(bufs[i], 65536, i < 20 ? 1 : 2), "request %d read the %s image", i, i < 20 ? "old" : "new");
	/* pausing an idle vbd is told on the loop's next turn, not inside
	 * the call; unpause without params resumes */
	ps.quiesced = 0;
	tapdisk_vbd_pause(vbd, on_quiesced, &ps);
	CHECK(!ps.quiesced, "an idle pause is not told inside the call");
	run_for(1);
	CHECK(ps.quiesced == 1 && vbd->state == VBD_PAUSED, "idle pause");
	CHECK(tapdisk_vbd_unpause(vbd, NULL, err, sizeof(err)) == 0 && vbd->state == VBD_RUNNING, "resume");
	/* held requests fail when the vbd closes */
	tapdisk_vbd_pause(vbd, NULL, NULL);
	w = (struct waiter){ 0, 0, 1 };
	queue(vbd, &v[0], VBD_OP_READ, bufs[0], 0, 8, &w);
	tapdisk_vbd_close(vbd);
	CHECK(w.done == 1 && w.err == -ESHUTDOWN, "held request at close: %d", w.err);
	tapdisk_vbd_free(vbd);
	for (i = 0; i < 40; i++)
		free(bufs[i]);
}

/* An admin pause and an internal hold do not end each other; a closed
 * flush gate keeps a flush (and a FUA write) from completing. */
static void test_holds_and_gate(void)
{
	td_vbd_t *vbd = tapdisk_vbd_create(6);
	const char *disk = make_disk("gate.raw", 4 << 20, 3);
	struct pause_state ps = { 0, 0 };
	td_vbd_request_t v[2];
	struct waiter w = { 0, 0, 1 };
	char *buf = buffer(4096, 9);
	char err[512];

	CHECK(tapdisk_vbd_open(vbd, disk, 0, err, sizeof(err)) == 0, "open: %s", err);
	tapdisk_vbd_hold(vbd, on_quiesced, &ps);
	tapdisk_vbd_pause(vbd, on_quiesced, &ps);
	run_for(1);
	CHECK(ps.quiesced == 2 && vbd->state == VBD_PAUSED, "hold and pause both quiesced");
	CHECK(tapdisk_vbd_unpause(vbd, NULL, err, sizeof(err)) == 0 && vbd->state == VBD_PAUSED,
	      "an admin unpause leaves the hold in place");
	tapdisk_vbd_pause(vbd, NULL, NULL);
	CHECK(tapdisk_vbd_release(vbd, NULL, err, sizeof(err)) == 0 && vbd->state == VBD_PAUSED,
	      "the end of a hold leaves the admin's pause in place");
	CHECK(tapdisk_vbd_unpause(vbd, NULL, err, sizeof(err)) == 0 && vbd->state == VBD_RUNNING, "resumed");

	tapdisk_vbd_gate_flushes(vbd, 1);
	queue(vbd, &v[0], VBD_OP_FLUSH, NULL, 0, 0, &w);
	memset(&v[1], 0, sizeof(v[1]));
	w.expect = 2;
	v[1].op = VBD_OP_WRITE;
	v[1].fua = 1;
	v[1].buf = buf;
	v[1].sec = 8;
	v[1].secs = 8;
	v[1].cb = req_cb;
	v[1].cb_data = &w;
	tapdisk_vbd_queue(vbd, &v[1]);
	run_for(300);
	CHECK(w.done == 0, "a flush or FUA write completed behind a closed gate (%d)", w.done);
	tapdisk_vbd_gate_flushes(vbd, 0);
	w.expect = 2;
	run(&w);
	CHECK(w.done == 2 && !w.err, "gated flushes completed once open: %d err %d", w.done, w.err);
	tapdisk_vbd_close(vbd);
	tapdisk_vbd_free(vbd);
	free(buf);
}

struct chain {
	td_vbd_t *vbd;
	td_vbd_request_t v;
	int left;
	int depth, max_depth;
};

/* A zero-length request completes at once; its callback queues the next. */
static void chain_cb(td_vbd_request_t *vreq, int err, void *arg)
{
	struct chain *c = arg;

	c->depth++;
	if (c->depth > c->max_depth)
		c->max_depth = c->depth;
	if (--c->left > 0) {
		memset(&c->v, 0, sizeof(c->v));
		c->v.op = VBD_OP_READ;
		c->v.cb = chain_cb;
		c->v.cb_data = c;
		tapdisk_vbd_queue(c->vbd, &c->v);
	} else {
		sched_stop();
	}
	c->depth--;
}

static void test_deep_chain(void)
{
	struct chain c = { tapdisk_vbd_create(6), { 0 }, 200000, 0, 0 };
	const char *params = make_disk("chain.raw", 1 << 20, 0);
	char err[256];
	int fired = 0, t;

	CHECK(tapdisk_vbd_open(c.vbd, params, 0, err, sizeof(err)) == 0, "open: %s", err);
	c.v.op = VBD_OP_READ;
	c.v.cb = chain_cb;
	c.v.cb_data = &c;
	tapdisk_vbd_queue(c.vbd, &c.v);
	t = sched_timer(10000, timeout_cb, &fired);
	if (c.left > 0)
		sched_run();
	sched_cancel_timer(t);
	CHECK(!fired && c.left == 0, "chain of 200000 synchronous completions: %d left", c.left);
	CHECK(c.max_depth <= 16, "nesting bounded: %d", c.max_depth);
	tapdisk_vbd_free(c.vbd);
}

static int fwd_done, fwd_err;

/* Completion of a forwarded piece. */
static void fwd_cb(td_request_t treq, int err)
{
	fwd_done += treq.secs;
	fwd_err = err;
}

struct reopen_state {
	td_vbd_t *vbd;
	const char *params;
	int reopened;
	char err[512];
};

/* Quiesced: reopen the image, as a renew's swap does. */
static void reopen_when_quiesced(td_vbd_t *vbd, void *arg)
{
	struct reopen_state *r = arg;

	r->reopened = tapdisk_vbd_release(vbd, r->params, r->err, sizeof(r->err)) == 0 ? 1 : -1;
}

/* A renew's pause whose last request in flight allocates an overlay
 * block: the reopen that ends the pause closes the image, and must not run
 * inside that write's completion, where the driver still holds its state
 * (under ASan a use-after-free shows here). The write lands, and the
 * reopened image reads it. */
static void test_reopen_after_allocating_write(void)
{
	td_vbd_t *vbd = tapdisk_vbd_create(7);
	const char *base = make_disk("alloc-base.raw", 4 << 20, 4);
	char ov[512], params[600];
	struct reopen_state r = { vbd, params, 0, "" };
	td_vbd_request_t v;
	struct waiter w = { 0, 0, 1 };
	char *buf = buffer(65536, 5);
	char err[512];

	snprintf(ov, sizeof(ov), "%s/alloc.vhd", dir);
	snprintf(params, sizeof(params), "renew:%s", ov);
	CHECK(vhd_snapshot(base + 4, ov) == 0, "snapshot %s: %s", ov, vhd_errmsg());
	CHECK(tapdisk_vbd_open(vbd, params, 0, err, sizeof(err)) == 0, "open: %s", err);
	queue(vbd, &v, VBD_OP_WRITE, buf, 2048, 128, &w); /* a new block */
	tapdisk_vbd_hold(vbd, reopen_when_quiesced, &r);
	CHECK(vbd->state == VBD_PAUSING && !r.reopened, "holding with the write in flight");
	run(&w);
	run_for(1); /* the waiter is told on the loop's next turn */
	CHECK(r.reopened == 1 && w.done == 1 && !w.err,
	      "reopened after the write: %d (%s), write %d err %d", r.reopened, r.err, w.done, w.err);
	w = (struct waiter){ 0, 0, 1 };
	memset(buf, 0, 65536);
	queue(vbd, &v, VBD_OP_READ, buf, 2048, 128, &w);
	run(&w);
	CHECK(!w.err && all(buf, 65536, 5), "the reopened overlay holds the write: %d", w.err);
	tapdisk_vbd_free(vbd);
	free(buf);
}

static void test_forward(void)
{
	td_image_t image = { 0 };
	td_request_t treq = { 0 };
	char *buf = buffer(4096, 0x77);

	treq.op = TD_OP_READ;
	treq.buf = buf;
	treq.sec = 0;
	treq.secs = 8;
	treq.image = &image;
	treq.cb = fwd_cb;
	td_forward_request(treq);
	CHECK(fwd_done == 8 && !fwd_err && all(buf, 4096, 0), "past the last image: zeros");
	treq.op = TD_OP_WRITE;
	fwd_done = 0;
	td_forward_request(treq);
	CHECK(fwd_err == -EIO, "a forwarded write fails: %d", fwd_err);
	free(buf);
}

int main(void)
{
	const char *top = getenv("RENEW_TOP");

	snprintf(dir, sizeof(dir), "%s/tests/tmp/vbd-unit.%d", top ? top : ".", (int)getpid());
	mkdir(top ? "" : "tests", 0755);
	if (mkdir(dir, 0755) < 0) {
		snprintf(dir, sizeof(dir), "/tmp/vbd-unit.%d", (int)getpid());
		if (mkdir(dir, 0755) < 0) {
			perror(dir);
			return 1;
		}
	}
	sched_init();
	test_io();
	test_open_errors();
	test_read_only();
	test_pause();
	test_holds_and_gate();
	test_reopen_after_allocating_write();
	test_deep_chain();
	test_forward();
	td_aio_fini();
	sched_fini();
	if (!failures) {
		char cmd[300];

		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
		if (system(cmd) != 0)
			fprintf(stderr, "could not remove %s\n", dir);
	}
	printf("%s: %d failures\n", failures ? "FAIL" : "ok", failures);
	return failures ? 1 : 0;
}
