/* The libaio queue: drivers queue tiocbs, one hook submits everything
 * queued in one io_submit batch per loop iteration, and completions are
 * reaped through an eventfd watched by the scheduler. A tiocb is never
 * lost: what the kernel refuses for lack of room stays queued. */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <unistd.h>
#include "scheduler.h"
#include "tapdisk.h"
#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#endif
#endif
#ifndef RUNNING_ON_VALGRIND
#define RUNNING_ON_VALGRIND 0
#endif

#define AIO_DEPTH 1024
#define AIO_BATCH 256

static io_context_t ctx;
static int ready;
static int efd = -1;
static int efd_id, hook_id, retry_timer;
static struct tiocb *qhead, *qtail;
static int queued, inflight;

static void aio_reap(int fd, int events, void *arg);
static void aio_submit_hook(void *arg);

/* Set up the kernel context, its eventfd and the submission hook once. */
static int aio_init(void)
{
	int r;

	if (ready)
		return 0;
	memset(&ctx, 0, sizeof(ctx));
	r = io_setup(AIO_DEPTH, &ctx);
	if (r < 0) {
		errno = -r;
		EPRINTF("io_setup(%d): %m (see /proc/sys/fs/aio-max-nr)", AIO_DEPTH);
		return r;
	}
	efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (efd < 0) {
		r = -errno;
		EPRINTF("eventfd: %m");
		io_destroy(ctx);
		return r;
	}
	/* edge-triggered: completions are taken from the ring, the counter never read */
	efd_id = sched_register_fd(efd, SCHED_READ | SCHED_EDGE, aio_reap, NULL);
	hook_id = efd_id > 0 ? sched_add_hook(aio_submit_hook, NULL) : -1;
	if (efd_id < 0 || hook_id < 0) {
		EPRINTF("aio: cannot register with the event loop");
		if (efd_id > 0)
			sched_unregister(efd_id);
		close(efd);
		io_destroy(ctx);
		return -ENOMEM;
	}
	ready = 1;
	return 0;
}

void td_aio_fini(void)
{
	if (!ready)
		return;
	if (inflight || queued)
		tlog(TLOG_WARN, "aio: tearing down with %d in flight, %d queued", inflight, queued);
	sched_remove_hook(hook_id);
	sched_unregister(efd_id);
	if (retry_timer)
		sched_cancel_timer(retry_timer);
	retry_timer = 0;
	close(efd);
	efd = -1;
	io_destroy(ctx);
	ready = 0;
}

int td_aio_pending(void)
{
	return queued + inflight;
}

/* Fill the callback fields common to every kind of tiocb. */
static void prep_common(struct tiocb *t, td_queue_callback_t cb, void *arg)
{
	t->cb = cb;
	t->arg = arg;
	t->next = NULL;
	t->submitted = NULL;
	t->iocb.data = t;
}

void td_prep_read(td_driver_t *drv, struct tiocb *t, int fd, char *buf, size_t bytes,
		  long long offset, td_queue_callback_t cb, void *arg)
{
	io_prep_pread(&t->iocb, fd, buf, bytes, offset);
	prep_common(t, cb, arg);
}

void td_prep_write(td_driver_t *drv, struct tiocb *t, int fd, char *buf, size_t bytes,
		   long long offset, td_queue_callback_t cb, void *arg)
{
	io_prep_pwrite(&t->iocb, fd, buf, bytes, offset);
	prep_common(t, cb, arg);
}

void td_prep_fdsync(td_driver_t *drv, struct tiocb *t, int fd, td_queue_callback_t cb, void *arg)
{
	io_prep_fdsync(&t->iocb, fd);
	prep_common(t, cb, arg);
}

void td_tiocb_on_submit(struct tiocb *t, td_queue_callback_t cb)
{
	t->submitted = cb;
}

/* Call a tiocb's callback; it may reuse or free the tiocb. */
static void tiocb_done(struct tiocb *t, int err)
{
	t->cb(t->arg, t, err);
}

