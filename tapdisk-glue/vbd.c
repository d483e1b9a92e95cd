/* The vbd: a chain of images opened from "type:path", the client request
 * queue (validation, splitting into td_requests, FUA, write-zeroes,
 * flush), pause/unpause with reopen, and statistics. */
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "scheduler.h"
#include "vbd.h"

#define SECTOR_SHIFT 9
#define MAX_CHAIN 64                    /* a loop in parent links stops here */
#define ZERO_BUF_SIZE (1u << 20)        /* write-zeroes: one shared buffer */
#define ZERO_BUF_SECS (ZERO_BUF_SIZE >> SECTOR_SHIFT)
#define ZERO_WINDOW 8                   /* write-zeroes pieces in flight */
#define MAX_NESTING 8                   /* client callbacks deeper are deferred */

enum { PH_DATA = 0, PH_FLUSH = 1 };

/* Someone waiting for the vbd to be quiesced. */
struct vbd_waiter {
	void (*done)(td_vbd_t *vbd, void *arg);
	void *arg;
	struct vbd_waiter *next;
};

static struct list_head vbds = LIST_HEAD_INIT(vbds);
static char *zero_buf;
static struct list_head deferred = LIST_HEAD_INIT(deferred);
static int deferred_hook;
static int nesting;

static void vbd_issue(td_vbd_t *vbd, td_vbd_request_t *vreq);
static void vreq_account(td_vbd_request_t *vreq, int64_t done, int err);

/* Copy a message into the caller's buffer and log it. */
static void set_err(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	EPRINTF("%s", msg);
	if (err && errlen)
		snprintf(err, errlen, "%s", msg);
}

td_vbd_t *tapdisk_vbd_create(int minor)
{
	td_vbd_t *vbd = calloc(1, sizeof(*vbd));

	if (!vbd)
		return NULL;
	vbd->minor = minor;
	vbd->state = VBD_CLOSED;
	INIT_LIST_HEAD(&vbd->held);
	INIT_LIST_HEAD(&vbd->inflight);
	list_add_tail(&vbd->entry, &vbds);
	return vbd;
}

td_vbd_t *tapdisk_vbd_find(int minor)
{
	struct list_head *p;

	list_for_each(p, &vbds) {
		td_vbd_t *vbd = list_entry(p, td_vbd_t, entry);

		if (vbd->minor == minor)
			return vbd;
	}
	return NULL;
}

struct list_head *tapdisk_vbd_list(void)
{
	return &vbds;
}

const char *tapdisk_vbd_state_name(const td_vbd_t *vbd)
{
	static const char *names[] = { "closed", "running", "pausing", "paused" };

	return vbd->state >= 0 && vbd->state <= VBD_PAUSED ? names[vbd->state] : "unknown";
}

/* Close and free one image and its driver. */
static void image_free(td_image_t *image)
{
	td_driver_t *drv = image->driver;

	if (drv) {
		if (drv->state == TD_DRIVER_OPEN && drv->ops->td_close)
			drv->ops->td_close(drv);
		free(drv->data);
		free(drv->name);
		free(drv);
	}
	free(image->name);
	free(image);
}

/* Close every image of the chain, top first. */
static void chain_close(td_vbd_t *vbd)
{
	td_image_t *image = vbd->top;

	while (image) {
		td_image_t *next = image->next;

		image_free(image);
		image = next;
	}
	vbd->top = NULL;
}

/* Open one image of type `type` at `path`. */
static int image_open(td_vbd_t *vbd, int type, const char *path, td_flag_t flags,
		      td_image_t **out, char *err, size_t errlen)
{
	const struct disk_info *di = tapdisk_disktype_get(type);
	td_image_t *image;
	td_driver_t *drv;
	int r;

	if (!di || !di->drv || !di->drv->td_open) {
		set_err(err, errlen, "open: %s: disk type %d not supported", path, type);
		return -EPROTONOSUPPORT;
	}
	image = calloc(1, sizeof(*image));
	drv = calloc(1, sizeof(*drv));
	if (!image || !drv || !(image->name = strdup(path)) || !(drv->name = strdup(path)) ||
	    !(drv->data = calloc(1, di->drv->private_data_size > 0 ? (size_t)di->drv->private_data_size : 1))) {
		if (drv) {
			free(drv->name);
			free(drv->data);
		}
		free(drv);
		if (image)
			free(image->name);
		free(image);
		set_err(err, errlen, "open: %s: out of memory", path);
		return -ENOMEM;
	}
	image->type = drv->type = type;
	image->flags = drv->flags = flags;
	image->driver = drv;
	image->vbd = vbd;
	drv->ops = di->drv;
	drv->image = image;
	drv->info.sector_size = 512;
	tlog_clear_error();
	r = di->drv->td_open(drv, path, flags);
	if (r < 0) {
		const char *why = tlog_last_error();

		if (*why)
			set_err(err, errlen, "open %s:%s: %s", di->name, path, why);
		else
			set_err(err, errlen, "open %s:%s: %s", di->name, path, strerror(-r));
		image_free(image);
		return r;
	}
	drv->state = TD_DRIVER_OPEN;
	*out = image;
	return 0;
}


