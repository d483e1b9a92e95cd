/* Write-behind: an overwrite is acknowledged once the kernel has taken it
 * (io_submit accepted the iocb), not once it has landed. A 4 KiB write then
 * costs the guest the trip to the kernel, not the disk's latency, and the
 * disk sees as deep a queue as the guest can fill.
 *
 * The disk behaves as one with a volatile write cache, which is what the
 * NBD export announces (SEND_FLUSH) and what guests expect of it:
 * - a flush waits until every write acknowledged before it has landed,
 *   then syncs; a write that failed after its ack fails that flush, and
 *   from then on writes are acknowledged only when they land;
 * - a read or write overlapping a write still landing waits for it, so a
 *   guest reads what it wrote and its overlapping writes land in order;
 * - pause, drain and close wait for landing writes (the vbd counts them);
 * - only plain overwrites go behind: the driver hands over a write only
 *   when its landing needs nothing more (no bitmap, no BAT), and only on
 *   filesystems whose overwrites never allocate, so a full disk cannot
 *   fail a write already acknowledged;
 * - the kernel finishes a submitted write even when the process is killed
 *   (exit waits for in-flight aio), so a kill -9 loses nothing acknowledged.
 * The data is copied: the client's buffer is free once the ack is sent. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/vfs.h>
#include "scheduler.h"
#include "vbd.h"
#include "write-behind.h"

#define EXT4_MAGIC  0xEF53u       /* ext2, ext3 and ext4 */
#define TMPFS_MAGIC 0x01021994u
#define FAULT_DELAY_MS 300

/* One write between its take and its landing. */
struct wb_write {
	struct tiocb tiocb;
	struct td_wb *wb;
	td_vbd_t *vbd;
	td_request_t treq;      /* completed when submitted */
	uint64_t off, len, seq;
	char *buf;
	size_t cap;             /* of buf */
	int acked;
	int err;
	int timer;              /* a test's injected delay before settling */
	struct wb_write *prev, *next;
};

/* A request parked on an overlap, or a flush waiting for writes up to seq. */
struct wb_waiter {
	uint64_t off, len, seq;
	td_wb_cb_t cb;
	void *arg;
	struct wb_waiter *next;
};

void td_wb_init(struct td_wb *wb, int fd, const char *path)
{
	const char *env = getenv("RENEW_WRITE_BEHIND");
	struct statfs fs;

	memset(wb, 0, sizeof(*wb));
	wb->path = strdup(path);
	if (!wb->path || (env && !strcmp(env, "0")))
		return;
	if (fstatfs(fd, &fs) < 0) {
		tlog(TLOG_WARN, "write-behind: %s: statfs: %s; off", path, strerror(errno));
		return;
	}
	/* elsewhere an overwrite may allocate (copy-on-write, reflinks, thin
	 * provisioning): a full disk would fail a write already acked */
	if ((unsigned long)fs.f_type != EXT4_MAGIC && (unsigned long)fs.f_type != TMPFS_MAGIC) {
		tlog(TLOG_INFO, "write-behind: %s: off (filesystem 0x%lx may allocate on overwrite)",
		     path, (unsigned long)fs.f_type);
		return;
	}
	wb->enabled = 1;
}

/* Do [a, a + alen) and [b, b + blen) share a byte? */
static int overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
	return a < b + blen && b < a + alen;
}

#define WINDOW_SHIFT 21

/* The filter's bucket of the 2 MiB window `win`. */
static unsigned window_bucket(uint64_t win)
{
	return (unsigned)((win * 0x9E3779B97F4A7C15ull) >> 52) % WB_WINDOWS;
}

/* Count a landing write in (+1) or out (-1) of the windows it touches. */
static void windows_add(struct td_wb *wb, uint64_t off, uint64_t len, int delta)
{
	for (uint64_t win = off >> WINDOW_SHIFT; win <= (off + len - 1) >> WINDOW_SHIFT; win++)
		wb->windows[window_bucket(win)] += (uint16_t)delta;
}

/* The filter answers most lookups; the list is walked only on a bucket hit. */
int td_wb_landing(const struct td_wb *wb, uint64_t off, uint64_t len)
{
	uint64_t win, last = (off + len - 1) >> WINDOW_SHIFT;

	if (!wb->head)
		return 0;
	for (win = off >> WINDOW_SHIFT; win <= last; win++)
		if (wb->windows[window_bucket(win)])
			break;
	if (win > last)
		return 0;
	for (const struct wb_write *w = wb->head; w; w = w->next)
		if (overlaps(w->off, w->len, off, len))
			return 1;
	return 0;
}

