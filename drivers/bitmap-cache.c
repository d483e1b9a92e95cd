/* A bounded cache of VHD sector bitmaps (see bitmap-cache.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "bitmap-cache.h"

int bm_cache_init(struct bm_cache *c, uint32_t nr_blocks, uint32_t nr_entries)
{
	memset(c, 0, sizeof(*c));
	if (nr_entries == 0)
		nr_entries = 1;
	c->entries = calloc(nr_entries, sizeof(*c->entries));
	/* calloc'd pages of untouched blocks cost no resident memory */
	c->slot_of = calloc(nr_blocks ? nr_blocks : 1, sizeof(*c->slot_of));
	if (!c->entries || !c->slot_of) {
		bm_cache_free(c);
		return -ENOMEM;
	}
	c->nr_entries = nr_entries;
	c->nr_blocks = nr_blocks;
	return 0;
}

void bm_cache_free(struct bm_cache *c)
{
	free(c->entries);
	free(c->slot_of);
	c->entries = NULL;
	c->slot_of = NULL;
}

uint8_t *bm_cache_lookup(struct bm_cache *c, uint32_t blk)
{
	uint32_t slot = blk < c->nr_blocks ? c->slot_of[blk] : 0;

	if (!slot) {
		c->misses++;
		return NULL;
	}
	c->hits++;
	c->entries[slot - 1].referenced = 1;
	return c->entries[slot - 1].bm;
}

int bm_cache_peek(const struct bm_cache *c, uint32_t blk)
{
	return blk < c->nr_blocks && c->slot_of[blk];
}

/* Second chance: skip recently referenced entries once. */
static struct bm_entry *bm_cache_victim(struct bm_cache *c)
{
	for (;;) {
		struct bm_entry *e = &c->entries[c->hand];

		c->hand = (c->hand + 1) % c->nr_entries;
		if (!e->valid)
			return e;
		if (e->referenced) {
			e->referenced = 0;
			continue;
		}
		c->slot_of[e->blk] = 0;
		e->valid = 0;
		return e;
	}
}

uint8_t *bm_cache_insert(struct bm_cache *c, uint32_t blk, const uint8_t *bm)
{
	struct bm_entry *e;
	uint32_t slot;

	if (blk >= c->nr_blocks)
		return NULL;
	slot = c->slot_of[blk];
	e = slot ? &c->entries[slot - 1] : bm_cache_victim(c);
	e->blk = blk;
	e->valid = 1;
	e->referenced = 1;
	memcpy(e->bm, bm, VHD_BITMAP_BYTES);
	c->slot_of[blk] = (uint32_t)(e - c->entries) + 1;
	return e->bm;
}

void bm_cache_drop(struct bm_cache *c, uint32_t blk)
{
	uint32_t slot = blk < c->nr_blocks ? c->slot_of[blk] : 0;

	if (!slot)
		return;
	c->entries[slot - 1].valid = 0;
	c->slot_of[blk] = 0;
}

uint32_t bm_cache_count(const struct bm_cache *c)
{
	uint32_t n = 0;

	for (uint32_t i = 0; i < c->nr_entries; i++)
		n += c->entries[i].valid;
	return n;
}