/* Open the parents of `image` until one has none. */
static int chain_open_parents(td_vbd_t *vbd, td_image_t *image, td_flag_t flags, char *err, size_t errlen)
{
	td_flag_t pflags = (flags & (TD_OPEN_QUIET | TD_OPEN_NO_O_DIRECT | TD_OPEN_STRICT)) |
			   TD_OPEN_RDONLY | TD_OPEN_SHAREABLE;

	for (int depth = 0;; depth++) {
		td_driver_t *child = image->driver;
		td_disk_id_t id = { 0 };
		td_image_t *parent;
		char *path;
		int r;

		if (!child->ops->td_get_parent_id)
			return 0;
		tlog_clear_error();
		r = child->ops->td_get_parent_id(child, &id);
		if (r == TD_NO_PARENT) {
			free(id.name);
			return 0;
		}
		if (r < 0 || !id.name) {
			const char *why = tlog_last_error();

			free(id.name);
			set_err(err, errlen, "open: %s: cannot find its parent: %s", child->name,
				*why ? why : strerror(r < 0 ? -r : EINVAL));
			return r < 0 ? r : -EINVAL;
		}
		if (depth >= MAX_CHAIN) {
			free(id.name);
			set_err(err, errlen, "open: %s: chain longer than %d images (a parent loop?)",
				child->name, MAX_CHAIN);
			return -ELOOP;
		}
		path = strdup(id.name);  /* the driver resolved it already */
		free(id.name);
		if (!path) {
			set_err(err, errlen, "open: %s: out of memory", child->name);
			return -ENOMEM;
		}
		r = image_open(vbd, id.type, path, pflags, &parent, err, errlen);
		free(path);
		if (r < 0)
			return r;
		image->next = parent; /* linked first so chain_close frees it */
		if (child->ops->td_validate_parent) {
			tlog_clear_error();
			r = child->ops->td_validate_parent(child, parent->driver, flags);
			if (r < 0) {
				const char *why = tlog_last_error();

				set_err(err, errlen, "open: %s: parent %s refused: %s", child->name,
					parent->name, *why ? why : strerror(-r));
				return r;
			}
		}
		image = parent;
	}
}

/* Open "type:path" and its parents as the vbd's chain. */
static int chain_open(td_vbd_t *vbd, const char *params, td_flag_t flags, char *err, size_t errlen)
{
	const char *path;
	td_image_t *top;
	int type, r;

	type = tapdisk_parse_disk_type(params, &path);
	if (type < 0) {
		set_err(err, errlen, "open: %s: %s", params ? params : "(null)",
			type == -EPROTONOSUPPORT ? "unknown disk type (aio, renew, vhd)"
						 : "expected TYPE:PATH");
		return type;
	}
	r = image_open(vbd, type, path, flags, &top, err, errlen);
	if (r < 0)
		return r;
	vbd->top = top;
	r = chain_open_parents(vbd, top, flags, err, errlen);
	if (r < 0) {
		chain_close(vbd);
		return r;
	}
	vbd->size = top->driver->info.size;
	return 0;
}

