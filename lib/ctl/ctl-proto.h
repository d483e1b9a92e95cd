/* The control protocol between tap-ctl-renew and tapdisk-renew.
 *
 * Transport: a unix stream socket RUNDIR/ctl<pid> (mode 0600). A connection
 * carries one or more request/reply exchanges, strictly in turn: the client
 * sends a request frame, the daemon answers with exactly one reply frame.
 *
 * Frame: an 8-byte header, then the payload.
 *   bytes 0..3  magic "RNWC"
 *   bytes 4..7  payload length, unsigned 32-bit big-endian, at most
 *               CTL_MAX_PAYLOAD
 * Payload: UTF-8 text, one `key=value` per line, each line ending in '\n'.
 *   - the first line is always `v=<version>` (CTL_PROTO_VERSION); a peer
 *     that receives another version answers with an error naming both.
 *   - keys are [A-Za-z0-9._-]+; a key appears at most once.
 *   - values escape '\\' as "\\\\", newline as "\\n", CR as "\\r", tab as
 *     "\\t"; NUL cannot be carried.
 *   - unknown keys are ignored, so either side can grow fields.
 *
 * Request keys: `verb` (required), then per verb `minor`, `params`
 * ("type:/path"), `ro` (1 = read-only), `device` (/dev/nbdN), `history`
 * (an absolute directory: on `open` the minor's default for its renews,
 * on `renew` this renew's; the replaced overlay is kept there).
 * Reply keys: `status` = "ok" | "error"; on error `errno` (positive) and
 * `msg` (names the disk or path and the reason); on success what the verb
 * returns (see the verb table below).
 *
 * Verbs (daemon side) and what a successful reply adds:
 *   version            version, pid, daemon
 *   attach   minor
 *   detach   minor     exiting=1 when it was the daemon's last vbd
 *   open     minor params [ro] [history]   nbd=<socket path>
 *   close    minor
 *   pause    minor     (the reply is sent once the vbd is quiesced)
 *   unpause  minor [params]
 *   list     [minor]   pid, count, then for i in 0..count-1: minor.i,
 *                      state.i (name), flags.i (tap-ctl's state bits),
 *                      held.i (requests held by a pause), ro.i, params.i,
 *                      nbd.i, device.i (the last four when open / set)
 *   stats    minor     json = the vbd's statistics as a JSON object
 *   set-device minor device   records the kernel device (empty = none)
 *   shutdown           exit once the reply is sent (refused while a vbd
 *                      is open unless force=1)
 *   renew    minor [rate] [force] [commit_only] [history]
 *                      starts a renew (rate in bytes/s) and replies at once
 *   job-status minor   the current or last renew of the minor: job.kind
 *                      (renew|commit), job.state (starting, saving-base,
 *                      copying, swapping, reopening, recording, done,
 *                      failed), job.done, job.total (bytes of the overlay's
 *                      blocks, for progress), job.copied (bytes written into
 *                      the parent), job.percent,
 *                      job.mb_per_s, job.eta_s (-1 unknown), job.elapsed_s,
 *                      job.pause_max_ms; when failed job.errno and job.msg;
 *                      with a history job.history and job.generation (and
 *                      job.msg when done but the record is incomplete)
 * A renew is the one long-running operation: the tool polls `job-status`
 * to print progress or to --wait (tapdisk-glue/renew-job.h).
 */
#ifndef RENEW_CTL_PROTO_H
#define RENEW_CTL_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define CTL_PROTO_VERSION 1
#define CTL_MAGIC "RNWC"
#define CTL_HDR_SIZE 8
#define CTL_MAX_PAYLOAD (1u << 20)
#define CTL_ERRLEN 512

/* tap-ctl's vbd state bits, printed by `list` as state=%#x. */
#define CTL_STATE_RUNNING 0x0000
#define CTL_STATE_CLOSED  0x0002
#define CTL_STATE_PAUSING 0x0010
#define CTL_STATE_PAUSED  0x0020