/* Append a waiter to a list. */
static int park(struct wb_waiter **head, struct wb_waiter **tail, uint64_t off, uint64_t len,
		uint64_t seq, td_wb_cb_t cb, void *arg)
{
	struct wb_waiter *q = calloc(1, sizeof(*q));

	if (!q)
		return -ENOMEM;
	*q = (struct wb_waiter){ off, len, seq, cb, arg, NULL };
	if (*tail)
		(*tail)->next = q;
	else
		*head = q;
	*tail = q;
	return 0;
}

int td_wb_wait(struct td_wb *wb, uint64_t off, uint64_t len, td_wb_cb_t cb, void *arg)
{
	int err = park(&wb->waiters, &wb->waiters_tail, off, len, 0, cb, arg);

	if (!err)
		wb->stats.waits++;
	return err;
}

/* Run the waiters nothing blocks any more, in the order they came. Those
 * still blocked stay parked, in order; a callback may park new ones. */
static void release_waiters(struct td_wb *wb)
{
	struct wb_waiter *q = wb->waiters, *keep = NULL, *keep_tail = NULL;

	wb->waiters = wb->waiters_tail = NULL;
	while (q) {
		struct wb_waiter *next = q->next;

		q->next = NULL;
		if (td_wb_landing(wb, q->off, q->len)) {
			if (keep_tail)
				keep_tail->next = q;
			else
				keep = q;
			keep_tail = q;
		} else {
			q->cb(q->arg, 0);
			free(q);
		}
		q = next;
	}
	/* the kept ones came first: put them before any parked meanwhile */
	if (keep) {
		keep_tail->next = wb->waiters;
		if (!wb->waiters)
			wb->waiters_tail = keep_tail;
		wb->waiters = keep;
	}
}

/* Flushes whose writes have all landed go on, oldest first. */
static void release_barriers(struct td_wb *wb)
{
	while (wb->barriers && (!wb->head || wb->head->seq > wb->barriers->seq)) {
		struct wb_waiter *q = wb->barriers;
		int err = wb->err;

		wb->barriers = q->next;
		if (!wb->barriers)
			wb->barriers_tail = NULL;
		wb->err = 0;
		q->cb(q->arg, err);
		free(q);
	}
}

void td_wb_barrier(struct td_wb *wb, td_wb_cb_t cb, void *arg)
{
	int err;

	if (!wb->head && !wb->barriers) {
		err = wb->err;
		wb->err = 0;
		cb(arg, err);
		return;
	}
	err = park(&wb->barriers, &wb->barriers_tail, 0, 0, wb->seq, cb, arg);
	if (err) {
		cb(arg, err);
		return;
	}
	wb->stats.barriers++;
}

/* The write is off the list: the vbd, the waiters and flushes may go on. */
static void wb_unlink(struct td_wb *wb, struct wb_write *w)
{
	if (w->prev)
		w->prev->next = w->next;
	else
		wb->head = w->next;
	if (w->next)
		w->next->prev = w->prev;
	else
		wb->tail = w->prev;
	wb->count--;
	wb->bytes -= w->len;
	windows_add(wb, w->off, w->len, -1);
}

/* Keep a settled write and its buffer for the next one, up to a bound. */
static void wb_put(struct td_wb *wb, struct wb_write *w)
{
	if (wb->pooled + w->cap > WB_POOL_BYTES) {
		free(w->buf);
		free(w);
		return;
	}
	w->next = wb->pool;
	wb->pool = w;
	wb->pooled += w->cap;
}

/* A write with room for `len` bytes: pooled, or new. */
static struct wb_write *wb_get(struct td_wb *wb, size_t len)
{
	struct wb_write *w = wb->pool;
	size_t cap = (len + 4095) & ~(size_t)4095;
	void *buf;

	if (w && w->cap >= len) {
		wb->pool = w->next;
		wb->pooled -= w->cap;
		return w;
	}
	w = calloc(1, sizeof(*w));
	if (!w || posix_memalign(&buf, 4096, cap)) {
		free(w);
		return NULL;
	}
	w->buf = buf;
	w->cap = cap;
	return w;
}

