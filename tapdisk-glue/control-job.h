/* Long-running work on a vbd (renew's commit copy), started by a control
 * verb that replies at once with the job's id; `job-status` reports its
 * progress for the tool to poll. One job per minor at a time; a finished
 * job stays visible until the next starts or the vbd is detached. */
#ifndef RENEW_CONTROL_JOB_H
#define RENEW_CONTROL_JOB_H

#include <stdint.h>

enum ctl_job_state { CTL_JOB_RUNNING = 0, CTL_JOB_DONE, CTL_JOB_FAILED };

struct ctl_job {
	int id;
	int minor;
	char kind[32];           /* "renew" */
	int state;
	uint64_t done, total;    /* bytes */
	uint64_t start_ns, end_ns;
	int error;               /* positive errno when failed */
	char msg[512];           /* the failure, naming the path and reason */
};

/* Start a job on `minor`: NULL with -EBUSY in *rc when one is running. */
struct ctl_job *ctl_job_start(int minor, const char *kind, int *rc);
void ctl_job_progress(struct ctl_job *job, uint64_t done, uint64_t total);
/* err = 0: done; else failed, with a message. */
void ctl_job_finish(struct ctl_job *job, int err, const char *msg);
/* The job of a minor (running or last finished), or NULL. */
struct ctl_job *ctl_job_find(int minor);
/* Forget a minor's finished job (detach); a running one is kept. */
void ctl_job_forget(int minor);
const char *ctl_job_state_name(const struct ctl_job *job);
/* Bytes per second since the job started. */
uint64_t ctl_job_rate(const struct ctl_job *job);
void ctl_job_fini(void);

#endif
