/* Blocking work (an fsync, a file's creation) run in a thread so the event
 * loop, and with it every guest request, keeps going; the result comes
 * back on the loop. */
#ifndef RENEW_WORKER_H
#define RENEW_WORKER_H

/* Run fn(arg) in a new thread; done(arg, its result) runs on the loop.
 * Returns 0, or a negative errno when no thread could be started (then
 * nothing runs). */
int td_worker_run(int (*fn)(void *arg), void *arg, void (*done)(void *arg, int rc));

#endif