int tapdisk_vbd_open(td_vbd_t *vbd, const char *params, td_flag_t flags, char *err, size_t errlen)
{
	char *copy;
	int r;

	if (vbd->top) {
		set_err(err, errlen, "open: minor %d already has %s open", vbd->minor, vbd->params);
		return -EBUSY;
	}
	copy = strdup(params ? params : "");
	if (!copy) {
		set_err(err, errlen, "open: out of memory");
		return -ENOMEM;
	}
	r = chain_open(vbd, params, flags, err, errlen);
	if (r < 0) {
		free(copy);
		return r;
	}
	free(vbd->params);
	vbd->params = copy;
	vbd->flags = flags;
	vbd->state = VBD_RUNNING;
	DPRINTF("minor %d: opened %s, %llu sectors", vbd->minor, params, (unsigned long long)vbd->size);
	return 0;
}

/* Fail every held request (the vbd is going away). */
static void fail_held(td_vbd_t *vbd, int err)
{
	while (!list_empty(&vbd->held)) {
		td_vbd_request_t *vreq = list_first_entry(&vbd->held, td_vbd_request_t, entry);

		list_del(&vreq->entry);
		vbd->stats.errors++;
		vreq->cb(vreq, err, vreq->cb_data);
	}
}

/* Requests in flight, or writes acked and still landing? */
static int vbd_busy(const td_vbd_t *vbd)
{
	return !list_empty(&vbd->inflight) || vbd->behind;
}

int tapdisk_vbd_drain(td_vbd_t *vbd, int timeout_ms)
{
	uint64_t end = sched_now_ns() + (uint64_t)timeout_ms * 1000000ull;

	while (vbd_busy(vbd)) {
		if (sched_now_ns() >= end)
			return -ETIMEDOUT;
		td_aio_poll(100);
	}
	return 0;
}

void tapdisk_vbd_close(td_vbd_t *vbd)
{
	fail_held(vbd, -ESHUTDOWN);
	if (vbd_busy(vbd) && tapdisk_vbd_drain(vbd, 30000) < 0) {
		EPRINTF("close: minor %d: requests still in flight after 30 s; leaving %s open",
			vbd->minor, vbd->params ? vbd->params : "");
		return;
	}
	chain_close(vbd);
	vbd->state = VBD_CLOSED;
	vbd->size = 0;
}

void tapdisk_vbd_free(td_vbd_t *vbd)
{
	if (!vbd)
		return;
	if (vbd->top)
		tapdisk_vbd_close(vbd);
	if (vbd->top)
		return; /* could not close: leak rather than free what is in use */
	/* deferred completions of this vbd have been delivered or are not ours */
	list_del(&vbd->entry);
	if (vbd->quiesce_timer)
		sched_cancel_timer(vbd->quiesce_timer);
	while (vbd->waiters) {
		struct vbd_waiter *w = vbd->waiters;

		vbd->waiters = w->next;
		free(w);
	}
	free(vbd->params);
	free(vbd);
}

/* The shared, aligned buffer of zeros that write-zeroes writes from. */
static char *get_zero_buf(void)
{
	void *p;

	if (zero_buf)
		return zero_buf;
	if (posix_memalign(&p, 4096, ZERO_BUF_SIZE))
		return NULL;
	memset(p, 0, ZERO_BUF_SIZE);
	zero_buf = p;
	return zero_buf;
}

/* Deliver the client callbacks deferred because of deep nesting. */
static void run_deferred(void *arg)
{
	while (!list_empty(&deferred)) {
		td_vbd_request_t *vreq = list_first_entry(&deferred, td_vbd_request_t, entry);

		list_del(&vreq->entry);
		vreq->cb(vreq, vreq->error, vreq->cb_data);
	}
}

/* Call the client back, or defer it when completions nest too deep. */
static void vreq_callback(td_vbd_request_t *vreq)
{
	if (nesting >= MAX_NESTING) {
		if (!deferred_hook)
			deferred_hook = sched_add_hook(run_deferred, NULL);
		list_add_tail(&vreq->entry, &deferred);
		sched_kick();
		return;
	}
	nesting++;
	vreq->cb(vreq, vreq->error, vreq->cb_data);
	nesting--;
}

/* Tell every waiter, in the order they asked. */
static void call_waiters(td_vbd_t *vbd)
{
	while (vbd->waiters) {
		struct vbd_waiter *w = vbd->waiters;

		vbd->waiters = w->next;
		if (w->done)
			w->done(vbd, w->arg);
		free(w);
	}
}

