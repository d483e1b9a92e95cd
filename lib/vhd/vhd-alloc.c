/* Sector bitmaps, BAT updates and crash-ordered block allocation:
 * footer past the new block first, then data and bitmap, then the BAT
 * entry, so a crash at any point leaks space and never loses data. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "vhd.h"

/* Refuse block numbers beyond the virtual size before touching the BAT. */
static int check_blk(const struct vhd_image *img, uint32_t blk, const char *op)
{
	if (blk >= img->bat_entries)
		return vhd_fail(EINVAL, "%s: %s: block %u is beyond the virtual size (%u blocks)",
				op, img->path, blk, img->bat_entries);
	return 0;
}

/* A block's bitmap, bm_secs sectors (one for 2 MiB blocks). */
int vhd_read_bitmap(struct vhd_image *img, uint32_t blk, uint8_t *bm)
{
	size_t len = vhd_bitmap_bytes(img);
	ssize_t n;
	int rc;

	if ((rc = check_blk(img, blk, "read")))
		return rc;
	if (!vhd_block_allocated(img, blk))
		return vhd_fail(ENOENT, "read: %s: block %u is not allocated", img->path, blk);
	n = pread(img->fd, bm, len, (off_t)vhd_block_bitmap_off(img, blk));
	if (n == (ssize_t)len)
		return 0;
	return vhd_fail(n < 0 ? errno : EIO, "read: %s: bitmap of block %u: %s", img->path, blk,
			n < 0 ? strerror(errno) : "short read");
}

int vhd_write_bitmap(struct vhd_image *img, uint32_t blk, const uint8_t *bm)
{
	int rc;

	if ((rc = check_blk(img, blk, "write")))
		return rc;
	if (!vhd_block_allocated(img, blk))
		return vhd_fail(ENOENT, "write: %s: block %u is not allocated", img->path, blk);
	return vhd_write_at(img, bm, vhd_bitmap_bytes(img), vhd_block_bitmap_off(img, blk), "bitmap");
}

/* Step 2 of allocation: the bitmap of a block whose BAT entry is not yet written. */
int vhd_write_bitmap_at(struct vhd_image *img, uint32_t bm_sec, const uint8_t *bm)
{
	return vhd_write_at(img, bm, vhd_bitmap_bytes(img), (uint64_t)bm_sec << VHD_SECTOR_SHIFT, "bitmap");
}

/* Re-encode the 512-byte BAT sector holding `blk` from memory; the padding
 * past max_bat_size stays 0xFF as created. */
int vhd_write_bat_entry(struct vhd_image *img, uint32_t blk)
{
	uint8_t sec[VHD_SECTOR_SIZE];
	uint32_t first = blk & ~(uint32_t)(VHD_SECTOR_SIZE / 4 - 1);

	memset(sec, 0xff, sizeof(sec));
	for (uint32_t i = 0; i < VHD_SECTOR_SIZE / 4 && first + i < img->header.max_bat_size; i++)
		vhd_put_be32(sec + 4 * i, img->bat[first + i]);
	return vhd_write_at(img, sec, sizeof(sec), img->header.table_offset + (uint64_t)first * 4, "BAT sector");
}

/* Step 1: place the block at the end (data 4 KiB-aligned) and write the
 * footer past it; the in-memory footer_off moves with it. */
int vhd_alloc_reserve(struct vhd_image *img, uint32_t blk, uint32_t *bm_sec)
{
	uint8_t foot[VHD_FOOTER_SIZE];
	uint64_t off, end;
	int rc;

	if ((rc = check_blk(img, blk, "allocate")))
		return rc;
	if (vhd_block_allocated(img, blk))
		return vhd_fail(EEXIST, "allocate: %s: block %u is already allocated", img->path, blk);
	off = vhd_next_block_off(img, img->footer_off);
	end = off + ((uint64_t)(img->bm_secs + img->spb) << VHD_SECTOR_SHIFT);
	if ((off >> VHD_SECTOR_SHIFT) >= VHD_BAT_UNUSED)
		return vhd_fail(EFBIG, "allocate: %s: file would pass the 2 TiB the BAT can address", img->path);
	vhd_footer_encode(&img->footer, foot);
	if ((rc = vhd_write_at(img, foot, sizeof(foot), end, "end footer")))
		return rc;
	img->footer_off = end;
	*bm_sec = (uint32_t)(off >> VHD_SECTOR_SHIFT);
	return 0;
}

int vhd_alloc_cancel(struct vhd_image *img, uint32_t bm_sec, uint64_t prev_footer_off)
{
	uint64_t end = ((uint64_t)bm_sec + img->bm_secs + img->spb) << VHD_SECTOR_SHIFT;
	uint8_t foot[VHD_FOOTER_SIZE];
	int rc;

	if (img->footer_off != end || prev_footer_off >= end)
		return 0; /* a later block sits past it: leave the gap */
	/* a crash before the truncate finds the footer at `end`: the old leak */
	vhd_footer_encode(&img->footer, foot);
	if ((rc = vhd_write_at(img, foot, sizeof(foot), prev_footer_off, "end footer")))
		return rc;
	img->footer_off = prev_footer_off;
	if (ftruncate(img->fd, (off_t)(prev_footer_off + VHD_FOOTER_SIZE)) < 0)
		return vhd_fail(errno, "allocate: %s: give back %llu bytes: %s", img->path,
				(unsigned long long)(end - prev_footer_off), strerror(errno));
	return 0;
}

/* Step 3: the BAT entry makes the block exist. */
int vhd_alloc_commit(struct vhd_image *img, uint32_t blk, uint32_t bm_sec)
{
	uint32_t old;
	int rc;

	if ((rc = check_blk(img, blk, "allocate")))
		return rc;
	old = img->bat[blk];
	img->bat[blk] = bm_sec;
	rc = vhd_write_bat_entry(img, blk);
	if (rc)
		img->bat[blk] = old;
	return rc;
}

/* The three steps at once, for synchronous tools. A failed bitmap write
 * gives the reserved space back (the error reported stays the write's). */
int vhd_alloc_block(struct vhd_image *img, uint32_t blk, const uint8_t *bm)
{
	uint64_t prev_footer_off = img->footer_off;
	char msg[1024];
	uint32_t bm_sec;
	int rc;

	if ((rc = vhd_alloc_reserve(img, blk, &bm_sec)))
		return rc;
	if ((rc = vhd_write_bitmap_at(img, bm_sec, bm))) {
		snprintf(msg, sizeof(msg), "%s", vhd_errmsg());
		if (vhd_alloc_cancel(img, bm_sec, prev_footer_off))
			vhd_fail(rc, "%s (and the space stays reserved: %s)", msg, vhd_errmsg());
		else
			vhd_fail(rc, "%s", msg);
		return rc;
	}
	return vhd_alloc_commit(img, blk, bm_sec);
}

/* Population count over the first `bits` bits. */
uint32_t vhd_bitmap_count(const uint8_t *bm, uint32_t bits)
{
	uint32_t n = 0, i = 0;

	for (; i + 8 <= bits; i += 8)
		n += (uint32_t)__builtin_popcount(bm[i >> 3]);
	for (; i < bits; i++)
		n += (uint32_t)vhd_bitmap_test(bm, i);
	return n;
}
