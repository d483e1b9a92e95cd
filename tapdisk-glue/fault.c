/* Fault injection (RENEW_FAULT=POINT[:N[:ACTION]]), so tests can kill the
 * daemon or fail an I/O at a named step and prove nothing is lost. ACTION
 * is eio or enospc (the step fails), delay (the step returns -EINPROGRESS
 * and waits where the point supports it), or nothing (kill -9). */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "tapdisk.h"

static struct {
	int parsed;
	char point[64];
	long when;
	int action;       /* 0 kill, else the errno */
	long hits;
} fault;

/* Read RENEW_FAULT once. */
static void fault_parse(void)
{
	const char *env = getenv("RENEW_FAULT");
	char *colon;

	fault.parsed = 1;
	fault.when = 1;
	if (!env || !*env)
		return;
	strncpy(fault.point, env, sizeof(fault.point) - 1);
	colon = strchr(fault.point, ':');
	if (!colon)
		return;
	*colon++ = '\0';
	fault.when = strtol(colon, &colon, 10);
	if (*colon == ':') {
		colon++;
		fault.action = !strcmp(colon, "eio") ? EIO : !strcmp(colon, "enospc") ? ENOSPC :
			       !strcmp(colon, "delay") ? EINPROGRESS : 0;
	}
}

int td_fault(const char *point)
{
	if (!fault.parsed)
		fault_parse();
	if (!fault.point[0] || strcmp(point, fault.point))
		return 0;
	if (++fault.hits != fault.when)
		return 0;
	if (!fault.action) {
		tlog(TLOG_WARN, "fault: %s: killing the process", point);
		kill(getpid(), SIGKILL);
	}
	tlog(TLOG_WARN, "fault: %s: failing with %s", point, strerror(fault.action));
	return -fault.action;
}