/* Once nothing is in flight, a pausing vbd is paused: tell its waiters. */
static void check_quiesced(td_vbd_t *vbd)
{
	if (vbd->state == VBD_PAUSING && !vbd_busy(vbd))
		vbd->state = VBD_PAUSED;
	if (vbd->state == VBD_PAUSED)
		call_waiters(vbd);
}

static void quiesce_timer_cb(void *arg)
{
	td_vbd_t *vbd = arg;

	vbd->quiesce_timer = 0;
	check_quiesced(vbd);
}

/* Every path that may quiesce a vbd ends here, and the waiters are told
 * from the loop, never inside the call that made the vbd idle. That call
 * is most often a request's completion, with the driver's own code still
 * below it on the stack; a waiter may close the image (a renew's reopen
 * does), and that code would then run on freed state. */
static void quiesce_soon(td_vbd_t *vbd)
{
	int t, due = vbd->state == VBD_PAUSING ? !vbd_busy(vbd) :
		       vbd->state == VBD_PAUSED && vbd->waiters;

	if (!due || vbd->quiesce_timer)
		return;
	t = sched_timer(0, quiesce_timer_cb, vbd);
	if (t > 0)
		vbd->quiesce_timer = t;
	else
		EPRINTF("pause: minor %d: out of memory; its waiters are not told", vbd->minor);
}

void tapdisk_vbd_behind(td_vbd_t *vbd, int delta)
{
	vbd->behind += (unsigned)delta;
	if (!vbd->behind)
		quiesce_soon(vbd);
}

/* Account a finished request and call its client back. */
static void vreq_finish(td_vbd_request_t *vreq, int err)
{
	td_vbd_t *vbd = vreq->vbd;
	struct td_vbd_stats *st = &vbd->stats;
	uint64_t lat = sched_now_ns() - vreq->submit_ns;
	uint64_t bytes = (uint64_t)vreq->secs << SECTOR_SHIFT;

	if (err && !vreq->error)
		vreq->error = err;
	list_del(&vreq->entry);
	if (st->inflight)
		st->inflight--;
	switch (vreq->op) {
	case VBD_OP_READ: st->reads++; st->read_bytes += bytes; break;
	case VBD_OP_WRITE: st->writes++; st->write_bytes += bytes; break;
	case VBD_OP_FLUSH: st->flushes++; break;
	case VBD_OP_WRITE_ZEROES: st->zeroes++; break;
	case VBD_OP_TRIM: st->trims++; break;
	}
	if (vreq->error)
		st->errors++;
	st->lat_ns_total += lat;
	if (lat > st->lat_ns_max)
		st->lat_ns_max = lat;
	vreq_callback(vreq);
	quiesce_soon(vbd);
}

/* The piece's completion, from the driver through td_complete_request. */
static void piece_done(td_request_t treq, int err)
{
	td_vbd_request_t *vreq = treq.vreq;

	if (vreq->op == VBD_OP_WRITE_ZEROES && treq.op == TD_OP_WRITE)
		vreq->pieces_inflight--;
	vreq_account(vreq, treq.op == TD_OP_FLUSH ? 1 : treq.secs, err);
}

/* A td_request for the top image covering part of `vreq`. */
static td_request_t make_piece(td_vbd_request_t *vreq, int op, char *buf, uint64_t sec, int secs)
{
	td_request_t treq;

	memset(&treq, 0, sizeof(treq));
	treq.op = op;
	treq.buf = buf;
	treq.sec = sec;
	treq.secs = secs;
	treq.image = vreq->vbd->top;
	treq.cb = piece_done;
	treq.vreq = vreq;
	return treq;
}

/* Hand one piece to the top image's driver. */
static void submit_piece(td_request_t treq)
{
	td_driver_t *drv = treq.image->driver;

	if (treq.op == TD_OP_READ)
		drv->ops->td_queue_read(drv, treq);
	else if (drv->ops->td_queue_write)
		drv->ops->td_queue_write(drv, treq);
	else
		td_complete_request(treq, -EPERM);
}