/* The write landed (or failed): settle it and let whatever waited go. */
static void wb_settle(struct wb_write *w)
{
	struct td_wb *wb = w->wb;
	td_vbd_t *vbd = w->vbd;
	int err = w->err;

	wb_unlink(wb, w);
	if (!w->acked) {
		td_complete_request(w->treq, err); /* the kernel never took it */
	} else if (err) {
		EPRINTF("write-behind: %s: write of %llu bytes at offset %llu failed after its "
			"ack: %s; the next flush reports it",
			wb->path, (unsigned long long)w->len, (unsigned long long)w->off,
			strerror(-err));
		wb->stats.errors++;
		wb->broken = 1;
		if (!wb->err)
			wb->err = err;
	}
	wb_put(wb, w);
	release_waiters(wb);
	release_barriers(wb);
	tapdisk_vbd_behind(vbd, -1);
}

/* A test's injected delay is over: settle now. */
static void wb_delayed(void *arg)
{
	struct wb_write *w = arg;

	w->timer = 0;
	wb_settle(w);
}

static void wb_landed(void *arg, struct tiocb *t, int err)
{
	struct wb_write *w = arg;
	int f = w->acked ? td_fault("write-behind.landed") : 0;

	(void)t;
	w->err = err ? err : f == -EINPROGRESS ? 0 : f;
	if (f == -EINPROGRESS && (w->timer = sched_timer(FAULT_DELAY_MS, wb_delayed, w)) > 0)
		return;
	wb_settle(w);
}

/* The kernel has the data: acknowledge the write. */
static void wb_submitted(void *arg, struct tiocb *t, int err)
{
	struct wb_write *w = arg;

	(void)t;
	(void)err;
	w->acked = 1;
	td_complete_request(w->treq, 0);
}

int td_wb_room(const struct td_wb *wb, size_t len)
{
	return wb->enabled && !wb->broken && len <= WB_MAX_LEN && wb->count < WB_MAX_WRITES &&
	       wb->bytes + len <= WB_MAX_BYTES;
}

int td_wb_write(struct td_wb *wb, td_driver_t *drv, int fd, td_request_t treq, uint64_t off)
{
	size_t len = (size_t)treq.secs << 9;
	struct wb_write *w;
	char *buf;
	size_t cap;

	if (!treq.vreq || !td_wb_room(wb, len))
		return 0;
	w = wb_get(wb, len);
	if (!w)
		return 0; /* the plain path needs no memory of ours */
	buf = w->buf;
	cap = w->cap;
	memcpy(buf, treq.buf, len);
	*w = (struct wb_write){ .wb = wb, .vbd = treq.vreq->vbd, .treq = treq, .off = off,
				.len = len, .seq = ++wb->seq, .buf = buf, .cap = cap, .prev = wb->tail };
	windows_add(wb, off, len, 1);
	if (wb->tail)
		wb->tail->next = w;
	else
		wb->head = w;
	wb->tail = w;
	wb->count++;
	wb->bytes += len;
	if (wb->count > wb->stats.max_landing)
		wb->stats.max_landing = wb->count;
	wb->stats.writes++;
	tapdisk_vbd_behind(w->vbd, 1);
	td_prep_write(drv, &w->tiocb, fd, buf, len, (long long)off, wb_landed, w);
	td_tiocb_on_submit(&w->tiocb, wb_submitted);
	td_queue_tiocb(drv, &w->tiocb);
	return 1;
}

/* Wait here until nothing is landing (close). */
static void wb_drain(struct td_wb *wb)
{
	while (wb->head) {
		struct wb_write *w = wb->head;

		if (w->timer) { /* landed; only a test's delay holds it */
			sched_cancel_timer(w->timer);
			w->timer = 0;
			wb_settle(w);
			continue;
		}
		td_aio_poll(100);
	}
}

void td_wb_fini(struct td_wb *wb)
{
	wb_drain(wb);
	while (wb->pool) {
		struct wb_write *w = wb->pool;

		wb->pool = w->next;
		free(w->buf);
		free(w);
	}
	wb->pooled = 0;
	free(wb->path);
	wb->path = NULL;
	wb->enabled = 0;
}

int td_wb_stats_json(const struct td_wb *wb, char *buf, size_t len)
{
	return snprintf(buf, len,
			"\"write_behind\":%s,\"write_behind_writes\":%llu,\"write_behind_waits\":%llu,"
			"\"write_behind_flush_waits\":%llu,\"write_behind_errors\":%llu,"
			"\"write_behind_max_landing\":%u",
			wb->enabled && !wb->broken ? "true" : "false",
			(unsigned long long)wb->stats.writes, (unsigned long long)wb->stats.waits,
			(unsigned long long)wb->stats.barriers, (unsigned long long)wb->stats.errors,
			wb->stats.max_landing);
}