void td_queue_tiocb(td_driver_t *drv, struct tiocb *t)
{
	int r = aio_init();

	if (r < 0) {
		tiocb_done(t, r);
		return;
	}
	t->next = NULL;
	if (qtail)
		qtail->next = t;
	else
		qhead = t;
	qtail = t;
	queued++;
	io_set_eventfd(&t->iocb, efd);
	sched_kick(); /* queued from a hook or outside the loop: submit without waiting */
}

/* Take the first queued tiocb off the queue. */
static struct tiocb *dequeue(void)
{
	struct tiocb *t = qhead;

	qhead = t->next;
	if (!qhead)
		qtail = NULL;
	t->next = NULL;
	queued--;
	return t;
}

/* Bytes a completed iocb must have transferred to count as a success. */
static long long expected_bytes(const struct iocb *io)
{
	long long n = 0;

	switch (io->aio_lio_opcode) {
	case IO_CMD_PREAD:
	case IO_CMD_PWRITE:
		return (long long)io->u.c.nbytes;
	case IO_CMD_PREADV:
	case IO_CMD_PWRITEV:
		for (long i = 0; i < (long)io->u.c.nbytes; i++)
			n += (long long)((const struct iovec *)io->u.c.buf)[i].iov_len;
		return n;
	default:
		return 0;
	}
}

/* A tiocb the kernel refused outright: fdsync falls back to fdatasync(),
 * anything else fails with the kernel's error. */
static void submit_failed(struct tiocb *t, int r)
{
	if (t->iocb.aio_lio_opcode == IO_CMD_FDSYNC && r == -EINVAL) {
		static int warned;

		if (!warned++)
			tlog(TLOG_WARN, "aio: fdsync refused by the kernel, using fdatasync()");
		r = fdatasync(t->iocb.aio_fildes) < 0 ? -errno : 0;
	} else {
		errno = -r;
		EPRINTF("io_submit: fd %d: %m", t->iocb.aio_fildes);
	}
	tiocb_done(t, r);
}

/* Wake up to retry a submission the kernel had no room for. */
static void retry_wakeup(void *arg)
{
	retry_timer = 0;
}

/* Submit everything queued, in batches, as room allows. */
static void aio_submit_hook(void *arg)
{
	struct iocb *batch[AIO_BATCH];

	while (qhead && inflight < AIO_DEPTH) {
		struct tiocb *t = qhead;
		int n = 0, r;

		while (t && n < AIO_BATCH && inflight + n < AIO_DEPTH) {
			batch[n++] = &t->iocb;
			t = t->next;
		}
		r = io_submit(ctx, n, batch);
		if (r == -EAGAIN || r == -EINTR || r == 0) {
			/* completions will wake us; without any, poll shortly */
			if (!inflight && !retry_timer)
				retry_timer = sched_timer(1, retry_wakeup, NULL);
			return;
		}
		if (r < 0) {
			submit_failed(dequeue(), r);
			continue;
		}
		inflight += r;
		for (int i = 0; i < r; i++) {
			struct tiocb *done = dequeue();
			td_queue_callback_t cb = done->submitted;

			/* it cannot complete before the next reap: still ours */
			done->submitted = NULL;
			if (cb)
				cb(done->arg, done, 0);
		}
	}
}

/* A short transfer: a write stopped by a full disk should say so, so
 * write the rest once, synchronously (an error path), and report its
 * errno; a short read is past the end of the file. */
static int short_io_error(const struct iocb *io, long long done)
{
	long long left = (long long)expected_bytes(io) - done;
	ssize_t r;

	if (io->aio_lio_opcode != IO_CMD_PWRITE || done < 0 || left <= 0)
		return -EIO;
	r = pwrite(io->aio_fildes, (char *)io->u.c.buf + done, (size_t)left,
		   io->u.c.offset + done);
	if (r == left)
		return 0;
	return r < 0 ? -errno : -ENOSPC;
}