/* Flush every image that can: one piece each, counted in secs_pending. */
static void start_flush(td_vbd_request_t *vreq)
{
	td_vbd_t *vbd = vreq->vbd;
	td_image_t *image;

	if (vbd->flush_gate) {
		td_vbd_request_t **tail = &vbd->gated;

		while (*tail)
			tail = &(*tail)->gate_next;
		vreq->gate_next = NULL;
		*tail = vreq;
		return;
	}
	vreq->phase = PH_FLUSH;
	vreq->secs_pending = 1; /* bias while issuing */
	if (vbd->flush_err) {
		int err = vbd->flush_err;

		if (!vbd->gated)
			vbd->flush_err = 0;  /* reported once, to every flush waiting */
		vreq_account(vreq, 1, err);
		return;
	}
	vreq->issuing = 1;
	for (image = vreq->vbd->top; image; image = image->next) {
		td_driver_t *drv = image->driver;
		td_request_t treq;

		if (!drv->ops->td_queue_flush)
			continue;
		treq = make_piece(vreq, TD_OP_FLUSH, NULL, 0, 0);
		treq.image = image;
		vreq->secs_pending++;
		drv->ops->td_queue_flush(drv, treq);
	}
	vreq->issuing = 0;
	vreq_account(vreq, 1, 0);
}

void tapdisk_vbd_gate_flushes(td_vbd_t *vbd, int closed)
{
	vbd->flush_gate = closed;
	while (!vbd->flush_gate && vbd->gated) {
		td_vbd_request_t *vreq = vbd->gated;

		vbd->gated = vreq->gate_next;
		start_flush(vreq);
	}
}

void tapdisk_vbd_flush_error(td_vbd_t *vbd, int err)
{
	vbd->flush_err = err;
}

/* Issue write-zeroes pieces from the shared buffer while the window allows. */
static void zero_pump(td_vbd_request_t *vreq)
{
	uint64_t end = vreq->sec + vreq->secs;

	vreq->issuing = 1;
	vreq->secs_pending++; /* bias: pieces completing now cannot finish it */
	while (vreq->next_sec < end && vreq->pieces_inflight < ZERO_WINDOW && !vreq->error) {
		uint64_t n = end - vreq->next_sec;

		if (n > ZERO_BUF_SECS)
			n = ZERO_BUF_SECS;
		vreq->pieces_inflight++;
		vreq->next_sec += n;
		submit_piece(make_piece(vreq, TD_OP_WRITE, zero_buf, vreq->next_sec - n, (int)n));
	}
	if (vreq->error && vreq->next_sec < end) {
		/* stop issuing: account the sectors never issued */
		vreq->secs_pending -= (int64_t)(end - vreq->next_sec);
		vreq->next_sec = end;
	}
	vreq->issuing = 0;
	vreq_account(vreq, 1, 0);
}

/* `done` sectors (or flush pieces) of `vreq` are finished. */
static void vreq_account(td_vbd_request_t *vreq, int64_t done, int err)
{
	if (err && !vreq->error) {
		vreq->error = err;
		if (err != -EPERM)
			EPRINTF("minor %d (%s): %s at sector %llu (%u sectors): %s", vreq->vbd->minor,
				vreq->vbd->params ? vreq->vbd->params : "closed",
				vreq->op == VBD_OP_READ ? "read" : vreq->phase == PH_FLUSH ? "flush" : "write",
				(unsigned long long)vreq->sec, vreq->secs, strerror(-err));
	}
	vreq->secs_pending -= done;
	if (vreq->secs_pending > 0) {
		if (vreq->op == VBD_OP_WRITE_ZEROES && vreq->phase == PH_DATA && !vreq->issuing &&
		    vreq->next_sec < vreq->sec + vreq->secs && vreq->pieces_inflight < ZERO_WINDOW)
			zero_pump(vreq);
		return;
	}
	if (vreq->phase == PH_DATA && vreq->fua && !vreq->error) {
		start_flush(vreq);
		return;
	}
	vreq_finish(vreq, 0);
}

/* Is the request's range inside the disk? */
static int in_range(td_vbd_t *vbd, td_vbd_request_t *vreq)
{
	return vreq->sec <= vbd->size && vreq->secs <= vbd->size - vreq->sec;
}

