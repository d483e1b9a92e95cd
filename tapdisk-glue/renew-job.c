/* The renew job: pauses, the driver's copy and swap, the reopen (see
 * renew-job.h). */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "history.h"
#include "renew-history.h"
#include "renew-job.h"
#include "worker.h"
#include "scheduler.h"
#include "tapdisk.h"

struct renew_job {
	struct td_renew_job td;       /* what the driver sees */
	td_vbd_t *vbd;
	td_driver_t *drv;             /* the overlay's driver during the job */
	int state;
	int err;
	char why[512];
	uint64_t start_ns, copy_end_ns, end_ns;
	uint64_t pause_start_ns, pause_max_ns, pause_total_ns;
	uint64_t drain_max_ns;        /* of a pause: waiting for the requests in flight */
	renew_done_cb_t done;
	void *arg;
	struct list_head entry;
	char *hist_dir;               /* the history, when the renew keeps one */
	struct renew_history *hist;   /* its steps, from saving-base to recording */
	long generation;
};

static struct list_head jobs = LIST_HEAD_INIT(jobs);

static const char *state_name(int state)
{
	static const char *names[] = { "none", "starting", "copying", "swapping",
				       "reopening", "done", "failed", "saving-base", "recording" };

	return state >= 0 && state <= RENEW_RECORDING ? names[state] : "unknown";
}

static struct renew_job *job_of(td_vbd_t *vbd)
{
	struct list_head *p;

	list_for_each(p, &jobs) {
		struct renew_job *j = list_entry(p, struct renew_job, entry);

		if (j->vbd == vbd)
			return j;
	}
	return NULL;
}

int tapdisk_renew_running(td_vbd_t *vbd)
{
	struct renew_job *j = job_of(vbd);

	return j && j->state != RENEW_DONE && j->state != RENEW_FAILED;
}

#define TRIM_STEP (16ll << 20)

/* Free the old overlay's blocks a slice at a time from the end, resting
 * three times as long as each slice took: one huge truncate (with discard
 * on, a discard per extent) holds the filesystem long enough to stall the
 * guest's own writes, and a busy disk should go to the guest first. */
static void *close_fd_thread(void *arg)
{
	int fd = (int)(intptr_t)arg;
	struct stat st;

	if (!fstat(fd, &st) && st.st_nlink == 0) {
		for (off_t size = st.st_size; size > 0;) {
			uint64_t t0 = sched_now_ns(), rest;
			struct timespec ts;

			size = size > TRIM_STEP ? size - TRIM_STEP : 0;
			if (ftruncate(fd, size))
				break;
			rest = (sched_now_ns() - t0) * 3;
			if (rest < 2000000)
				rest = 2000000;
			ts.tv_sec = (time_t)(rest / 1000000000ull);
			ts.tv_nsec = (long)(rest % 1000000000ull);
			nanosleep(&ts, NULL);
		}
	}
	close(fd);
	return NULL;
}

/* The last close of the replaced overlay frees all its blocks, which takes
 * time in proportion to its size: do it off the event loop. */
static void close_in_background(int fd)
{
	pthread_attr_t attr;
	pthread_t t;

	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	if (pthread_create(&t, &attr, close_fd_thread, (void *)(intptr_t)fd))
		close(fd);
	pthread_attr_destroy(&attr);
}

/* Pause the vbd and measure how long the guest waits. */
static void job_pause(struct renew_job *j, void (*cb)(td_vbd_t *, void *))
{
	j->pause_start_ns = sched_now_ns();
	tapdisk_vbd_hold(j->vbd, cb, j);
}

/* Paused: the requests in flight are done. How long that took is the part
 * of a pause that the disk, not the renew, decides. */
static void job_drained(struct renew_job *j)
{
	uint64_t d = sched_now_ns() - j->pause_start_ns;

	if (d > j->drain_max_ns)
		j->drain_max_ns = d;
}

