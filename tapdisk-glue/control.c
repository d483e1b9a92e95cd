/* The daemon's control server: RUNDIR/ctl<pid>, non-blocking, many
 * connections, each carrying requests strictly in turn. The verbs
 * themselves are in control-verbs.c. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include "control.h"
#include "control-priv.h"
#include "ctl-proto.h"
#include "list.h"
#include "scheduler.h"
#include "tapdisk.h"

#define CTL_MAX_CONNS 128
#define CTL_READ_CHUNK 4096

struct ctl_conn {
	int fd, id;
	char *rbuf;
	size_t rlen, rcap;
	char *wbuf;
	size_t wlen, woff;
	int waiting;             /* an asynchronous verb owes a reply */
	int in_dispatch;         /* a verb is running on this connection */
	int eof;                 /* the client closed its side */
	int closing;             /* close once the reply is sent (bad frame) */
	int stop_after;          /* stop the daemon once the reply is sent */
	int events;              /* what the scheduler watches */
	struct list_head entry;
};

static struct {
	int fd, id;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	struct list_head conns;
	int nconns;
} ctl = { .fd = -1, .conns = LIST_HEAD_INIT(ctl.conns) };

static void conn_pump(struct ctl_conn *c);

const char *tapdisk_control_path(void)
{
	return ctl.path;
}

/* Before closing on a client that may still be sending (a rejected
 * frame), read what it sent: closing with unread data would reset the
 * connection and the client could lose our error reply. */
static void conn_linger(struct ctl_conn *c)
{
	char buf[4096];

	shutdown(c->fd, SHUT_WR);
	for (int i = 0; i < 64; i++)
		if (recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT) <= 0)
			break;
}

/* Drop a connection and everything it buffered. */
static void conn_free(struct ctl_conn *c)
{
	if (c->id > 0)
		sched_unregister(c->id);
	if (c->closing)
		conn_linger(c);
	close(c->fd);
	list_del(&c->entry);
	ctl.nconns--;
	free(c->rbuf);
	free(c->wbuf);
	free(c);
}

/* Watch only what the connection can act on now. */
static void conn_watch(struct ctl_conn *c, int events)
{
	if (c->events != events && sched_modify_fd(c->id, events) == 0)
		c->events = events;
}

/* Queue an encoded reply; a reply that cannot be encoded closes the link. */
static void conn_queue(struct ctl_conn *c, const struct ctl_msg *rep)
{
	char *buf;
	size_t len;

	if (ctl_msg_encode(rep, &buf, &len)) {
		EPRINTF("control: cannot encode a reply; closing the connection\n");
		c->closing = 1;
		return;
	}
	free(c->wbuf);
	c->wbuf = buf;
	c->wlen = len;
	c->woff = 0;
}

/* Answer a malformed frame with an error, then close. */
static void conn_reject(struct ctl_conn *c, int err, const char *why)
{
	struct ctl_msg rep;

	ctl_msg_init(&rep);
	ctl_reply_error(&rep, err, "%s", why);
	conn_queue(c, &rep);
	ctl_msg_free(&rep);
	c->closing = 1;
}

/* Decode and serve one request whose payload is complete. */
static void conn_serve(struct ctl_conn *c, const char *payload, size_t len)
{
	char err[CTL_ERRLEN];
	struct ctl_msg req;
	struct ctl_req r = { .conn = c, .req = &req };
	int rc;

	if (ctl_msg_decode(&req, payload, len, err, sizeof(err))) {
		conn_reject(c, EPROTO, err);
		return;
	}
	ctl_msg_init(&r.rep);
	if (ctl_msg_check_version(&req, err, sizeof(err))) {
		ctl_msg_free(&req);
		conn_reject(c, EPROTONOSUPPORT, err);
		return;
	}
	c->waiting = 1;
	c->in_dispatch = 1;
	rc = control_dispatch(&r);
	c->in_dispatch = 0;
	if (rc != CTL_ASYNC) {
		c->waiting = 0;
		c->stop_after = r.stop_after;
		conn_queue(c, &r.rep);
	}
	ctl_msg_free(&r.rep);
	ctl_msg_free(&req);
}

/* Serve the first buffered frame if it is complete; 1 when one was. */
static int conn_take_frame(struct ctl_conn *c)
{
	char err[CTL_ERRLEN];
	uint32_t plen;
	size_t total;

	if (c->rlen < CTL_HDR_SIZE)
		return 0;
	if (ctl_frame_header((unsigned char *)c->rbuf, &plen, err, sizeof(err))) {
		conn_reject(c, EPROTO, err);
		c->rlen = 0;
		return 1;
	}
	total = CTL_HDR_SIZE + plen;
	if (c->rlen < total)
		return 0;
	conn_serve(c, c->rbuf + CTL_HDR_SIZE, plen);
	if (c->closing) {
		c->rlen = 0;     /* nothing after a rejected frame is served */
		return 1;
	}
	memmove(c->rbuf, c->rbuf + total, c->rlen - total);
	c->rlen -= total;
	return 1;
}

/* Write what is queued; 0 when all is out, 1 when the socket is full,
 * -1 when the peer is gone. */
static int conn_flush(struct ctl_conn *c)
{
	while (c->woff < c->wlen) {
		ssize_t n = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff,
				 MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return 1;
		if (n < 0)
			return -1;
		c->woff += (size_t)n;
	}
	free(c->wbuf);
	c->wbuf = NULL;
	c->wlen = c->woff = 0;
	return 0;
}

