/* The job table behind `job-status`: one record per minor with a job. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "control-job.h"
#include "list.h"
#include "scheduler.h"

struct job_rec {
	struct ctl_job job;
	struct list_head entry;
};

static struct list_head jobs = LIST_HEAD_INIT(jobs);
static int next_id = 1;

/* The record of a minor, or NULL. */
static struct job_rec *find_rec(int minor)
{
	struct list_head *p;

	list_for_each(p, &jobs) {
		struct job_rec *r = list_entry(p, struct job_rec, entry);
		if (r->job.minor == minor)
			return r;
	}
	return NULL;
}

struct ctl_job *ctl_job_start(int minor, const char *kind, int *rc)
{
	struct job_rec *r = find_rec(minor);

	if (r && r->job.state == CTL_JOB_RUNNING) {
		*rc = -EBUSY;
		return NULL;
	}
	if (!r) {
		r = calloc(1, sizeof(*r));
		if (!r) {
			*rc = -ENOMEM;
			return NULL;
		}
		list_add_tail(&r->entry, &jobs);
	}
	memset(&r->job, 0, sizeof(r->job));
	r->job.id = next_id++;
	r->job.minor = minor;
	snprintf(r->job.kind, sizeof(r->job.kind), "%s", kind);
	r->job.state = CTL_JOB_RUNNING;
	r->job.start_ns = sched_now_ns();
	*rc = 0;
	return &r->job;
}

void ctl_job_progress(struct ctl_job *job, uint64_t done, uint64_t total)
{
	job->done = done;
	job->total = total;
}

void ctl_job_finish(struct ctl_job *job, int err, const char *msg)
{
	job->state = err ? CTL_JOB_FAILED : CTL_JOB_DONE;
	job->error = err < 0 ? -err : err;
	job->end_ns = sched_now_ns();
	snprintf(job->msg, sizeof(job->msg), "%s", msg ? msg : "");
}

struct ctl_job *ctl_job_find(int minor)
{
	struct job_rec *r = find_rec(minor);
	return r ? &r->job : NULL;
}

void ctl_job_forget(int minor)
{
	struct job_rec *r = find_rec(minor);

	if (r && r->job.state != CTL_JOB_RUNNING) {
		list_del(&r->entry);
		free(r);
	}
}

const char *ctl_job_state_name(const struct ctl_job *job)
{
	static const char *names[] = { "running", "done", "failed" };
	return job->state >= 0 && job->state <= CTL_JOB_FAILED ? names[job->state] : "?";
}

uint64_t ctl_job_rate(const struct ctl_job *job)
{
	uint64_t end = job->state == CTL_JOB_RUNNING ? sched_now_ns() : job->end_ns;
	uint64_t ns = end > job->start_ns ? end - job->start_ns : 0;

	return ns ? (uint64_t)((double)job->done * 1e9 / (double)ns) : 0;
}

void ctl_job_fini(void)
{
	struct list_head *p, *n;

	list_for_each_safe(p, n, &jobs) {
		list_del(p);
		free(list_entry(p, struct job_rec, entry));
	}
}