/* Tests make the Nth read, write or fsync fail after it ran, as a failing
 * disk may (RENEW_FAULT=aio.read|aio.write|aio.fsync:N:eio), or kill the
 * daemon once it ran (no action). */
static int event_fault(const struct iocb *io)
{
	int r;

	switch (io->aio_lio_opcode) {
	case IO_CMD_PREAD:
	case IO_CMD_PREADV:
		r = td_fault("aio.read");
		break;
	case IO_CMD_PWRITE:
	case IO_CMD_PWRITEV:
		r = td_fault("aio.write");
		break;
	case IO_CMD_FDSYNC:
		r = td_fault("aio.fsync");
		break;
	default:
		return 0;
	}
	return r == -EINPROGRESS ? 0 : r; /* no point here can be delayed */
}

/* One completion: call its tiocb back with 0 or a negative errno. */
static void event_done(const struct io_event *ev)
{
	struct tiocb *t = ev->data;
	long long res = (long long)(long)ev->res;
	int err = 0;

	if (res < 0)
		err = (int)res;
	else if (res != expected_bytes(&t->iocb))
		err = short_io_error(&t->iocb, res);
	if (!err)
		err = event_fault(&t->iocb);
	tiocb_done(t, err);
}

/* Reap completed iocbs (waiting up to `wait` for the first) and call
 * their tiocbs back; returns how many completed. */
static int aio_reap_wait(struct timespec *wait)
{
	struct io_event evs[AIO_BATCH];
	struct timespec zero = { 0, 0 };
	int n, total = 0;

	do {
		n = io_getevents(ctx, total || !wait ? 0 : 1, AIO_BATCH, evs, total || !wait ? &zero : wait);
		if (n < 0) {
			if (n == -EINTR)
				continue;
			errno = -n;
			EPRINTF("io_getevents: %m");
			return total;
		}
		inflight -= n;
		total += n;
		for (int i = 0; i < n; i++)
			event_done(&evs[i]);
	} while (n == AIO_BATCH);
	return total;
}

/* The kernel's completion ring, mapped in our memory (fs/aio.c). */
struct aio_ring {
	unsigned id;
	unsigned nr;
	unsigned head;
	unsigned tail;
	unsigned magic;
	unsigned compat_features;
	unsigned incompat_features;
	unsigned header_length;
	struct io_event io_events[];
};
#define AIO_RING_MAGIC 0xa10a10a1

/* Take completions from the ring without a system call; -1 when the ring
 * is not the layout we know (then io_getevents is used). */
static int aio_reap_ring(void)
{
	struct aio_ring *ring = (struct aio_ring *)ctx;
	struct io_event evs[AIO_BATCH];
	int total = 0;

	/* valgrind learns that a read filled its buffer from io_getevents only */
	if (ring->magic != AIO_RING_MAGIC || ring->incompat_features != 0 || RUNNING_ON_VALGRIND)
		return -1;
	for (;;) {
		unsigned head = ring->head, tail = __atomic_load_n(&ring->tail, __ATOMIC_ACQUIRE);
		int n = 0;

		while (head != tail && n < AIO_BATCH) {
			evs[n++] = ring->io_events[head];
			head = (head + 1) % ring->nr;
		}
		if (!n)
			return total;
		__atomic_store_n(&ring->head, head, __ATOMIC_RELEASE);
		inflight -= n;
		total += n;
		for (int i = 0; i < n; i++)
			event_done(&evs[i]);
	}
}

/* The eventfd says iocbs completed: reap them. */
static void aio_reap(int fd, int events, void *arg)
{
	if (aio_reap_ring() < 0)
		aio_reap_wait(NULL);
}

int td_aio_poll(int timeout_ms)
{
	struct timespec ts = { timeout_ms / 1000, (long)(timeout_ms % 1000) * 1000000 };

	if (!ready)
		return 0;
	aio_submit_hook(NULL);
	if (!inflight)
		return 0;
	return aio_reap_wait(&ts);
}