/* Resume the vbd (reopening `params` when non-NULL); the pause ends here. */
static int job_unpause(struct renew_job *j, const char *params)
{
	char err[512] = "";
	int r = tapdisk_vbd_release(j->vbd, params, err, sizeof(err));
	uint64_t d = sched_now_ns() - j->pause_start_ns;

	j->pause_total_ns += d;
	if (d > j->pause_max_ns)
		j->pause_max_ns = d;
	if (r && !j->err) {
		j->err = r;
		snprintf(j->why, sizeof(j->why), "reopen %s: %s", params ? params : "", err);
	}
	return r;
}

/* The job is over: report, keep the status for stats. */
static void job_finish(struct renew_job *j, int err, const char *fmt, ...)
{
	if (err && !j->err) {
		va_list ap;

		j->err = err;
		va_start(ap, fmt);
		vsnprintf(j->why, sizeof(j->why), fmt, ap);
		va_end(ap);
	}
	j->state = j->err ? RENEW_FAILED : RENEW_DONE;
	j->end_ns = sched_now_ns();
	j->drv = NULL;
	renew_history_release(j->hist);  /* unlocks the history */
	j->hist = NULL;
	j->td.keep_path = NULL;
	if (j->err)
		tlog(TLOG_ERR, "renew: minor %d: %s", j->vbd->minor, j->why);
	else
		tlog(TLOG_INFO, "renew: minor %d: done, %llu bytes committed, longest pause %.1f ms",
		     j->vbd->minor, (unsigned long long)j->td.bytes_copied, j->pause_max_ns / 1e6);
	if (j->done)
		j->done(j->vbd, j->err, j->why, j->arg);
}

/* Paused at the start, the checks done: the driver starts the copy and
 * its write path; the guest resumes at once. */
static void job_paused_start(td_vbd_t *vbd, void *arg)
{
	struct renew_job *j = arg;
	int r;

	job_drained(j);
	tlog_clear_error();
	r = j->drv->ops->td_renew_begin(j->drv, &j->td);
	if (r) {
		const char *why = tlog_last_error();

		job_unpause(j, NULL);
		job_finish(j, r, "%s", *why ? why : strerror(-r));
		return;
	}
	j->state = RENEW_COPYING;
	job_unpause(j, NULL);
}

/* Paused after a failed or commit-only copy: release the parent. */
static void job_paused_end(td_vbd_t *vbd, void *arg)
{
	struct renew_job *j = arg;

	job_drained(j);
	j->drv->ops->td_renew_end(j->drv, &j->td);
	job_unpause(j, NULL);
	job_finish(j, 0, NULL);
}

/* Paused for the swap: the driver renames the fresh overlay in place. */
static void job_paused_swap(td_vbd_t *vbd, void *arg)
{
	struct renew_job *j = arg;

	job_drained(j);
	j->state = RENEW_SWAPPING;
	j->drv->ops->td_renew_swap(j->drv, &j->td);
}

/* An admin's pause holds the swap until the disk runs again. */
static void job_copied_retry(void *arg)
{
	struct renew_job *j = arg;

	td_renew_copied(&j->td, 0);
}

void td_renew_copied(struct td_renew_job *td, int err)
{
	struct renew_job *j = td->priv;

	if (!err && j->vbd->state != VBD_RUNNING) {
		sched_timer(50, job_copied_retry, j);
		return;
	}
	j->copy_end_ns = sched_now_ns();
	if (err) {
		const char *why = tlog_last_error();

		j->err = err;
		snprintf(j->why, sizeof(j->why), "%s", *why ? why : strerror(-err));
		job_pause(j, job_paused_end);
		return;
	}
	job_pause(j, j->td.commit_only ? job_paused_end : job_paused_swap);
}

/* The old overlay is hashed and logged: the renew is over. A failure
 * here leaves the renew done (the commit point is passed) and the
 * .pending file for the next history operation to complete. */
static void job_recorded(void *arg, int err, const char *why)
{
	struct renew_job *j = arg;

	if (err) {
		tlog(TLOG_WARN, "renew: minor %d: %s", j->vbd->minor, why);
		if (!j->err)
			snprintf(j->why, sizeof(j->why), "renewed, but %s (the next renew or "
				 "`renew-img history %s` completes the record)", why, j->hist_dir);
	}
	job_finish(j, 0, NULL);
}

