/* Blocking control calls, as the tool makes them: connect to a daemon's
 * socket, send one request, wait (bounded) for its reply. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include "ctl-proto.h"

int ctl_connect(int pid, char *err, size_t errlen)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd, e;

	if (ctl_sock_path(sa.sun_path, sizeof(sa.sun_path), pid)) {
		snprintf(err, errlen, "control socket path for pid %d under %s is too long", pid,
			 ctl_rundir());
		return -ENAMETOOLONG;
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		e = errno;
		snprintf(err, errlen, "socket: %s", strerror(e));
		return -e;
	}
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa))) {
		e = errno;
		if (e == ENOENT)
			snprintf(err, errlen, "no daemon with pid %d (%s: %s)", pid, sa.sun_path,
				 strerror(e));
		else
			snprintf(err, errlen, "connect to daemon %d at %s: %s", pid, sa.sun_path,
				 strerror(e));
		close(fd);
		return -e;
	}
	return fd;
}

/* Milliseconds left until `deadline` (CLOCK_MONOTONIC ms), -1 for none. */
static int remaining(long long deadline)
{
	struct timespec ts;
	long long now;

	if (deadline < 0)
		return -1;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	now = ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
	return now >= deadline ? 0 : (int)(deadline - now);
}

/* Write all of `buf`, bounded by the deadline. */
static int send_all(int fd, const char *buf, size_t len, long long deadline)
{
	while (len) {
		struct pollfd p = { .fd = fd, .events = POLLOUT };
		ssize_t n;
		int r = poll(&p, 1, remaining(deadline));

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return -ETIMEDOUT;
		n = send(fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n < 0)
			return -errno;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Read exactly `len` bytes, bounded by the deadline; -EPIPE on early EOF. */
static int recv_all(int fd, char *buf, size_t len, long long deadline)
{
	while (len) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		ssize_t n;
		int r = poll(&p, 1, remaining(deadline));

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return -ETIMEDOUT;
		n = recv(fd, buf, len, MSG_DONTWAIT);
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return -EPIPE;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Describe a transport failure in words a user can act on. */
static void transport_error(char *err, size_t errlen, const char *what, int rc)
{
	if (rc == -ETIMEDOUT)
		snprintf(err, errlen, "%s: no answer from the daemon in time", what);
	else if (rc == -EPIPE)
		snprintf(err, errlen, "%s: the daemon closed the connection", what);
	else
		snprintf(err, errlen, "%s: %s", what, strerror(-rc));
}

int ctl_call_fd(int fd, const struct ctl_msg *req, struct ctl_msg *rep, int timeout_ms,
		char *err, size_t errlen)
{
	struct timespec ts;
	long long deadline = -1;
	unsigned char hdr[CTL_HDR_SIZE];
	char *buf;
	size_t len;
	uint32_t plen;
	int rc;

	ctl_msg_init(rep);
	if (timeout_ms >= 0) {
		clock_gettime(CLOCK_MONOTONIC, &ts);
		deadline = ts.tv_sec * 1000LL + ts.tv_nsec / 1000000 + timeout_ms;
	}
	rc = ctl_msg_encode(req, &buf, &len);
	if (rc) {
		transport_error(err, errlen, "encode request", rc);
		return rc;
	}
	rc = send_all(fd, buf, len, deadline);
	free(buf);
	if (rc) {
		transport_error(err, errlen, "send request", rc);
		return rc;
	}
	rc = recv_all(fd, (char *)hdr, sizeof(hdr), deadline);
	if (rc) {
		transport_error(err, errlen, "read reply", rc);
		return rc;
	}
	rc = ctl_frame_header(hdr, &plen, err, errlen);
	if (rc)
		return rc;
	buf = malloc(plen ? plen : 1);
	if (!buf) {
		transport_error(err, errlen, "read reply", -ENOMEM);
		return -ENOMEM;
	}
	rc = recv_all(fd, buf, plen, deadline);
	if (rc)
		transport_error(err, errlen, "read reply", rc);
	else
		rc = ctl_msg_decode(rep, buf, plen, err, errlen);
	free(buf);
	if (!rc && (rc = ctl_msg_check_version(rep, err, errlen)))
		ctl_msg_free(rep);
	return rc;
}

int ctl_call(int pid, const struct ctl_msg *req, struct ctl_msg *rep, int timeout_ms,
	     char *err, size_t errlen)
{
	int fd = ctl_connect(pid, err, errlen);
	int rc;

	if (fd < 0) {
		ctl_msg_init(rep);
		return fd;
	}
	rc = ctl_call_fd(fd, req, rep, timeout_ms, err, errlen);
	close(fd);
	return rc;
}
