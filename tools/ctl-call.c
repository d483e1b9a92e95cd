/* Calling a daemon and reporting failures as "tap-ctl-renew: VERB: why". */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "ctl-tool.h"

void die(const struct opts *o, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, PROG ": %s: ", o->verb);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

void warnx_(const struct opts *o, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, PROG ": %s: ", o->verb);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

void req_init(struct ctl_msg *req, const char *verb, int minor)
{
	ctl_msg_init(req);
	ctl_msg_set(req, "verb", verb);
	if (minor >= 0)
		ctl_msg_set_int(req, "minor", minor);
}

int call_quiet(int pid, const struct ctl_msg *req, struct ctl_msg *rep, int timeout_ms,
	       char *err, size_t errlen)
{
	const char *msg;

	if (ctl_call(pid, req, rep, timeout_ms, err, errlen))
		return -1;
	if (ctl_reply_is_ok(rep))
		return 0;
	msg = ctl_msg_get(rep, "msg");
	snprintf(err, errlen, "%s", msg ? msg : "the daemon refused without a reason");
	ctl_msg_free(rep);
	return -1;
}

int call(const struct opts *o, int pid, const struct ctl_msg *req, struct ctl_msg *rep,
	 int timeout_ms)
{
	char err[CTL_ERRLEN];

	if (call_quiet(pid, req, rep, timeout_ms, err, sizeof(err)) == 0)
		return 0;
	warnx_(o, "%s", err);
	return -1;
}

int simple_verb(const struct opts *o, const char *verb, int pid, int minor)
{
	struct ctl_msg req, rep;
	int rc;

	req_init(&req, verb, minor);
	rc = call(o, pid, &req, &rep, TOOL_TIMEOUT_MS);
	ctl_msg_free(&req);
	if (!rc)
		ctl_msg_free(&rep);
	return rc;
}

/* Threads `pid` still has, its main thread included; 0 when it has none. */
static int pid_threads(int pid)
{
	char path[64];
	struct dirent *de;
	int n = 0;
	DIR *d;

	snprintf(path, sizeof(path), "/proc/%d/task", pid);
	if (!(d = opendir(path)))
		return 0;
	while ((de = readdir(d)))
		n += de->d_name[0] != '.';
	closedir(d);
	return n;
}

/* Is the daemon running, its main thread not yet a zombie? */
int pid_alive(int pid)
{
	char path[64], buf[512], *p;
	FILE *f;
	int alive = 1;

	waitpid(pid, NULL, WNOHANG);    /* our own child: reap it */
	if (kill(pid, 0) && errno == ESRCH)
		return 0;
	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	f = fopen(path, "r");
	if (!f)
		return errno == ENOENT ? 0 : 1;
	if (fgets(buf, sizeof(buf), f) && (p = strrchr(buf, ')')) && p[1] == ' ')
		alive = p[2] != 'Z' && p[2] != 'X';
	fclose(f);
	return alive;
}

/* Has the daemon ended? Its main thread being a zombie is not enough:
 * another thread may still be inside a system call (closing a deleted
 * overlay can take seconds), holding the image's lock. */
static int pid_gone(int pid)
{
	return !pid_alive(pid) && pid_threads(pid) <= 1;
}

int wait_pid_gone(int pid, int ms)
{
	struct timespec ts = { 0, 20 * 1000000 };

	for (int waited = 0; !pid_gone(pid); waited += 20) {
		if (waited >= ms)
			return -1;
		nanosleep(&ts, NULL);
	}
	return 0;
}
