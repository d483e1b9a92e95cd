/* Renew as the runtime runs it: a job per vbd that pauses briefly to turn
 * on write-through, lets the driver copy the overlay into its parent while
 * the guest runs, then pauses again for the swap and reopens the disk on
 * the fresh overlay. The driver does the image work (td_renew_* ops); the
 * job does the pausing, the reopening and the bookkeeping.
 *
 * States: starting -> copying -> swapping -> reopening -> done, or failed
 * from any of them (the overlay then stays in use, intact). With a
 * history: saving-base (in a thread, before the first pause) first, and
 * recording (in a thread, the guest running on the fresh overlay) before
 * done (see renew-history.h). */
#ifndef RENEW_RENEW_JOB_H
#define RENEW_RENEW_JOB_H

#include <stddef.h>
#include <stdint.h>
#include "vbd.h"

struct renew_opts {
	int commit_only;
	int force;
	uint64_t rate_bps;
	const char *history_dir;   /* keep the old overlay there (NULL: no history) */
};

enum renew_state {
	RENEW_NONE = 0, RENEW_STARTING, RENEW_COPYING, RENEW_SWAPPING,
	RENEW_REOPENING, RENEW_DONE, RENEW_FAILED, RENEW_SAVING_BASE, RENEW_RECORDING,
};

typedef void (*renew_done_cb_t)(td_vbd_t *vbd, int err, const char *why, void *arg);

/* Start a renew of `vbd`; `done` runs when it ends (either way).
 * Refuses (negative errno, message in err) when one is running already,
 * the disk is paused or closed, or its top image is not an overlay. */
int tapdisk_renew_start(td_vbd_t *vbd, const struct renew_opts *opts,
			renew_done_cb_t done, void *arg, char *err, size_t errlen);
/* Is a renew of `vbd` running (not done or failed)? */
int tapdisk_renew_running(td_vbd_t *vbd);
/* A snapshot of the current or last renew of a vbd. */
struct renew_status {
	int state;
	const char *state_name;
	int commit_only;
	uint64_t bytes_done, bytes_total;    /* progress, in the overlay's blocks */
	uint64_t bytes_copied;               /* written into the parent */
	double percent, mb_per_s, eta_s;     /* eta_s < 0: unknown */
	double elapsed_s;
	double pause_max_ms, pause_total_ms;
	double drain_max_ms;                 /* of the pauses: waiting for requests in flight */
	int err;                             /* negative errno when failed */
	const char *why;                     /* the failure, naming path and reason */
	const char *history_dir;             /* NULL without a history */
	long generation;                     /* the history generation it makes (-1: none yet) */
	double history_percent;              /* of saving-base or recording */
};
/* Fill `st`; -ENOENT when the vbd has had no renew. */
int tapdisk_renew_status(td_vbd_t *vbd, struct renew_status *st);
/* The same as a JSON object (malloc'd), or NULL when there has been none. */
char *tapdisk_renew_status_json(td_vbd_t *vbd);
/* The vbd is going away: forget its job (a running one is abandoned
 * safely only when paused; callers refuse destroy while running). */
void tapdisk_renew_forget(td_vbd_t *vbd);

#endif
