/* The run directory holding control and NBD sockets: $RENEW_RUNDIR, else
 * blktap's /run/blktap-control. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "ctl-proto.h"

#define CTL_DEFAULT_RUNDIR "/run/blktap-control"

const char *ctl_rundir(void)
{
	const char *d = getenv("RENEW_RUNDIR");
	return d && *d ? d : CTL_DEFAULT_RUNDIR;
}

int ctl_rundir_ensure(char *err, size_t errlen)
{
	const char *d = ctl_rundir();
	struct stat st;

	if (mkdir(d, 0700) && errno != EEXIST) {
		int e = errno;
		snprintf(err, errlen, "create run directory %s: %s", d, strerror(e));
		return -e;
	}
	if (stat(d, &st)) {
		int e = errno;
		snprintf(err, errlen, "run directory %s: %s", d, strerror(e));
		return -e;
	}
	if (!S_ISDIR(st.st_mode)) {
		snprintf(err, errlen, "run directory %s: %s", d, strerror(ENOTDIR));
		return -ENOTDIR;
	}
	return 0;
}

/* Format a path under the run directory, refusing truncation. */
static int rundir_path(char *buf, size_t len, const char *fmt, int a, int b)
{
	char name[64];
	int n;

	snprintf(name, sizeof(name), fmt, a, b);
	n = snprintf(buf, len, "%s/%s", ctl_rundir(), name);
	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

int ctl_sock_path(char *buf, size_t len, int pid)
{
	return rundir_path(buf, len, "ctl%d", pid, 0);
}

int ctl_nbd_path(char *buf, size_t len, int pid, int minor)
{
	return rundir_path(buf, len, "nbd%d.%d", pid, minor);
}

int ctl_sock_name_pid(const char *name)
{
	char *end;
	long v;

	if (strncmp(name, "ctl", 3) || name[3] < '0' || name[3] > '9')
		return -1;
	v = strtol(name + 3, &end, 10);
	return *end || v <= 0 || v > 0x7fffffff ? -1 : (int)v;
}
