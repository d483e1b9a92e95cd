/* tlog: the runtime's log, to stderr (or syslog once the daemon detaches).
 * The last error message is kept so that an open failing deep inside a
 * driver can be reported to the control client word for word. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include "tapdisk.h"

static int log_syslog;
static int log_level = -1;
static const char *log_name = "tapdisk-renew";
static int log_own_errors;
static char last_error[512];

/* RENEW_DEBUG=1 (anything but empty or 0): show every message. */
static int debug_on(void)
{
	const char *d = getenv("RENEW_DEBUG");

	return d && *d && strcmp(d, "0");
}

/* The threshold: debug messages are off unless debug_on(). */
static int tlog_threshold(void)
{
	if (log_level < 0)
		log_level = debug_on() ? TLOG_DBG : TLOG_INFO;
	return log_level;
}

void tlog_setup(const char *name, int level, int own_errors)
{
	int debug = debug_on();

	log_name = name;
	log_own_errors = own_errors && !debug;
	log_level = debug ? TLOG_DBG : level;
}

/* Send further messages to syslog (the detached daemon has no stderr). */
void tlog_to_syslog(const char *ident)
{
	openlog(ident, LOG_PID | LOG_NDELAY, LOG_DAEMON);
	log_syslog = 1;
}

/* The last TLOG_ERR message, or "" since tlog_clear_error(). */
const char *tlog_last_error(void)
{
	return last_error;
}

/* Forget the last error, before an operation whose own error we want. */
void tlog_clear_error(void)
{
	last_error[0] = '\0';
}

void tlog(int level, const char *fmt, ...)
{
	int saved = errno;
	char msg[1024];
	va_list ap;

	if (level > TLOG_ERR && level > tlog_threshold())
		return; /* not shown and not kept: do not even format it */
	va_start(ap, fmt);
	errno = saved; /* so %m names the caller's error */
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (level <= TLOG_ERR) {
		size_t n = strnlen(msg, sizeof(last_error) - 1);

		memcpy(last_error, msg, n);
		last_error[n] = '\0';
	}
	if (level > tlog_threshold() || (level <= TLOG_ERR && log_own_errors)) {
		errno = saved;
		return;
	}
	if (log_syslog) {
		syslog(level, "%s", msg);
	} else {
		struct timespec ts;
		struct tm tm;
		char when[32];

		clock_gettime(CLOCK_REALTIME, &ts);
		localtime_r(&ts.tv_sec, &tm);
		strftime(when, sizeof(when), "%H:%M:%S", &tm);
		fprintf(stderr, "%s[%s.%03ld] %s%s\n", log_name, when, ts.tv_nsec / 1000000,
			level <= TLOG_ERR ? "error: " : level == TLOG_WARN ? "warning: " : "", msg);
	}
	errno = saved;
}
