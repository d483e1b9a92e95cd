/* A virtual block device: a chain of images opened from "type:path", the
 * queue of client requests, pause/unpause and statistics. Clients (the NBD
 * server, renew's copier) submit td_vbd_request_t; the vbd turns each into
 * td_requests on the top image and calls the client back once every sector
 * is accounted for. */
#ifndef RENEW_VBD_H
#define RENEW_VBD_H

#include <stdint.h>
#include "tapdisk.h"
#include "list.h"

enum vbd_op {
	VBD_OP_READ = 0,
	VBD_OP_WRITE = 1,
	VBD_OP_FLUSH = 2,
	VBD_OP_WRITE_ZEROES = 3, /* buf unused */
	VBD_OP_TRIM = 4,         /* buf unused; may be a no-op */
};

typedef struct td_vbd_handle td_vbd_t;
typedef void (*td_vbd_cb_t)(td_vbd_request_t *vreq, int err, void *cb_data);

struct td_vbd_request {
	/* set by the client */
	int op;
	int fua;                 /* write: durable before the callback */
	char *buf;               /* 4 KiB-aligned for O_DIRECT */
	uint64_t sec;
	uint32_t secs;
	td_vbd_cb_t cb;
	void *cb_data;
	/* owned by the vbd */
	td_vbd_t *vbd;
	int error;
	int64_t secs_pending;
	int phase;
	uint64_t submit_ns;
	td_vbd_request_t *gate_next; /* parked behind a closed flush gate */
	struct list_head entry;
	uint64_t next_sec;       /* write-zeroes: next sector to issue */
	int pieces_inflight;     /* write-zeroes: pieces issued, not completed */
	int issuing;             /* the vbd is issuing pieces: completions must not */
};

struct td_vbd_stats {
	uint64_t reads, writes, flushes, zeroes, trims;
	uint64_t read_bytes, write_bytes;
	uint64_t errors;
	uint64_t lat_ns_total, lat_ns_max;  /* completed requests */
	uint64_t inflight;
};

enum vbd_state { VBD_CLOSED = 0, VBD_RUNNING, VBD_PAUSING, VBD_PAUSED };

struct td_vbd_handle {
	int minor;
	char *params;            /* "renew:/path" as opened */
	td_flag_t flags;
	td_image_t *top;         /* chain, top first */
	uint64_t size;           /* sectors */
	int state;
	struct list_head held;   /* requests held while paused */
	struct list_head inflight;
	struct td_vbd_stats stats;
	struct vbd_waiter *waiters; /* told when the vbd is quiesced */
	int quiesce_timer;       /* set: the waiters are told on the loop's next turn */
	int admin_paused;        /* tap-ctl pause (a flag: pause is idempotent) */
	int holds;               /* internal pauses (renew, shutdown): counted */
	int flush_gate;          /* closed: flushes wait (renew's directory sync) */
	td_vbd_request_t *gated; /* the flushes waiting, oldest first */
	int flush_err;           /* what the next flush (or the gated ones) must report */
	unsigned behind;         /* writes acked and still landing (write-behind) */
	void *nbd;               /* the NBD export of this vbd, if any */
	int nbd_conns;           /* connections open on the export (it counts them) */
	struct list_head entry;  /* all vbds of the daemon */
};

td_vbd_t *tapdisk_vbd_create(int minor);
/* Open "type:path" and its parents. 0 or a negative errno (message logged
 * and copied into `err` when non-NULL). */
int tapdisk_vbd_open(td_vbd_t *vbd, const char *params, td_flag_t flags, char *err, size_t errlen);
void tapdisk_vbd_close(td_vbd_t *vbd);
void tapdisk_vbd_free(td_vbd_t *vbd);
/* Queue a client request; the callback may run before this returns. */
void tapdisk_vbd_queue(td_vbd_t *vbd, td_vbd_request_t *vreq);
/* Hold new requests and call `done` once nothing is in flight (maybe at once). */
void tapdisk_vbd_pause(td_vbd_t *vbd, void (*done)(td_vbd_t *, void *), void *arg);
/* Resume; with `params` non-NULL, first close the chain and open `params`
 * instead (tap-ctl unpause -a). On a failed reopen the vbd stays paused.
 * The vbd runs again only once no internal hold remains. */
int tapdisk_vbd_unpause(td_vbd_t *vbd, const char *params, char *err, size_t errlen);
/* An internal pause (renew's swap, shutdown), counted apart from the
 * admin's: an admin unpause cannot end it, nor it an admin pause. */
void tapdisk_vbd_hold(td_vbd_t *vbd, void (*done)(td_vbd_t *, void *), void *arg);
/* Close or open the flush gate: while closed, flushes (and FUA writes'
 * flush phase) wait, so nothing is reported durable before something the
 * runtime still has to make durable (a renamed overlay's directory). */
void tapdisk_vbd_gate_flushes(td_vbd_t *vbd, int closed);
/* Data the guest wrote could not be made durable behind the vbd's back
 * (renew's sync of the parent): the next flush, or the gated ones, fail. */
void tapdisk_vbd_flush_error(td_vbd_t *vbd, int err);
/* End one hold, reopening `params` first when non-NULL. */
int tapdisk_vbd_release(td_vbd_t *vbd, const char *params, char *err, size_t errlen);
/* Run the aio queue until nothing of the vbd is in flight (at most
 * `timeout_ms`); for callers outside the event loop. 0 or -ETIMEDOUT. */
int tapdisk_vbd_drain(td_vbd_t *vbd, int timeout_ms);
/* A driver's write went behind its ack (+1) or landed (-1): pause, drain
 * and close wait for it as for a request in flight. */
void tapdisk_vbd_behind(td_vbd_t *vbd, int delta);
td_vbd_t *tapdisk_vbd_find(int minor);
struct list_head *tapdisk_vbd_list(void);
const char *tapdisk_vbd_state_name(const td_vbd_t *vbd);
/* JSON object with the vbd's and the top driver's statistics (malloc'd). */
char *tapdisk_vbd_stats_json(td_vbd_t *vbd);

#endif
