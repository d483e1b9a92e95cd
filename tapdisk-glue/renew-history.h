/* The renew job's history steps (lib/history), run in a thread so the
 * event loop keeps serving the guest: before the first pause, recover the
 * history directory, save the base as generation 0 when the history is
 * new (a copy of the whole base: minutes for a big one) and check the
 * history is this disk's; after the reopen, hash the replaced overlay
 * (GiBs), log it and give it its final name. The guest-visible pause only
 * holds the hard link of the old overlay (drivers/renew-copy.c).
 *
 * Also each minor's default history directory (`tap-ctl-renew create
 * --history DIR`), used by renews that name none. */
#ifndef RENEW_RENEW_HISTORY_H
#define RENEW_RENEW_HISTORY_H

#include <stddef.h>
#include <stdint.h>

struct renew_history;
/* A step ended (err 0, or a negative errno and the reason). */
typedef void (*renew_history_cb_t)(void *arg, int err, const char *why);

/* Lock and prepare the history DIR for a renew of the overlay `disk` over
 * `base`; `done` runs on the event loop. NULL (with why) when the step
 * cannot even start. */
struct renew_history *renew_history_prepare(const char *dir, const char *disk, const char *base,
					    renew_history_cb_t done, void *arg, char *why, size_t whylen);
/* After a prepare: the generation the renew makes, and the path the swap
 * must hard-link the old overlay to. */
uint32_t renew_history_gen(const struct renew_history *rh);
const char *renew_history_pending(const struct renew_history *rh);
/* After the swap: record the generation (committed at `time_us`). */
int renew_history_record(struct renew_history *rh, int64_t time_us, renew_history_cb_t done, void *arg);
/* How far the running step is, 0..100. */
double renew_history_percent(const struct renew_history *rh);
/* Unlock and free; a step still running is left to end on its own. */
void renew_history_release(struct renew_history *rh);

/* The default history of a minor (NULL clears it); 0 or -ENOMEM. */
int renew_history_set_default(int minor, const char *dir);
/* The default history of a minor, or NULL. */
const char *renew_history_default(int minor);

#endif
