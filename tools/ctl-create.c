/* create and destroy: a daemon per disk, from spawn to kernel device and
 * back, undoing every step that was done when a later one fails. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>
#include "ctl-tool.h"

#define EXIT_WAIT_MS 15000

/* Serialise creates: minor and /dev/nbdN allocation must not race. The
 * descriptor is close-on-exec so the daemon never inherits the lock. */
static int lock_create(const struct opts *o)
{
	char path[4096];
	int fd;

	snprintf(path, sizeof(path), "%s/.create.lock", ctl_rundir());
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		die(o, "open lock %s: %s", path, strerror(errno));
	if (flock(fd, LOCK_EX))
		die(o, "lock %s: %s", path, strerror(errno));
	return fd;
}

/* The lowest minor no running daemon uses. */
static int lowest_free_minor(const struct opts *o)
{
	struct vbd_list l = { 0 };
	char err[CTL_ERRLEN];
	int *pids, minor = 0;
	size_t n;

	scan_daemons(o, &pids, &n);
	for (size_t i = 0; i < n; i++)
		list_daemon(o, pids[i], -1, &l, err, sizeof(err));
	for (int again = 1; again;) {
		again = 0;
		for (size_t i = 0; i < l.n; i++)
			if (l.e[i].minor == minor) {
				minor++;
				again = 1;
			}
	}
	vbd_list_free(&l);
	free(pids);
	return minor;
}

/* Detach a vbd and wait for its daemon to exit when it was the last one. */
static int detach_and_wait(const struct opts *o, int pid, int minor)
{
	struct ctl_msg req, rep;
	const char *exiting;
	int rc;

	req_init(&req, "detach", minor);
	rc = call(o, pid, &req, &rep, TOOL_TIMEOUT_MS);
	ctl_msg_free(&req);
	if (rc)
		return -1;
	exiting = ctl_msg_get(&rep, "exiting");
	rc = exiting && !strcmp(exiting, "1");
	ctl_msg_free(&rep);
	if (!rc)
		return 0;
	if (wait_pid_gone(pid, EXIT_WAIT_MS)) {
		warnx_(o, "daemon %d did not exit after its last disk was detached", pid);
		return -1;
	}
	remove_daemon_sockets(pid);
	return 0;
}

/* Stop a daemon that has no vbd (its attach failed). */
static void shutdown_daemon(const struct opts *o, int pid)
{
	struct ctl_msg req, rep;
	char err[CTL_ERRLEN];

	req_init(&req, "shutdown", -1);
	if (!call_quiet(pid, &req, &rep, TOOL_TIMEOUT_MS, err, sizeof(err)))
		ctl_msg_free(&rep);
	ctl_msg_free(&req);
	if (wait_pid_gone(pid, EXIT_WAIT_MS))
		warnx_(o, "daemon %d did not exit", pid);
	else
		remove_daemon_sockets(pid);
}

/* Open the image on the new vbd; the NBD socket path, malloc'd, or NULL. */
static char *open_disk(const struct opts *o, int pid, int minor)
{
	struct ctl_msg req, rep;
	char *sock = NULL;

	req_init(&req, "open", minor);
	ctl_msg_set(&req, "params", o->params);
	if (o->ro)
		ctl_msg_set(&req, "ro", "1");
	if (o->history)
		ctl_msg_set(&req, "history", o->history);
	if (!call(o, pid, &req, &rep, TOOL_TIMEOUT_MS)) {
		const char *nbd = ctl_msg_get(&rep, "nbd");
		sock = strdup(nbd ? nbd : "");
		ctl_msg_free(&rep);
	}
	ctl_msg_free(&req);
	return sock;
}

/* Give the vbd a kernel device and tell the daemon; 0 or -1 (printed). */
static int attach_device(const struct opts *o, int pid, int minor, const char *sock,
			 char *dev, size_t devlen)
{
	struct ctl_msg req, rep;
	char err[CTL_ERRLEN];
	int rc;

	if (nbd_connect(sock, o->connections ? o->connections : NBD_DEFAULT_CONNECTIONS, dev,
			devlen, err, sizeof(err))) {
		warnx_(o, "%s: %s", o->params, err);
		return -1;
	}
	req_init(&req, "set-device", minor);
	ctl_msg_set(&req, "device", dev);
	rc = call(o, pid, &req, &rep, TOOL_TIMEOUT_MS);
	ctl_msg_free(&req);
	if (!rc)
		ctl_msg_free(&rep);
	else if (nbd_disconnect(dev, err, sizeof(err)))
		warnx_(o, "%s", err);
	return rc;
}

