/* Where things live in a dynamic VHD: metadata extents, block placement
 * and the scan that finds blocks past the end or overlapping anything. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "vhd.h"

struct extent {
	uint64_t start, end;
	const char *what;
	uint32_t idx;
};

/* Our BAT area: whole 4 KiB units so what follows stays aligned. */
uint64_t vhd_bat_bytes(uint32_t max_bat_size)
{
	return ((uint64_t)max_bat_size * 4 + VHD_DATA_ALIGN - 1) & ~(uint64_t)(VHD_DATA_ALIGN - 1);
}

/* Sectors' worth of bytes: what others' BATs and locators occupy at least. */
static uint64_t sec_round(uint64_t b)
{
	return (b + VHD_SECTOR_SIZE - 1) & ~(uint64_t)(VHD_SECTOR_SIZE - 1);
}

/* Footer copy, header, BAT, used locators: the extents blocks must avoid. */
static int metadata_extents(const struct vhd_image *img, struct extent *ex)
{
	const struct vhd_header *h = &img->header;
	int n = 0;

	ex[n++] = (struct extent){ 0, VHD_FOOTER_SIZE, "footer copy at offset 0", 0 };
	ex[n++] = (struct extent){ img->footer.data_offset, img->footer.data_offset + VHD_HEADER_SIZE, "header", 0 };
	ex[n++] = (struct extent){ h->table_offset, h->table_offset + sec_round((uint64_t)h->max_bat_size * 4), "BAT", 0 };
	for (uint32_t i = 0; i < 8; i++)
		if (h->loc[i].code != VHD_PLAT_NONE && h->loc[i].data_space)
			ex[n++] = (struct extent){ h->loc[i].data_offset,
						   h->loc[i].data_offset + vhd_locator_space(&h->loc[i]),
						   "parent locator", i };
	return n;
}

/* Blocks may start after every metadata extent; our BAT area is padded to
 * 4 KiB, so count the padding too unless a block (another writer's
 * layout) already starts inside it. */
uint64_t vhd_metadata_end(const struct vhd_image *img)
{
	struct extent ex[11];
	int n = metadata_extents(img, ex);
	uint64_t end = 0, lowest = img->footer_off;
	uint64_t bat4k = img->header.table_offset + vhd_bat_bytes(img->header.max_bat_size);

	for (int i = 0; i < n; i++)
		if (ex[i].end > end)
			end = ex[i].end;
	for (uint32_t i = 0; img->bat && i < img->header.max_bat_size; i++)
		if (img->bat[i] != VHD_BAT_UNUSED && ((uint64_t)img->bat[i] << VHD_SECTOR_SHIFT) < lowest)
			lowest = (uint64_t)img->bat[i] << VHD_SECTOR_SHIFT;
	if (bat4k > end && bat4k <= lowest)
		end = bat4k;
	return end;
}

/* A new block's bitmap offset: data (after the bitmap) 4 KiB-aligned. */
uint64_t vhd_next_block_off(const struct vhd_image *img, uint64_t footer_off)
{
	uint64_t bm = (uint64_t)img->bm_secs << VHD_SECTOR_SHIFT;
	uint64_t from = footer_off > img->first_block ? footer_off : img->first_block;

	return ((from + bm + VHD_DATA_ALIGN - 1) & ~(uint64_t)(VHD_DATA_ALIGN - 1)) - bm;
}

/* Sort blocks by offset to find neighbours that overlap. */
static int cmp_extent(const void *a, const void *b)
{
	const struct extent *x = a, *y = b;
	return x->start < y->start ? -1 : x->start > y->start;
}

/* Report one problem through the callback. */
static void say(void (*problem)(void *, const char *), void *arg, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void say(void (*problem)(void *, const char *), void *arg, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (problem)
		problem(arg, msg);
}

/* Metadata against metadata and the end of the file. */
static int scan_metadata(const struct vhd_image *img, struct extent *ex, int n,
			 void (*problem)(void *, const char *), void *arg)
{
	int bad = 0;

	for (int i = 0; i < n; i++) {
		if (ex[i].end > img->footer_off) {
			say(problem, arg, "%s %u (bytes %llu..%llu) extends past the end footer at %llu", ex[i].what,
			    ex[i].idx, (unsigned long long)ex[i].start, (unsigned long long)ex[i].end,
			    (unsigned long long)img->footer_off);
			bad++;
		}
		for (int j = 0; j < i; j++)
			if (ex[i].start < ex[j].end && ex[j].start < ex[i].end) {
				say(problem, arg, "%s overlaps the %s", ex[i].what, ex[j].what);
				bad++;
			}
	}
	return bad;
}

/* Every used BAT entry inside the file, clear of metadata and of each other. */
int vhd_layout_scan(const struct vhd_image *img,
		    void (*problem)(void *arg, const char *msg), void *arg,
		    uint64_t *used_end)
{
	struct extent meta[11], *blk;
	uint64_t bytes = (uint64_t)(img->bm_secs + img->spb) << VHD_SECTOR_SHIFT, end = 0;
	uint32_t nb = 0;
	int nm = metadata_extents(img, meta), bad;

	bad = scan_metadata(img, meta, nm, problem, arg);
	for (int i = 0; i < nm; i++)
		if (meta[i].end > end)
			end = meta[i].end;
	blk = malloc(((size_t)img->header.max_bat_size + 1) * sizeof(*blk));
	if (!blk) {
		say(problem, arg, "out of memory scanning the BAT");
		return bad + 1;
	}
	for (uint32_t i = 0; i < img->header.max_bat_size; i++) {
		if (img->bat[i] == VHD_BAT_UNUSED)
			continue;
		uint64_t s = (uint64_t)img->bat[i] << VHD_SECTOR_SHIFT;
		struct extent e = { s, s + bytes, "block", i };
		if (e.end > img->footer_off) {
			say(problem, arg, "BAT entry %u points at byte %llu, past the end of the file (block ends at %llu, end footer at %llu)",
			    i, (unsigned long long)s, (unsigned long long)e.end, (unsigned long long)img->footer_off);
			bad++;
		}
		for (int m = 0; m < nm; m++)
			if (e.start < meta[m].end && meta[m].start < e.end) {
				say(problem, arg, "BAT entry %u (block at byte %llu) overlaps the %s (bytes %llu..%llu)",
				    i, (unsigned long long)s, meta[m].what,
				    (unsigned long long)meta[m].start, (unsigned long long)meta[m].end);
				bad++;
			}
		if (e.end > end)
			end = e.end;
		blk[nb++] = e;
	}
	qsort(blk, nb, sizeof(*blk), cmp_extent);
	for (uint32_t i = 1; i < nb; i++)
		if (blk[i].start < blk[i - 1].end) {
			say(problem, arg, "BAT entries %u and %u overlap (blocks at bytes %llu and %llu)",
			    blk[i - 1].idx, blk[i].idx, (unsigned long long)blk[i - 1].start,
			    (unsigned long long)blk[i].start);
			bad++;
		}
	free(blk);
	if (end < vhd_metadata_end(img))
		end = vhd_metadata_end(img);
	if (used_end)
		*used_end = end;
	return bad;
}
