/* The event loop: one epoll set, fd callbacks, timers, and hooks that run
 * once per iteration (the aio queue submits its batch from one). */
#ifndef RENEW_SCHEDULER_H
#define RENEW_SCHEDULER_H

#include <stdint.h>

#define SCHED_READ  0x1
#define SCHED_WRITE 0x2
#define SCHED_EDGE  0x4 /* edge-triggered: report each new readiness once */

typedef void (*sched_fd_cb_t)(int fd, int events, void *arg);
typedef void (*sched_timer_cb_t)(void *arg);
typedef void (*sched_hook_cb_t)(void *arg);

int sched_init(void);
void sched_fini(void);
/* Watch `fd` for `events`; returns an id > 0 or a negative errno. */
int sched_register_fd(int fd, int events, sched_fd_cb_t cb, void *arg);
/* Change the events watched for an id (0 = none, keep registered). */
int sched_modify_fd(int id, int events);
void sched_unregister(int id);
/* Call `cb` once after `ms` milliseconds; returns an id > 0. */
int sched_timer(uint64_t ms, sched_timer_cb_t cb, void *arg);
void sched_cancel_timer(int id);
/* Call `cb` at the end of every loop iteration until removed. */
int sched_add_hook(sched_hook_cb_t cb, void *arg);
void sched_remove_hook(int id);
/* Run until sched_stop(); returns 0. A stop asked before the loop runs
 * makes the next sched_run() return after one iteration (tools rely on it). */
int sched_run(void);
/* The longest stretch of work between two waits for events, in ns. */
uint64_t sched_busy_max_ns(void);
/* Adaptive polling before each sleep, at most this many microseconds
 * (0: never poll). The current window and how many waits it ended. */
#define SCHED_POLL_MAX_US_DEFAULT 512
void sched_set_poll_max_us(unsigned int us);
unsigned int sched_poll_max_us(void);
uint64_t sched_poll_ns(void);
uint64_t sched_poll_hits(void);
void sched_stop(void);
/* Make the next wait return at once: work was queued outside an fd
 * callback (e.g. a deferred completion) that a hook must pick up. */
void sched_kick(void);
/* Monotonic clock in nanoseconds. */
uint64_t sched_now_ns(void);

#endif