/* Start a request on the chain (the vbd is running). */
static void vbd_issue(td_vbd_t *vbd, td_vbd_request_t *vreq)
{
	int writes = vreq->op == VBD_OP_WRITE || vreq->op == VBD_OP_WRITE_ZEROES || vreq->op == VBD_OP_TRIM;

	list_add_tail(&vreq->entry, &vbd->inflight);
	vbd->stats.inflight++;
	vreq->phase = PH_DATA;
	if (!vbd->top) {
		vreq_finish(vreq, -ESHUTDOWN);
		return;
	}
	if (vreq->op < VBD_OP_READ || vreq->op > VBD_OP_TRIM ||
	    (vreq->op != VBD_OP_FLUSH && !in_range(vbd, vreq))) {
		vreq_finish(vreq, -EINVAL);
		return;
	}
	if (writes && (vbd->flags & TD_OPEN_RDONLY)) {
		vreq_finish(vreq, -EPERM);
		return;
	}
	switch (vreq->op) {
	case VBD_OP_READ:
	case VBD_OP_WRITE:
		if (!vreq->secs) {
			vreq_account(vreq, 0, 0);
			return;
		}
		vreq->secs_pending = (int64_t)vreq->secs + 1;
		vreq->issuing = 1;
		submit_piece(make_piece(vreq, vreq->op == VBD_OP_READ ? TD_OP_READ : TD_OP_WRITE,
					vreq->buf, vreq->sec, (int)vreq->secs));
		vreq->issuing = 0;
		vreq_account(vreq, 1, 0);
		return;
	case VBD_OP_WRITE_ZEROES:
		if (!get_zero_buf()) {
			vreq_finish(vreq, -ENOMEM);
			return;
		}
		vreq->next_sec = vreq->sec;
		vreq->pieces_inflight = 0;
		vreq->secs_pending = vreq->secs;
		if (!vreq->secs)
			vreq_account(vreq, 0, 0);
		else
			zero_pump(vreq);
		return;
	case VBD_OP_FLUSH:
		vreq->fua = 0;
		start_flush(vreq);
		return;
	case VBD_OP_TRIM:
		vreq_finish(vreq, 0); /* accepted; the data stays (NBD allows it) */
		return;
	}
}

void tapdisk_vbd_queue(td_vbd_t *vbd, td_vbd_request_t *vreq)
{
	vreq->vbd = vbd;
	vreq->error = 0;
	vreq->secs_pending = 0;
	vreq->issuing = 0;
	vreq->submit_ns = sched_now_ns();
	INIT_LIST_HEAD(&vreq->entry);
	if (vbd->state == VBD_PAUSING || vbd->state == VBD_PAUSED) {
		list_add_tail(&vreq->entry, &vbd->held);
		return;
	}
	vbd_issue(vbd, vreq);
}

void td_complete_request(td_request_t treq, int res)
{
	if (treq.cb)
		treq.cb(treq, res);
}

/* Zero the piece's buffer: what no image holds reads as zeros. */
static void complete_zeros(td_request_t treq)
{
	if (treq.op == TD_OP_READ && treq.buf && treq.secs > 0)
		memset(treq.buf, 0, (size_t)treq.secs << SECTOR_SHIFT);
	td_complete_request(treq, treq.op == TD_OP_WRITE ? -EIO : 0);
}

void td_forward_request(td_request_t treq)
{
	td_image_t *next = treq.image ? treq.image->next : NULL;
	td_driver_t *drv;
	uint64_t psize;

	if (!next) {
		complete_zeros(treq);
		return;
	}
	drv = next->driver;
	treq.image = next;
	if (treq.op == TD_OP_FLUSH) {
		if (drv->ops->td_queue_flush)
			drv->ops->td_queue_flush(drv, treq);
		else
			td_complete_request(treq, 0);
		return;
	}
	if (treq.op != TD_OP_READ) {
		EPRINTF("forward: a write reached parent %s (sector %llu)", drv->name,
			(unsigned long long)treq.sec);
		td_complete_request(treq, -EIO);
		return;
	}
	psize = drv->info.size;
	if (treq.sec >= psize) {
		complete_zeros(treq); /* the parent is smaller than the child */
		return;
	}
	if (treq.sec + (uint64_t)treq.secs > psize) {
		td_request_t tail = treq;
		int head = (int)(psize - treq.sec);

		tail.sec = psize;
		tail.secs = treq.secs - head;
		tail.buf = treq.buf + ((size_t)head << SECTOR_SHIFT);
		treq.secs = head;
		drv->ops->td_queue_read(drv, treq);
		complete_zeros(tail);
		return;
	}
	drv->ops->td_queue_read(drv, treq);
}

