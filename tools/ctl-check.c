/* check: can disks be served here? The run directory must be writable and
 * the daemon present; the nbd module is reported, not required (NBD
 * sockets work without it). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "ctl-tool.h"

/* Create and remove a file in the run directory: sockets will need that. */
static int rundir_writable(char *err, size_t errlen)
{
	char path[4096];
	int fd;

	if (ctl_rundir_ensure(err, errlen))
		return -1;
	snprintf(path, sizeof(path), "%s/.check.%d", ctl_rundir(), (int)getpid());
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		snprintf(err, errlen, "run directory %s is not writable: %s", ctl_rundir(),
			 strerror(errno));
		return -1;
	}
	close(fd);
	unlink(path);
	return 0;
}

int cmd_check(const struct opts *o)
{
	char err[CTL_ERRLEN], path[PATH_MAX], why[CTL_ERRLEN];

	if (rundir_writable(err, sizeof(err)))
		die(o, "%s", err);
	if (find_daemon(path, sizeof(path)))
		die(o, "cannot find tapdisk-renew next to " PROG " or on PATH");
	if (!nbd_available(why, sizeof(why)))
		warnx_(o, "note: %s; only --socket-only disks can be created", why);
	printf("ok\n");
	return 0;
}