/* Past the commit point: hash and log the old overlay off the loop. */
static void job_record(struct renew_job *j)
{
	int r;

	j->state = RENEW_RECORDING;
	r = renew_history_record(j->hist, hist_now_us(), job_recorded, j);
	if (r) {
		char why[256];

		snprintf(why, sizeof(why), "history %s: start recording: %s", j->hist_dir, strerror(-r));
		job_recorded(j, r, why);
	}
}

/* fsync (or fdatasync) of the file or directory at `path`. */
static int sync_path(const char *path, int flags, int data_only)
{
	int fd, r = 0;

	if (!path)
		return -ENOMEM;
	fd = open(path, O_RDONLY | O_CLOEXEC | flags);
	if (fd < 0 || (data_only ? fdatasync(fd) : fsync(fd)))
		r = -errno;
	if (fd >= 0)
		close(fd);
	return r;
}

/* In a thread, after the resume: the parent, with the guest's last
 * write-through writes, then the rename of the fresh overlay, durable. */
static int sync_after_swap(void *arg)
{
	struct renew_job *j = arg;
	int r = td_fault("renew.sync");

	if (!r)
		r = sync_path(j->td.sync_parent, 0, 1);
	if (!r)
		r = sync_path(j->td.sync_dir, O_DIRECTORY, 0);
	return r;
}

/* The parent and the directory are durable (or rc says why not): guest
 * flushes may complete again. */
static void job_synced(void *arg, int rc)
{
	struct renew_job *j = arg;

	if (rc) {
		/* before the guest's flushes go on: they must not report success */
		tapdisk_vbd_flush_error(j->vbd, rc);
		job_finish(j, rc, "the fresh overlay is in place, but the parent %s or the rename in %s "
			   "could not be made durable: %s; the guest's next flush fails",
			   j->td.sync_parent ? j->td.sync_parent : "?", j->td.sync_dir ? j->td.sync_dir : "?",
			   strerror(-rc));
	}
	free(j->td.sync_dir);
	free(j->td.sync_parent);
	j->td.sync_dir = j->td.sync_parent = NULL;
	tapdisk_vbd_gate_flushes(j->vbd, 0);
	if (rc)
		return;
	if (j->hist && j->td.keep_path) {
		job_record(j);
		return;
	}
	job_finish(j, 0, NULL);
}

void td_renew_swapped(struct td_renew_job *td, int err)
{
	struct renew_job *j = td->priv;
	const char *why = tlog_last_error();
	char *params;

	j->drv->ops->td_renew_end(j->drv, &j->td);
	if (err) {
		/* before the commit point: the old overlay is still the disk */
		j->err = err;
		snprintf(j->why, sizeof(j->why), "%s", *why ? why : strerror(-err));
		job_unpause(j, NULL);
		job_finish(j, err, NULL);
		return;
	}
	/* past the commit point: the disk is the fresh overlay; reopen it */
	j->state = RENEW_REOPENING;
	j->drv = NULL;
	td_fault("renew.reopen");
	params = strdup(j->vbd->params);
	if (!params) {
		job_finish(j, -ENOMEM, "reopen %s: out of memory (the disk stays paused)", j->vbd->params);
		return;
	}
	/* guest flushes wait until the rename is durable (job_synced) */
	tapdisk_vbd_gate_flushes(j->vbd, 1);
	job_unpause(j, params);
	free(params);
	if (j->td.old_fd >= 0) {
		close_in_background(j->td.old_fd);
		j->td.old_fd = -1;
	}
	if (td_worker_run(sync_after_swap, j, job_synced))
		job_synced(j, sync_after_swap(j));
}

/* The first pause, once the disk runs (an admin's pause holds it). */
static void job_begin(void *arg)
{
	struct renew_job *j = arg;

	if (j->vbd->state != VBD_RUNNING) {
		sched_timer(50, job_begin, j);
		return;
	}
	j->state = RENEW_STARTING;
	if (j->drv->ops->td_renew_prepare) {
		int r;

		tlog_clear_error();
		r = j->drv->ops->td_renew_prepare(j->drv, &j->td);
		if (r) {
			const char *why = tlog_last_error();

			job_finish(j, r, "%s", *why ? why : strerror(-r));
			return;
		}
	}
	job_pause(j, job_paused_start);
}

