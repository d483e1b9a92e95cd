/* Fault injection for the history's crash tests: the library sits below
 * the runtime, so the runtime's td_fault is handed in rather than called.
 * And the library's error messages. */
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include "history.h"

int hist_err(char *err, size_t errlen, int rc, const char *fmt, ...)
{
	va_list ap;

	if (err && errlen) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return rc;
}

static int (*fault_hook)(const char *point);

void hist_set_fault_hook(int (*hook)(const char *point))
{
	fault_hook = hook;
}

int hist_fault(const char *point)
{
	return fault_hook ? fault_hook(point) : 0;
}