/* Queue `done` for when the vbd is quiesced, and start quiescing. */
static void vbd_quiesce(td_vbd_t *vbd, void (*done)(td_vbd_t *, void *), void *arg)
{
	struct vbd_waiter *w, **tail = &vbd->waiters;

	w = calloc(1, sizeof(*w));
	if (w) {
		w->done = done;
		w->arg = arg;
		while (*tail)
			tail = &(*tail)->next;
		*tail = w;
	} else {
		EPRINTF("pause: minor %d: out of memory; the caller is not told", vbd->minor);
	}
	if (vbd->state == VBD_RUNNING)
		vbd->state = VBD_PAUSING;
	quiesce_soon(vbd);
}

void tapdisk_vbd_pause(td_vbd_t *vbd, void (*done)(td_vbd_t *, void *), void *arg)
{
	vbd->admin_paused = 1;
	vbd_quiesce(vbd, done, arg);
}

void tapdisk_vbd_hold(td_vbd_t *vbd, void (*done)(td_vbd_t *, void *), void *arg)
{
	vbd->holds++;
	vbd_quiesce(vbd, done, arg);
}

/* Issue the requests held while paused, oldest first. */
static void release_held(td_vbd_t *vbd)
{
	struct list_head held;

	INIT_LIST_HEAD(&held);
	/* move the list aside: a request may be held again if the vbd re-pauses */
	if (!list_empty(&vbd->held)) {
		held.next = vbd->held.next;
		held.prev = vbd->held.prev;
		held.next->prev = &held;
		held.prev->next = &held;
		INIT_LIST_HEAD(&vbd->held);
	}
	while (!list_empty(&held)) {
		td_vbd_request_t *vreq = list_first_entry(&held, td_vbd_request_t, entry);

		list_del(&vreq->entry);
		if (vbd->state == VBD_RUNNING)
			vbd_issue(vbd, vreq);
		else
			list_add_tail(&vreq->entry, &vbd->held);
	}
}

/* Reopen `params` when given (the vbd must be paused), then run again if
 * nobody else holds the vbd paused. */
static int vbd_resume(td_vbd_t *vbd, const char *params, char *err, size_t errlen)
{
	if (vbd->state == VBD_RUNNING && !params)
		return 0;
	if (params && vbd->state == VBD_PAUSING) {
		set_err(err, errlen, "unpause: minor %d is still pausing; try again", vbd->minor);
		return -EAGAIN;
	}
	if (params && vbd->state != VBD_PAUSED) {
		set_err(err, errlen, "unpause: minor %d is %s, not paused", vbd->minor,
			tapdisk_vbd_state_name(vbd));
		return -EBUSY;
	}
	if (params) {
		char *old = vbd->params ? strdup(vbd->params) : NULL;
		char *copy = strdup(params);
		int r;

		if (!copy || (vbd->params && !old)) {
			free(old);
			free(copy);
			set_err(err, errlen, "unpause: out of memory");
			return -ENOMEM;
		}
		chain_close(vbd);
		r = chain_open(vbd, params, vbd->flags, err, errlen);
		if (r < 0) {
			char again[256];

			/* stay paused, on the old chain if it can be had again */
			if (old && chain_open(vbd, old, vbd->flags, again, sizeof(again)) < 0)
				EPRINTF("unpause: minor %d: cannot reopen %s either: %s", vbd->minor, old, again);
			free(old);
			free(copy);
			return r;
		}
		free(old);
		free(vbd->params);
		vbd->params = copy;
	}
	if (!vbd->top) {
		set_err(err, errlen, "unpause: minor %d has no image open", vbd->minor);
		return -ENODEV;
	}
	if (vbd->admin_paused || vbd->holds)
		return 0;
	vbd->state = VBD_RUNNING;
	/* a pause that had not quiesced yet is over as well */
	call_waiters(vbd);
	release_held(vbd);
	return 0;
}

int tapdisk_vbd_unpause(td_vbd_t *vbd, const char *params, char *err, size_t errlen)
{
	vbd->admin_paused = 0;
	return vbd_resume(vbd, params, err, errlen);
}

int tapdisk_vbd_release(td_vbd_t *vbd, const char *params, char *err, size_t errlen)
{
	if (vbd->holds > 0)
		vbd->holds--;
	return vbd_resume(vbd, params, err, errlen);
}