int cmd_create(const struct opts *o)
{
	char err[CTL_ERRLEN], dev[64];
	int lock, minor, pid;
	char *sock;

	if (ctl_rundir_ensure(err, sizeof(err)))
		die(o, "%s", err);
	lock = lock_create(o);
	minor = lowest_free_minor(o);
	pid = spawn_daemon(o);
	if (pid < 0)
		exit(1);
	if (simple_verb(o, "attach", pid, minor)) {
		shutdown_daemon(o, pid);
		exit(1);
	}
	sock = open_disk(o, pid, minor);
	if (!sock) {
		detach_and_wait(o, pid, minor);
		exit(1);
	}
	if (o->socket_only) {
		printf("%s\n", sock);
	} else if (attach_device(o, pid, minor, sock, dev, sizeof(dev))) {
		simple_verb(o, "close", pid, minor);
		detach_and_wait(o, pid, minor);
		free(sock);
		exit(1);
	} else {
		printf("%s\n", dev);
	}
	free(sock);
	close(lock);
	return 0;
}

/* destroy -d DEV: find the vbd that device is connected to. */
static void find_by_device(const struct opts *o, int *pid, int *minor)
{
	struct vbd_list l = { 0 };
	char err[CTL_ERRLEN];
	int *pids;
	size_t n;

	scan_daemons(o, &pids, &n);
	for (size_t i = 0; i < n; i++)
		list_daemon(o, pids[i], -1, &l, err, sizeof(err));
	for (size_t i = 0; i < l.n && *pid < 0; i++)
		if (l.e[i].device && !strcmp(l.e[i].device, o->device)) {
			*pid = l.e[i].pid;
			*minor = l.e[i].minor;
		}
	vbd_list_free(&l);
	free(pids);
	if (*pid < 0)
		die(o, "no disk is connected to %s", o->device);
}

/* A renew owns the disk until it ends: refuse before touching the device,
 * or the guest would lose /dev/nbdN while the daemon keeps the disk. */
static void refuse_while_renewing(const struct opts *o, int pid, int minor)
{
	struct ctl_msg req, rep;
	char err[CTL_ERRLEN];
	const char *state, *pct;

	req_init(&req, "job-status", minor);
	if (call_quiet(pid, &req, &rep, TOOL_TIMEOUT_MS, err, sizeof(err))) {
		ctl_msg_free(&req);
		return;  /* no renew on this disk */
	}
	ctl_msg_free(&req);
	state = ctl_msg_get(&rep, "job.state");
	pct = ctl_msg_get(&rep, "job.percent");
	if (state && strcmp(state, "done") && strcmp(state, "failed"))
		die(o, "minor %d: a renew is running (%s, %s%%); destroy it once the renew ends (see stats)",
		    minor, state, pct ? pct : "?");
	ctl_msg_free(&rep);
}

int cmd_destroy(const struct opts *o)
{
	struct vbd_list l = { 0 };
	char err[CTL_ERRLEN];
	int pid = o->pid, minor = o->minor;
	struct vbd_entry *e;

	if (o->device && (pid < 0 || minor < 0))
		find_by_device(o, &pid, &minor);
	if (list_daemon(o, pid, minor, &l, err, sizeof(err)))
		die(o, "%s", err);
	if (l.n == 0)
		die(o, "minor %d is not attached to daemon %d", minor, pid);
	e = &l.e[0];
	refuse_while_renewing(o, pid, minor);
	if (e->device && nbd_disconnect(e->device, err, sizeof(err)))
		die(o, "minor %d (%s): %s", minor, e->params ? e->params : "-", err);
	if (e->params && simple_verb(o, "close", pid, minor))
		exit(1);
	vbd_list_free(&l);
	if (detach_and_wait(o, pid, minor))
		exit(1);
	return 0;
}
