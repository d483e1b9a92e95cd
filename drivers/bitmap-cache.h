/* A bounded cache of VHD sector bitmaps, indexed by block number.
 *
 * Only partially-filled blocks need their bitmap on the I/O path (a full
 * block is remembered by one bit elsewhere), so a few thousand entries
 * cover a working set of many GiB while memory stays flat. Eviction is a
 * clock (second chance) sweep: cheap, and good enough for disk access
 * patterns that revisit hot blocks.
 */
#ifndef RENEW_BITMAP_CACHE_H
#define RENEW_BITMAP_CACHE_H

#include <stdint.h>
#include "vhd.h"

struct bm_entry {
	uint32_t blk;
	uint8_t valid;
	uint8_t referenced;
	uint8_t bm[VHD_BITMAP_BYTES];
};

struct bm_cache {
	struct bm_entry *entries;
	uint32_t nr_entries;
	uint32_t hand;             /* clock hand */
	uint32_t *slot_of;         /* per block: entry index + 1, 0 = absent */
	uint32_t nr_blocks;
	uint64_t hits, misses;
};

int bm_cache_init(struct bm_cache *c, uint32_t nr_blocks, uint32_t nr_entries);
void bm_cache_free(struct bm_cache *c);
/* The cached bitmap of `blk`, or NULL. */
uint8_t *bm_cache_lookup(struct bm_cache *c, uint32_t blk);
/* Is `blk` cached? (no hit or miss counted, no reference taken) */
int bm_cache_peek(const struct bm_cache *c, uint32_t blk);
/* A slot for `blk` (evicting another block's), filled from `bm`. */
uint8_t *bm_cache_insert(struct bm_cache *c, uint32_t blk, const uint8_t *bm);
/* Forget `blk` (e.g. it became full). */
void bm_cache_drop(struct bm_cache *c, uint32_t blk);
uint32_t bm_cache_count(const struct bm_cache *c);

#endif