/* Move the connection along: flush, stop, serve the next frame, or wait. */
static void conn_pump(struct ctl_conn *c)
{
	for (;;) {
		int w = conn_flush(c);

		if (w < 0) {
			if (!c->waiting) {
				if (c->stop_after)
					sched_stop();
				conn_free(c);
			}
			return;
		}
		if (w > 0) {
			conn_watch(c, SCHED_WRITE);
			return;
		}
		if (c->stop_after) {
			c->stop_after = 0;
			sched_stop();
		}
		if (c->waiting) {
			conn_watch(c, 0);
			return;
		}
		if (c->closing || (c->eof && c->rlen < CTL_HDR_SIZE)) {
			conn_free(c);
			return;
		}
		if (!conn_take_frame(c))
			break;
	}
	if (c->eof) {
		conn_free(c);    /* a truncated frame will never complete */
		return;
	}
	conn_watch(c, SCHED_READ);
}

/* Read what the client sent, bounded by the largest possible frame. */
static void conn_read(struct ctl_conn *c)
{
	for (;;) {
		ssize_t n;

		if (c->rcap - c->rlen < CTL_READ_CHUNK) {
			size_t cap = c->rcap ? c->rcap * 2 : CTL_READ_CHUNK * 2;
			char *p;

			if (cap > CTL_HDR_SIZE + CTL_MAX_PAYLOAD + 2 * CTL_READ_CHUNK)
				return;          /* a full frame is already buffered */
			p = realloc(c->rbuf, cap);
			if (!p)
				return;
			c->rbuf = p;
			c->rcap = cap;
		}
		n = recv(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen, MSG_DONTWAIT);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return;
		if (n <= 0) {
			c->eof = 1;
			return;
		}
		c->rlen += (size_t)n;
	}
}

/* The scheduler's callback for a client connection. */
static void conn_event(int fd, int events, void *arg)
{
	struct ctl_conn *c = arg;

	if (events & SCHED_READ)
		conn_read(c);
	conn_pump(c);
}

void control_reply_async(struct ctl_conn *c, struct ctl_msg *rep)
{
	conn_queue(c, rep);
	c->waiting = 0;
	if (!c->in_dispatch)
		conn_pump(c);
}

/* Take one new client; beyond the limit it is closed at once. */
static void accept_one(int cfd)
{
	struct ctl_conn *c;

	if (ctl.nconns >= CTL_MAX_CONNS) {
		EPRINTF("control: %d connections open; refusing another\n", ctl.nconns);
		close(cfd);
		return;
	}
	c = calloc(1, sizeof(*c));
	if (!c) {
		close(cfd);
		return;
	}
	c->fd = cfd;
	c->events = SCHED_READ;
	c->id = sched_register_fd(cfd, SCHED_READ, conn_event, c);
	if (c->id < 0) {
		EPRINTF("control: watch a new connection: %s\n", strerror(-c->id));
		close(cfd);
		free(c);
		return;
	}
	list_add_tail(&c->entry, &ctl.conns);
	ctl.nconns++;
}

/* The listening socket is readable: accept everyone waiting. */
static void control_accept(int fd, int events, void *arg)
{
	for (;;) {
		int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (cfd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno != EAGAIN)
				EPRINTF("control: accept on %s: %s\n", ctl.path, strerror(errno));
			return;
		}
		accept_one(cfd);
	}
}

/* Bind `fd` to ctl.path with mode 0600 from the start (no window). */
static int bind_private(int fd, char *err, size_t errlen)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	mode_t old;
	int rc, e;

	memcpy(sa.sun_path, ctl.path, sizeof(sa.sun_path));
	unlink(ctl.path);
	old = umask(0177);
	rc = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
	e = errno;
	umask(old);
	if (rc) {
		snprintf(err, errlen, "bind control socket %s: %s", ctl.path, strerror(e));
		return -e;
	}
	if (chmod(ctl.path, 0600)) {
		e = errno;
		snprintf(err, errlen, "chmod control socket %s: %s", ctl.path, strerror(e));
		unlink(ctl.path);
		return -e;
	}
	return 0;
}

int tapdisk_control_open(char *err, size_t errlen)
{
	int rc, e;

	rc = ctl_rundir_ensure(err, errlen);
	if (rc)
		return rc;
	if (ctl_sock_path(ctl.path, sizeof(ctl.path), getpid())) {
		snprintf(err, errlen, "control socket path under %s is too long", ctl_rundir());
		return -ENAMETOOLONG;
	}
	ctl.fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (ctl.fd < 0) {
		e = errno;
		snprintf(err, errlen, "control socket: %s", strerror(e));
		return -e;
	}
	rc = bind_private(ctl.fd, err, errlen);
	if (!rc && listen(ctl.fd, 64)) {
		rc = -errno;
		snprintf(err, errlen, "listen on control socket %s: %s", ctl.path, strerror(-rc));
		unlink(ctl.path);
	}
	if (!rc) {
		ctl.id = sched_register_fd(ctl.fd, SCHED_READ, control_accept, NULL);
		if (ctl.id < 0) {
			rc = ctl.id;
			snprintf(err, errlen, "watch control socket %s: %s", ctl.path, strerror(-rc));
			unlink(ctl.path);
		}
	}
	if (rc) {
		close(ctl.fd);
		ctl.fd = -1;
		ctl.path[0] = '\0';
	}
	return rc;
}

void tapdisk_control_close(void)
{
	struct list_head *p, *n;

	list_for_each_safe(p, n, &ctl.conns)
		conn_free(list_entry(p, struct ctl_conn, entry));
	control_verbs_fini();
	if (ctl.fd < 0)
		return;
	sched_unregister(ctl.id);
	close(ctl.fd);
	ctl.fd = -1;
	unlink(ctl.path);
	ctl.path[0] = '\0';
}
