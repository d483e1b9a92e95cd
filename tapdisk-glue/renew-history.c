/* The renew job's history steps in a worker thread (see renew-history.h):
 * a step runs the history library on its own copy of everything it needs,
 * and the job hears of its end on the loop. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "history.h"
#include "renew-history.h"
#include "worker.h"
#include "tapdisk.h"

struct renew_history {
	struct hist h;
	char *dir, *disk, *base;
	uint32_t gen;
	char pending[4096];
	int64_t time_us;
	struct hist_progress pr;
	int (*step)(struct renew_history *rh);
	char why[HIST_ERRLEN];
	int busy;
	int orphaned;                /* released while its step ran */
	renew_history_cb_t done;
	void *arg;
};

/* The prepare step: lock, recover, save the base when new, check. */
static int step_prepare(struct renew_history *rh)
{
	int rc = hist_open(&rh->h, rh->dir, HIST_CREATE | HIST_WRITE, rh->why, sizeof(rh->why));

	if (rc)
		return rc;
	return hist_prepare(&rh->h, rh->disk, rh->base, &rh->gen, rh->pending, sizeof(rh->pending),
			    &rh->pr, rh->why, sizeof(rh->why));
}

/* The record step: hash and log the old overlay. */
static int step_record(struct renew_history *rh)
{
	return hist_record(&rh->h, rh->gen, rh->disk, rh->time_us, &rh->pr, rh->why, sizeof(rh->why));
}

/* In a worker thread: the step itself. */
static int step_run(void *arg)
{
	struct renew_history *rh = arg;

	return rh->step(rh);
}

/* Close the history (its lock goes with it) and free. */
static void history_free(struct renew_history *rh)
{
	hist_close(&rh->h);
	free(rh->dir);
	free(rh->disk);
	free(rh->base);
	free(rh);
}

/* The step is done: back on the loop, tell the job. */
static void step_ended(void *arg, int rc)
{
	struct renew_history *rh = arg;

	rh->busy = 0;
	if (rh->orphaned) {
		history_free(rh);
		return;
	}
	rh->done(rh->arg, rc, rh->why);
}

/* Run `step` in a thread; `done` on the loop when it ends. */
static int step_start(struct renew_history *rh, int (*step)(struct renew_history *),
		      renew_history_cb_t done, void *arg)
{
	int r;

	rh->step = step;
	rh->done = done;
	rh->arg = arg;
	rh->why[0] = '\0';
	rh->pr.done = rh->pr.total = 0;
	r = td_worker_run(step_run, rh, step_ended);
	if (!r)
		rh->busy = 1;
	return r;
}

struct renew_history *renew_history_prepare(const char *dir, const char *disk, const char *base,
					    renew_history_cb_t done, void *arg, char *why, size_t whylen)
{
	struct renew_history *rh = calloc(1, sizeof(*rh));
	int r;

	hist_set_fault_hook(td_fault);
	if (!rh || !(rh->dir = strdup(dir)) || !(rh->disk = strdup(disk)) || !(rh->base = strdup(base))) {
		snprintf(why, whylen, "history %s: out of memory", dir);
		if (rh)
			history_free(rh);
		return NULL;
	}
	rh->h.dfd = rh->h.logfd = rh->h.lockfd = -1;
	r = step_start(rh, step_prepare, done, arg);
	if (r) {
		snprintf(why, whylen, "history %s: start the preparation: %s", dir, strerror(-r));
		history_free(rh);
		return NULL;
	}
	return rh;
}

uint32_t renew_history_gen(const struct renew_history *rh)
{
	return rh->gen;
}

const char *renew_history_pending(const struct renew_history *rh)
{
	return rh->pending;
}

int renew_history_record(struct renew_history *rh, int64_t time_us, renew_history_cb_t done, void *arg)
{
	rh->time_us = time_us;
	return step_start(rh, step_record, done, arg);
}

double renew_history_percent(const struct renew_history *rh)
{
	uint64_t done = __atomic_load_n(&rh->pr.done, __ATOMIC_RELAXED);
	uint64_t total = __atomic_load_n(&rh->pr.total, __ATOMIC_RELAXED);

	return total ? 100.0 * (double)done / (double)total : 0;
}

void renew_history_release(struct renew_history *rh)
{
	if (!rh)
		return;
	if (rh->busy) {
		rh->orphaned = 1;
		return;
	}
	history_free(rh);
}

/* ---- each minor's default history ---- */

struct default_history {
	int minor;
	char *dir;
	struct default_history *next;
};

static struct default_history *defaults;

int renew_history_set_default(int minor, const char *dir)
{
	struct default_history **pp = &defaults, *d;

	while (*pp && (*pp)->minor != minor)
		pp = &(*pp)->next;
	if (*pp) {
		d = *pp;
		*pp = d->next;
		free(d->dir);
		free(d);
	}
	if (!dir)
		return 0;
	d = calloc(1, sizeof(*d));
	if (!d || !(d->dir = strdup(dir))) {
		free(d);
		return -ENOMEM;
	}
	d->minor = minor;
	d->next = defaults;
	defaults = d;
	return 0;
}

const char *renew_history_default(int minor)
{
	for (struct default_history *d = defaults; d; d = d->next)
		if (d->minor == minor)
			return d->dir;
	return NULL;
}
