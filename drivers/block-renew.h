/* The state of a `renew`/`vhd` image, shared by the driver's files:
 * block-renew.c (I/O) and renew-copy.c (the commit into the parent). */
#ifndef RENEW_BLOCK_RENEW_H
#define RENEW_BLOCK_RENEW_H

#include <stdint.h>
#include "tapdisk.h"
#include "vhd.h"
#include "bitmap-cache.h"
#include "write-behind.h"

#define BM_CACHE_ENTRIES 4096   /* 2 MiB of bitmaps: 8 GiB of partial blocks */
#define BM_CACHE_ENTRIES_MAX (1u << 20) /* 512 MiB of bitmaps: 2 TiB */
#define IO_POOL_CHUNK    256

struct renew_state;
struct renew_copy;

/* One I/O in flight, or one write piece waiting for its block's allocation. */
struct renew_io {
	struct tiocb tiocb;
	td_request_t treq;
	struct renew_state *s;
	struct renew_alloc *alloc;  /* set for the write that allocates */
	uint32_t blk;
	uint8_t bitmap_update;      /* set bits after the data lands */
	struct renew_io *next;      /* free list or waiter list */
};

/* A block being allocated: later writes to it wait here. */
struct renew_alloc {
	uint32_t blk;
	uint32_t bm_sec;
	uint64_t prev_footer_off;   /* to give the space back if the data fails */
	struct renew_io *waiters;
	struct renew_alloc *next;
};

/* A bitmap being read from the file: the pieces that need it wait here,
 * so a cache miss costs the loop nothing. */
struct renew_fetch {
	struct tiocb tiocb;
	struct renew_state *s;
	uint32_t blk;
	int stale;                  /* the bitmap was written meanwhile */
	uint8_t *buf;               /* aligned for O_DIRECT */
	struct renew_io *waiters;   /* in arrival order */
	struct renew_fetch *next;
};

struct renew_state {
	struct vhd_image vhd;
	int dfd;                    /* data: O_DIRECT when the file allows */
	int rdonly;
	uint8_t *full;              /* one bit per block: every sector present */
	uint8_t *solid;             /* two bits per block: data checked, and without holes */
	struct bm_cache cache;
	struct renew_alloc *allocs; /* allocations in progress */
	struct renew_fetch *fetches; /* bitmap reads in flight */
	struct renew_fetch *free_fetches; /* kept for the next misses */
	struct renew_io *free_io;
	void **chunks;
	int nr_chunks;
	uint64_t blocks_allocated;
	uint64_t full_blocks;
	td_driver_t *drv;
	struct renew_copy *copy;    /* a commit into the parent, when running */
	struct renew_copy *prepared; /* checked and opened, not started yet */
	struct td_wb wb;            /* overwrites acked before they land */
};

/* block-renew.c, for renew-copy.c */
int renew_block_full(const struct renew_state *s, uint32_t blk);
/* The overlay's own write and flush paths (no write-through). */
void renew_write_local(struct renew_state *s, td_request_t treq);
/* Does the overlay already hold every sector of the piece `p` (one block's)?
 * 0 when it cannot tell without reading a bitmap. */
int renew_holds(struct renew_state *s, td_request_t p);
void renew_flush_local(struct renew_state *s, td_request_t treq);

/* renew-copy.c, for block-renew.c */
/* A guest write during a commit: to the overlay and to the parent. */
void renew_copy_write(struct renew_state *s, td_request_t treq);
/* A guest read during a commit: the copier yields to a busy guest. */
void renew_copy_note_guest(struct renew_state *s);
/* A guest flush during a commit: the parent too. */
void renew_copy_flush(struct renew_state *s, td_request_t treq);
int renew_copy_prepare(struct renew_state *s, struct td_renew_job *job);
int renew_copy_begin(struct renew_state *s, struct td_renew_job *job);
void renew_copy_swap(struct renew_state *s, struct td_renew_job *job);
void renew_copy_end(struct renew_state *s, struct td_renew_job *job);
/* Remove a fresh overlay a crash left behind before its rename. */
void renew_remove_stale(const char *path);

#endif