struct ctl_kv {
	char *key;
	char *val;
};

/* A message: ordered key/value pairs (the version is implicit). */
struct ctl_msg {
	struct ctl_kv *kv;
	size_t n, cap;
	int version;            /* as received; CTL_PROTO_VERSION when built */
};

/* --- ctl-msg.c: building and reading messages --- */
void ctl_msg_init(struct ctl_msg *m);
void ctl_msg_free(struct ctl_msg *m);
/* Set (or replace) `key`; 0 or -ENOMEM / -EINVAL (bad key or value). */
int ctl_msg_set(struct ctl_msg *m, const char *key, const char *val);
int ctl_msg_setf(struct ctl_msg *m, const char *key, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
int ctl_msg_set_int(struct ctl_msg *m, const char *key, long long v);
/* The value of `key`, or NULL. */
const char *ctl_msg_get(const struct ctl_msg *m, const char *key);
/* The value of the key built from a format ("minor.%d"), or NULL. */
const char *ctl_msg_getf(const struct ctl_msg *m, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Parse `key` as a decimal integer in [min, max]: 0, -ENOENT or -EINVAL. */
int ctl_msg_get_int(const struct ctl_msg *m, const char *key, long long min,
		    long long max, long long *out);
/* Make `m` a success / error reply (error: errno and a formatted message). */
int ctl_reply_ok(struct ctl_msg *m);
int ctl_reply_error(struct ctl_msg *m, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* 1 when a reply says status=ok. */
int ctl_reply_is_ok(const struct ctl_msg *m);

/* --- ctl-codec.c: the wire format --- */
/* Encode header + payload into a malloc'd buffer. 0 or a negative errno. */
int ctl_msg_encode(const struct ctl_msg *m, char **buf, size_t *len);
/* Check a frame header; 0 and the payload length, or -EPROTO with a reason. */
int ctl_frame_header(const unsigned char *hdr, uint32_t *len, char *err, size_t errlen);
/* Decode a payload into `m` (which it initialises); 0 or -EPROTO with a
 * reason. A version other than ours decodes (m->version says which) so the
 * caller can answer it; ctl_msg_check_version() rejects it. */
int ctl_msg_decode(struct ctl_msg *m, const char *payload, size_t len, char *err, size_t errlen);
int ctl_msg_check_version(const struct ctl_msg *m, char *err, size_t errlen);

/* --- ctl-rundir.c: where sockets live --- */
/* $RENEW_RUNDIR, else /run/blktap-control. */
const char *ctl_rundir(void);
/* Create the run directory (mode 0700) when missing; 0 or a negative errno. */
int ctl_rundir_ensure(char *err, size_t errlen);
/* RUNDIR/ctl<pid> and RUNDIR/nbd<pid>.<minor>; 0 or -ENAMETOOLONG. */
int ctl_sock_path(char *buf, size_t len, int pid);
int ctl_nbd_path(char *buf, size_t len, int pid, int minor);
/* The pid in a directory entry named ctl<pid>, or -1. */
int ctl_sock_name_pid(const char *name);

/* --- ctl-client.c: blocking calls (the tool) --- */
/* Connect to daemon `pid`: a file descriptor or a negative errno. */
int ctl_connect(int pid, char *err, size_t errlen);
/* Send `req` on `fd` and read the reply into `rep` (initialised here),
 * waiting at most timeout_ms (< 0: forever). 0 when a reply arrived (it may
 * be an error reply), else a negative errno with a reason. */
int ctl_call_fd(int fd, const struct ctl_msg *req, struct ctl_msg *rep, int timeout_ms,
		char *err, size_t errlen);
/* Connect, call, close. */
int ctl_call(int pid, const struct ctl_msg *req, struct ctl_msg *rep, int timeout_ms,
	     char *err, size_t errlen);

#endif
