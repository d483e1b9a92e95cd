/* renew-img write FILE OFFSET [LENGTH] < data: put bytes into a VHD
 * offline, block by block, with the library's crash-ordered allocation
 * (data and bitmap before the BAT entry). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "renew-img.h"
#include "vhd.h"

/* Fill up to len bytes from stdin; returns the count (short only at EOF). */
static ssize_t read_in(uint8_t *buf, size_t len)
{
	size_t got = 0;

	while (got < len) {
		ssize_t n = read(STDIN_FILENO, buf + got, len - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		if (!n)
			break;
		got += (size_t)n;
	}
	return (ssize_t)got;
}

/* Sectors [sec, sec+n) inside one block: data first, then the bitmap,
 * then (new block) the BAT entry. */
static int write_in_block(struct vhd_image *img, uint64_t sec, uint32_t n, const uint8_t *data)
{
	uint32_t blk = (uint32_t)(sec / img->spb), in = (uint32_t)(sec % img->spb), bm_sec;
	uint8_t bm[VHD_BITMAP_BYTES];
	int fresh = !vhd_block_allocated(img, blk), rc;
	uint64_t data_off, prev_footer_off = img->footer_off;

	if (fresh) {
		memset(bm, 0, sizeof(bm));
		if (vhd_alloc_reserve(img, blk, &bm_sec))
			return -1;
	} else {
		if (vhd_read_bitmap(img, blk, bm))
			return -1;
		bm_sec = img->bat[blk];
	}
	data_off = ((uint64_t)bm_sec + img->bm_secs + in) << VHD_SECTOR_SHIFT;
	rc = vhd_write_at(img, data, (size_t)n << VHD_SECTOR_SHIFT, data_off, "data");
	if (!rc) {
		for (uint32_t i = in; i < in + n; i++)
			vhd_bitmap_set(bm, i);
		rc = vhd_write_bitmap_at(img, bm_sec, bm);
	}
	if (rc && fresh) {
		/* a new block's space goes back; the message stays the write's */
		char why[512];

		snprintf(why, sizeof(why), "%s", vhd_errmsg());
		if (vhd_alloc_cancel(img, bm_sec, prev_footer_off))
			vhd_fail(-rc, "%s", why);
	}
	if (rc)
		return -1;
	return fresh ? vhd_alloc_commit(img, blk, bm_sec) : 0;
}

/* Parse and check OFFSET and LENGTH against the image. */
static int parse_range(struct vhd_image *img, char **ops, int n, uint64_t *off, uint64_t *len)
{
	if (img_parse_size(ops[1], off))
		return img_fail("write: %s: bad offset '%s'", ops[0], ops[1]);
	*len = vhd_size(img) - (*off < vhd_size(img) ? *off : vhd_size(img));
	if (n == 3 && img_parse_size(ops[2], len))
		return img_fail("write: %s: bad length '%s'", ops[0], ops[2]);
	if (*off % VHD_SECTOR_SIZE || *len % VHD_SECTOR_SIZE)
		return img_fail("write: %s: offset %llu and length %llu must be multiples of 512", ops[0],
				(unsigned long long)*off, (unsigned long long)*len);
	if (*off > vhd_size(img) || *len > vhd_size(img) - *off)
		return img_fail("write: %s: %llu bytes at %llu are beyond the virtual size %llu", ops[0],
				(unsigned long long)*len, (unsigned long long)*off, (unsigned long long)vhd_size(img));
	return 0;
}

/* Copy stdin block by block until LENGTH bytes or (without LENGTH) EOF. */
static int copy_in(struct vhd_image *img, uint64_t off, uint64_t len, int exact, uint8_t *buf)
{
	uint64_t sec = off >> VHD_SECTOR_SHIFT, done = 0;

	while (done < len) {
		uint32_t room = img->spb - (uint32_t)(sec % img->spb);
		size_t want = (size_t)room << VHD_SECTOR_SHIFT;
		if (want > len - done)
			want = (size_t)(len - done);
		ssize_t got = read_in(buf, want);
		if (got < 0)
			return img_fail("write: %s: reading standard input: %s", img->path, strerror(errno));
		if (got % VHD_SECTOR_SIZE)
			return img_fail("write: %s: input ends mid-sector after %llu bytes (%llu written)", img->path,
					(unsigned long long)(done + (uint64_t)got), (unsigned long long)done);
		if (exact && (size_t)got < want)
			return img_fail("write: %s: input ended after %llu of %llu bytes", img->path,
					(unsigned long long)(done + (uint64_t)got), (unsigned long long)len);
		if (!got)
			break;
		if (write_in_block(img, sec, (uint32_t)(got >> VHD_SECTOR_SHIFT), buf))
			return img_fail_lib();
		sec += (uint64_t)got >> VHD_SECTOR_SHIFT;
		done += (uint64_t)got;
	}
	if (!exact && done == len && read_in(buf, 1) > 0)
		return img_fail("write: %s: input is longer than the %llu bytes from offset %llu to the end of the disk "
				"(those were written)", img->path, (unsigned long long)len, (unsigned long long)off);
	return 0;
}

/* write FILE OFFSET [LENGTH] */
int img_cmd_write(int argc, char **argv)
{
	char *ops[3];
	struct vhd_chain c;
	struct vhd_image *img;
	uint64_t off, len;
	unsigned flags;
	uint8_t *buf;
	int n, rc;

	n = img_args(argc, argv, "", &flags, ops, 3);
	if (n < 2)
		return img_usage("write");
	if (vhd_probe(ops[0]) == 0)
		return img_fail("write: %s: not a VHD", ops[0]);
	if (vhd_chain_open(&c, ops[0], 0)) /* a broken chain is not written into */
		return img_fail_lib();
	img = &c.layers[0].img;
	rc = parse_range(img, ops, n, &off, &len);
	buf = rc ? NULL : malloc((size_t)img->spb << VHD_SECTOR_SHIFT);
	if (!rc && !buf)
		rc = img_fail("write: %s: out of memory", ops[0]);
	if (!rc)
		rc = copy_in(img, off, len, n == 3, buf);
	if (!rc && fsync(img->fd))
		rc = img_fail("write: %s: fsync: %s", ops[0], strerror(errno));
	free(buf);
	vhd_chain_close(&c);
	return rc;
}