/* The history is ready (generation 0 saved, checks passed): go on with the
 * renew, telling the swap where to keep the old overlay. */
static void job_history_ready(void *arg, int err, const char *why)
{
	struct renew_job *j = arg;

	if (err) {
		job_finish(j, err, "%s", why);
		return;
	}
	if (!j->td.commit_only) {  /* a commit keeps the overlay: no generation */
		j->generation = (long)renew_history_gen(j->hist);
		j->td.keep_path = renew_history_pending(j->hist);
	}
	job_begin(j);
}

/* Prepare the history in a thread before anything changes the base. */
static int job_history_start(struct renew_job *j, const char *dir, char *err, size_t errlen)
{
	td_image_t *top = j->vbd->top;

	if (!top->next) {
		snprintf(err, errlen, "%s: no parent: there is no base to keep a history of", j->vbd->params);
		j->done = NULL;  /* refused: the caller hears it from the return */
		job_finish(j, -EINVAL, "%s", err);
		return -EINVAL;
	}
	j->hist_dir = strdup(dir);
	j->state = RENEW_SAVING_BASE;
	j->hist = j->hist_dir ? renew_history_prepare(dir, top->driver->name, top->next->driver->name,
						      job_history_ready, j, err, errlen) : NULL;
	if (!j->hist) {
		if (!j->hist_dir)
			snprintf(err, errlen, "history %s: out of memory", dir);
		j->done = NULL;  /* refused: the caller hears it from the return */
		job_finish(j, -ENOMEM, "%s", err);
		return -ENOMEM;
	}
	return 0;
}

int tapdisk_renew_start(td_vbd_t *vbd, const struct renew_opts *opts,
			renew_done_cb_t done, void *arg, char *err, size_t errlen)
{
	struct renew_job *j = job_of(vbd);
	td_driver_t *drv = vbd->top ? vbd->top->driver : NULL;

	if (j && tapdisk_renew_running(vbd)) {
		snprintf(err, errlen, "minor %d (%s): a renew is already running (%s, %llu of %llu bytes)",
			 vbd->minor, vbd->params, state_name(j->state),
			 (unsigned long long)j->td.bytes_done, (unsigned long long)j->td.bytes_total);
		return -EBUSY;
	}
	if (vbd->state != VBD_RUNNING || !drv) {
		snprintf(err, errlen, "minor %d: the disk is %s; unpause it first",
			 vbd->minor, tapdisk_vbd_state_name(vbd));
		return -EAGAIN;
	}
	if (!drv->ops->td_renew_begin || (vbd->flags & TD_OPEN_RDONLY)) {
		snprintf(err, errlen, "%s: not a writable renew: overlay (nothing to commit)",
			 vbd->params);
		return -EOPNOTSUPP;
	}
	if (!j) {
		j = calloc(1, sizeof(*j));
		if (!j) {
			snprintf(err, errlen, "renew: out of memory");
			return -ENOMEM;
		}
		list_add_tail(&j->entry, &jobs);
	}
	memset(&j->td, 0, sizeof(j->td));
	j->td.commit_only = opts->commit_only;
	j->td.force = opts->force;
	j->td.rate_bps = opts->rate_bps;
	j->td.old_fd = -1;
	j->td.priv = j;
	j->vbd = vbd;
	j->drv = drv;
	j->state = RENEW_STARTING;
	j->err = 0;
	j->why[0] = '\0';
	j->start_ns = sched_now_ns();
	j->copy_end_ns = j->end_ns = 0;
	j->pause_max_ns = j->pause_total_ns = j->drain_max_ns = 0;
	free(j->hist_dir);
	j->hist_dir = NULL;
	j->generation = -1;
	j->done = done;
	j->arg = arg;
	tlog(TLOG_INFO, "renew: minor %d (%s): starting%s", vbd->minor, vbd->params,
	     opts->commit_only ? " (commit only)" : "");
	if (opts->history_dir)
		return job_history_start(j, opts->history_dir, err, errlen);
	job_begin(j);
	return 0;
}