/* Append `s` to `out` as a JSON string. */
static void json_str(FILE *out, const char *s)
{
	fputc('"', out);
	for (; s && *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			fprintf(out, "\\%c", c);
		else if (c < 0x20)
			fprintf(out, "\\u%04x", c);
		else
			fputc(c, out);
	}
	fputc('"', out);
}

char *tapdisk_vbd_stats_json(td_vbd_t *vbd)
{
	const struct td_vbd_stats *st = &vbd->stats;
	uint64_t done = st->reads + st->writes + st->flushes + st->zeroes + st->trims;
	char *buf = NULL;
	size_t len = 0;
	FILE *out = open_memstream(&buf, &len);
	td_image_t *image;

	if (!out)
		return NULL;
	fprintf(out, "{\"minor\":%d,\"state\":\"%s\",\"params\":", vbd->minor, tapdisk_vbd_state_name(vbd));
	json_str(out, vbd->params);
	fprintf(out, ",\"size_bytes\":%llu,\"read_only\":%s,"
		"\"reads\":%llu,\"writes\":%llu,\"flushes\":%llu,\"write_zeroes\":%llu,\"trims\":%llu,"
		"\"read_bytes\":%llu,\"write_bytes\":%llu,\"errors\":%llu,\"inflight\":%llu,"
		"\"latency_avg_us\":%llu,\"latency_max_us\":%llu,\"loop_busy_max_us\":%llu,"
		"\"loop_poll_max_us\":%u,\"loop_poll_us\":%llu,\"loop_poll_hits\":%llu,"
		"\"nbd_connections\":%d,\"images\":[",
		(unsigned long long)vbd->size << SECTOR_SHIFT, vbd->flags & TD_OPEN_RDONLY ? "true" : "false",
		(unsigned long long)st->reads, (unsigned long long)st->writes,
		(unsigned long long)st->flushes, (unsigned long long)st->zeroes, (unsigned long long)st->trims,
		(unsigned long long)st->read_bytes, (unsigned long long)st->write_bytes,
		(unsigned long long)st->errors, (unsigned long long)st->inflight,
		(unsigned long long)(done ? st->lat_ns_total / done / 1000 : 0),
		(unsigned long long)(st->lat_ns_max / 1000),
		(unsigned long long)(sched_busy_max_ns() / 1000), sched_poll_max_us(),
		(unsigned long long)(sched_poll_ns() / 1000), (unsigned long long)sched_poll_hits(),
		vbd->nbd_conns);
	for (image = vbd->top; image; image = image->next) {
		td_driver_t *drv = image->driver;
		const struct disk_info *di = tapdisk_disktype_get(image->type);

		fprintf(out, "%s{\"type\":", image == vbd->top ? "" : ",");
		json_str(out, di ? di->name : "?");
		fputs(",\"path\":", out);
		json_str(out, image->name);
		fprintf(out, ",\"size_bytes\":%llu", (unsigned long long)drv->info.size << SECTOR_SHIFT);
		if (drv->ops->td_stats) {
			td_stats_t ds;

			memset(&ds, 0, sizeof(ds));
			drv->ops->td_stats(drv, &ds);
			ds.extra[sizeof(ds.extra) - 1] = '\0';
			fprintf(out, ",\"allocated_bytes\":%llu,\"blocks_allocated\":%llu,"
				"\"bitmap_cache_hits\":%llu,\"bitmap_cache_misses\":%llu%s%s",
				(unsigned long long)ds.allocated_bytes, (unsigned long long)ds.blocks_allocated,
				(unsigned long long)ds.bitmap_cache_hits, (unsigned long long)ds.bitmap_cache_misses,
				ds.extra[0] ? "," : "", ds.extra);
		}
		fputc('}', out);
	}
	fputs("]}", out);
	if (fclose(out)) {
		free(buf);
		return NULL;
	}
	return buf;
}

/* An image outside any chain: renew's writable handle on a parent. */
td_driver_t *td_driver_open(int type, const char *path, td_flag_t flags, char *err, size_t errlen)
{
	td_image_t *image;

	if (image_open(NULL, type, path, flags, &image, err, errlen))
		return NULL;
	return image->driver;
}

void td_driver_close(td_driver_t *drv)
{
	if (drv)
		image_free(drv->image);
}
