/* The library's last error message: one per thread, set by vhd_fail(). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include "vhd.h"

static __thread char vhd_msg[1024];

/* Callers print this after a negative return. */
const char *vhd_errmsg(void)
{
	return vhd_msg[0] ? vhd_msg : "no error";
}

/* Format into a scratch buffer first so a message may quote the previous one. */
int vhd_fail(int err, const char *fmt, ...)
{
	char tmp[sizeof(vhd_msg)];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	memcpy(vhd_msg, tmp, sizeof(vhd_msg));
	if (err < 0)
		err = -err;
	return -(err ? err : EIO);
}
