/* Write-behind: a driver hands an overwrite to the kernel and the write is
 * acknowledged once io_submit has accepted it, not once it has landed.
 * See write-behind.c for the rules that keep this safe. */
#ifndef RENEW_WRITE_BEHIND_H
#define RENEW_WRITE_BEHIND_H
#include <stddef.h>
#include <stdint.h>
#include "tapdisk.h"

#define WB_MAX_WRITES 128           /* writes landing at once, per image */
#define WB_MAX_BYTES  (8u << 20)    /* their copied data, per image */
#define WB_MAX_LEN    (64u << 10)   /* larger writes are acked when they land */
#define WB_WINDOWS    4096          /* buckets of the overlap filter */
#define WB_POOL_BYTES (1u << 20)    /* buffers kept for reuse, per image */

struct wb_write;
struct wb_waiter;

struct td_wb_stats {
	uint64_t writes;        /* acknowledged before landing */
	uint64_t waits;         /* requests that waited for an overlapping write */
	uint64_t barriers;      /* flushes that waited for writes to land */
	uint64_t errors;        /* writes that failed after their ack */
	unsigned max_landing;   /* most writes landing at once */
};

struct td_wb {
	char *path;             /* the image, for messages */
	int enabled;            /* the filesystem and the setting allow it */
	int broken;             /* a write failed after its ack: no more early acks */
	int err;                /* that failure, until a flush reports it */
	uint64_t seq;           /* writes taken so far */
	struct wb_write *head, *tail; /* landing, oldest first */
	unsigned count;
	size_t bytes;
	struct wb_waiter *waiters, *waiters_tail; /* parked on an overlap */
	struct wb_waiter *barriers, *barriers_tail;
	struct wb_write *pool;  /* settled writes kept with their buffers */
	size_t pooled;          /* bytes of buffers in the pool */
	uint16_t windows[WB_WINDOWS]; /* writes landing per hashed 2 MiB window */
	struct td_wb_stats stats;
};

typedef void (*td_wb_cb_t)(void *arg, int err);

/* Decide once per open whether `path`'s writes may go behind: only on a
 * filesystem whose overwrites never allocate, and unless
 * RENEW_WRITE_BEHIND=0. `fd` is any descriptor of the file. */
void td_wb_init(struct td_wb *wb, int fd, const char *path);

/* Could a write of `len` bytes go behind its ack now (on, not broken,
 * within the bounds)? Cheap: ask it before costlier checks of your own. */
int td_wb_room(const struct td_wb *wb, size_t len);

/* Overwrite [off, off + len) of `fd` with the piece's data behind its ack.
 * The caller has checked td_wb_landing first and knows that, once the data
 * lands, nothing more is needed for the write to be whole (no bitmap,
 * no BAT). Returns 1 when taken (the piece completes when submitted), 0
 * when the caller must write it itself. */
int td_wb_write(struct td_wb *wb, td_driver_t *drv, int fd, td_request_t treq, uint64_t off);

/* Does [off, off + len) overlap a write still landing? */
int td_wb_landing(const struct td_wb *wb, uint64_t off, uint64_t len);

/* `cb(arg, 0)` once no write overlapping [off, off + len) is landing (the
 * caller found one with td_wb_landing); 0, or -ENOMEM. */
int td_wb_wait(struct td_wb *wb, uint64_t off, uint64_t len, td_wb_cb_t cb, void *arg);

/* `cb(arg, err)` once every write taken so far has landed; err reports a
 * write that failed after its ack (once). */
void td_wb_barrier(struct td_wb *wb, td_wb_cb_t cb, void *arg);

/* Drain, then forget the image (close). */
void td_wb_fini(struct td_wb *wb);

/* The stats as JSON members, for a driver's td_stats extra field. */
int td_wb_stats_json(const struct td_wb *wb, char *buf, size_t len);

#endif