int tapdisk_renew_status(td_vbd_t *vbd, struct renew_status *st)
{
	struct renew_job *j = job_of(vbd);
	uint64_t now, copy_end, ms;

	if (!j)
		return -ENOENT;
	memset(st, 0, sizeof(*st));
	now = sched_now_ns();
	copy_end = j->copy_end_ns ? j->copy_end_ns : now;
	ms = (copy_end - j->start_ns) / 1000000;
	st->state = j->state;
	st->state_name = state_name(j->state);
	st->commit_only = j->td.commit_only;
	st->bytes_done = j->td.bytes_done;
	st->bytes_copied = j->td.bytes_copied;
	st->bytes_total = j->td.bytes_total;
	if (ms)
		st->mb_per_s = (double)j->td.bytes_done / 1048576.0 / ((double)ms / 1000.0);
	if (j->td.bytes_total)
		st->percent = 100.0 * (double)j->td.bytes_done / (double)j->td.bytes_total;
	else if (j->state == RENEW_DONE || j->copy_end_ns)
		st->percent = 100;
	st->eta_s = -1;
	if (j->state == RENEW_COPYING && st->mb_per_s > 0)
		st->eta_s = (double)(j->td.bytes_total - j->td.bytes_done) / 1048576.0 / st->mb_per_s;
	st->elapsed_s = (double)((j->end_ns ? j->end_ns : now) - j->start_ns) / 1e9;
	st->pause_max_ms = j->pause_max_ns / 1e6;
	st->drain_max_ms = j->drain_max_ns / 1e6;
	st->pause_total_ms = j->pause_total_ns / 1e6;
	st->err = j->err;
	st->why = j->why;
	st->history_dir = j->hist_dir;
	st->generation = j->generation;
	st->history_percent = j->hist ? renew_history_percent(j->hist) : 0;
	return 0;
}

char *tapdisk_renew_status_json(td_vbd_t *vbd)
{
	struct renew_status st;
	char *out = NULL, why[1100], hist[600] = "";
	size_t k = 0;

	if (tapdisk_renew_status(vbd, &st))
		return NULL;
	if (st.history_dir && !strpbrk(st.history_dir, "\"\\"))
		snprintf(hist, sizeof(hist), ",\"history\":\"%s\",\"generation\":%ld,\"history_percent\":%.1f",
			 st.history_dir, st.generation, st.history_percent);
	for (const char *c = st.why; *c && k < sizeof(why) - 3; c++) {
		if (*c == '"' || *c == '\\')
			why[k++] = '\\';
		why[k++] = (*c >= 0x20) ? *c : ' ';
	}
	why[k] = '\0';
	if (asprintf(&out,
		     "{\"state\":\"%s\",\"commit_only\":%s,\"percent\":%.1f,\"bytes_done\":%llu,"
		     "\"bytes_total\":%llu,\"bytes_copied\":%llu,\"mb_per_s\":%.1f,\"eta_s\":%.0f,\"elapsed_s\":%.3f,"
		     "\"pause_max_ms\":%.3f,\"pause_total_ms\":%.3f,\"drain_max_ms\":%.3f,\"error\":\"%s\"%s}",
		     st.state_name, st.commit_only ? "true" : "false", st.percent,
		     (unsigned long long)st.bytes_done, (unsigned long long)st.bytes_total,
		     (unsigned long long)st.bytes_copied, st.mb_per_s, st.eta_s, st.elapsed_s, st.pause_max_ms, st.pause_total_ms,
		     st.drain_max_ms, why, hist) < 0)
		return NULL;
	return out;
}

void tapdisk_renew_forget(td_vbd_t *vbd)
{
	struct renew_job *j = job_of(vbd);

	if (!j)
		return;
	list_del(&j->entry);
	renew_history_release(j->hist);
	free(j->hist_dir);
	free(j);
}
