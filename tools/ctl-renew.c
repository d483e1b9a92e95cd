/* tap-ctl-renew renew: start a live renew on a daemon's disk and, with
 * --wait, follow it to its end (progress on a terminal). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "ctl-tool.h"

#define POLL_MS 200

/* Sleep `ms` milliseconds. */
static void nap(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

/* Ask for the renew's status; 0 with `rep` filled, -1 printed. */
static int job_status(const struct opts *o, struct ctl_msg *rep)
{
	struct ctl_msg req;
	int rc;

	req_init(&req, "job-status", o->minor);
	rc = call(o, o->pid, &req, rep, TOOL_TIMEOUT_MS);
	ctl_msg_free(&req);
	return rc;
}

static const char *get(const struct ctl_msg *m, const char *key)
{
	const char *v = ctl_msg_get(m, key);

	return v ? v : "?";
}

/* Poll until the renew ends; its exit status. */
static int follow(const struct opts *o)
{
	int tty = isatty(2);

	for (;;) {
		struct ctl_msg rep;
		const char *state;
		int rc = -1;

		if (job_status(o, &rep))
			return 1;
		state = get(&rep, "job.state");
		if (!strcmp(state, "done")) {
			if (tty)
				fprintf(stderr, "\r%70s\r", "");
			printf("renew: pid=%d minor=%d: %s bytes committed in %ss, longest pause %s ms\n",
			       o->pid, o->minor, get(&rep, "job.copied"), get(&rep, "job.elapsed_s"),
			       get(&rep, "job.pause_max_ms"));
			if (ctl_msg_get(&rep, "job.history"))
				printf("history: %s: generation %s%s%s\n", get(&rep, "job.history"),
				       get(&rep, "job.generation"), ctl_msg_get(&rep, "job.msg") ? ": " : "",
				       ctl_msg_get(&rep, "job.msg") ? get(&rep, "job.msg") : "");
			rc = 0;
		} else if (!strcmp(state, "failed")) {
			if (tty)
				fprintf(stderr, "\r%70s\r", "");
			fprintf(stderr, PROG ": renew: %s\n", get(&rep, "job.msg"));
			rc = 1;
		} else if (tty) {
			const char *eta = get(&rep, "job.eta_s");

			fprintf(stderr, "\r%-9s %5s%%  %7s MB/s  ETA %ss   ", state, get(&rep, "job.percent"),
				get(&rep, "job.mb_per_s"), eta[0] == '-' ? "?" : eta);
		}
		ctl_msg_free(&rep);
		if (rc >= 0)
			return rc;
		nap(POLL_MS);
	}
}

int cmd_renew(const struct opts *o)
{
	struct ctl_msg req, rep;
	int rc;

	req_init(&req, "renew", o->minor);
	if (o->rate_bps)
		ctl_msg_setf(&req, "rate", "%llu", (unsigned long long)o->rate_bps);
	if (o->force)
		ctl_msg_set(&req, "force", "1");
	if (o->commit_only)
		ctl_msg_set(&req, "commit_only", "1");
	if (o->history)
		ctl_msg_set(&req, "history", o->history);
	rc = call(o, o->pid, &req, &rep, TOOL_TIMEOUT_MS);
	ctl_msg_free(&req);
	if (rc)
		return 1;
	ctl_msg_free(&rep);
	if (o->wait)
		return follow(o);
	printf("renew started: pid=%d minor=%d (progress: " PROG " stats -p %d -m %d)\n", o->pid,
	       o->minor, o->pid, o->minor);
	return 0;
}
