/* tap-ctl-renew: the parts of the control tool, one concern per file. */
#ifndef RENEW_CTL_TOOL_H
#define RENEW_CTL_TOOL_H

#include <stdio.h>
#include "ctl-proto.h"

#define PROG "tap-ctl-renew"
#define EXIT_USAGE 2

/* How long a daemon may take to answer, in milliseconds. */
#define TOOL_TIMEOUT_MS 30000
#define TOOL_PAUSE_TIMEOUT_MS 300000
#define TOOL_SCAN_TIMEOUT_MS 5000

/* --connections: the kernel client's limit is far above what helps. */
#define NBD_MAX_CONNECTIONS 16

/* The command line, tap-ctl's flags. */
struct opts {
	const char *verb;
	int pid;                 /* -p, or -1 */
	int minor;               /* -m, or -1 */
	const char *params;      /* -a TYPE:PATH */
	int ro;                  /* -R */
	const char *file;        /* -f */
	const char *type;        /* -t */
	const char *device;      /* -d /dev/nbdN (destroy) */
	int socket_only;         /* --socket-only */
	int connections;         /* --connections N, or 0: the default */
	int json;                /* --json */
	int wait;                /* --wait */
	unsigned long long rate_bps; /* --rate MB/s */
	int force;               /* --force */
	int commit_only;         /* --commit-only */
	const char *history;     /* --history DIR (absolute) */
};

/* One vbd as a daemon lists it. */
struct vbd_entry {
	int pid, minor;          /* minor -1: a daemon without vbds */
	int flags;
	char *state, *params, *nbd, *device;
	int ro;
	long held;               /* requests held by a pause */
};

struct vbd_list {
	struct vbd_entry *e;
	size_t n, cap;
};

/* ctl-call.c: requests and errors */
void die(const struct opts *o, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
void warnx_(const struct opts *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void req_init(struct ctl_msg *req, const char *verb, int minor);
/* Call daemon `pid`; 0 with an ok reply in `rep`, else prints
 * "tap-ctl-renew: VERB: why" and returns -1 (rep freed). */
int call(const struct opts *o, int pid, const struct ctl_msg *req, struct ctl_msg *rep,
	 int timeout_ms);
/* The same, quiet: the reason is left in `err`. */
int call_quiet(int pid, const struct ctl_msg *req, struct ctl_msg *rep, int timeout_ms,
	       char *err, size_t errlen);
/* A simple verb on (pid, minor); 0 or -1 (printed). */
int simple_verb(const struct opts *o, const char *verb, int pid, int minor);
/* 1 while process `pid` exists and its main thread is not a zombie. */
int pid_alive(int pid);
/* Wait up to `ms` for `pid` to end, every thread of it; 0 once gone, -1
 * on timeout. */
int wait_pid_gone(int pid, int ms);

/* ctl-spawn.c */
/* Start a daemon; its pid, or -1 after printing why. */
int spawn_daemon(const struct opts *o);

/* ctl-list.c */
/* Every running daemon's pids (sorted); stale sockets are removed. */
int scan_daemons(const struct opts *o, int **pids, size_t *n);
/* The vbds of daemon `pid` (minor -1 = all) appended to `l`; 0 or -1. */
int list_daemon(const struct opts *o, int pid, int minor, struct vbd_list *l, char *err,
		size_t errlen);
void vbd_list_free(struct vbd_list *l);
/* Remove a dead daemon's control and NBD sockets. */
void remove_daemon_sockets(int pid);
int cmd_list(const struct opts *o);

/* ctl-renew.c */
int cmd_renew(const struct opts *o);

/* ctl-create.c */
int cmd_create(const struct opts *o);
int cmd_destroy(const struct opts *o);

/* ctl-nbd.c: the kernel NBD client */
/* Connect a free /dev/nbdN to `sock`; 0 and the device, or -1 with why. */
int nbd_connect(const char *sock, int connections, char *dev, size_t devlen, char *err,
		size_t errlen);
/* /dev/nbdN gets one connection unless asked for more. The kernel client
 * reads each connection's replies in a work item of one workqueue; when it
 * is slow to start a worker (a loaded or small dom0), the queue's rescuer
 * thread runs the items one after the other, and as the first never ends,
 * a second connection's replies are never read: its requests hang until
 * the kernel's 30 s timeout. blkback submits from one thread per ring, so
 * a guest gains little from more. */
#define NBD_DEFAULT_CONNECTIONS 1
/* Disconnect `dev`; 0 or -1 with why. */
int nbd_disconnect(const char *dev, char *err, size_t errlen);
/* Whether the nbd module can be used, in words; 1 = yes. */
int nbd_available(char *why, size_t whylen);

/* ctl-json.c */
void json_pretty(FILE *f, const char *json);
void json_string(FILE *f, const char *s);

/* ctl-check.c */
int cmd_check(const struct opts *o);
/* The daemon program next to our own, else on PATH. */
int find_daemon(char *path, size_t len);

#endif
