/* One step of a rebuild: the sectors a saved overlay holds, written over
 * the rebuilt base at the same offsets (what its renew's commit did to the
 * real base). Synchronous, with lib/vhd: a rebuild runs offline, on files
 * nobody else has open. A VHD output gets its blocks allocated in the
 * library's crash order (data and bitmap before the BAT entry). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "history.h"
#include "vhd.h"

/* Where the sectors go: a raw file or a VHD. */
struct apply_out {
	int is_vhd;
	int fd;                  /* raw */
	struct vhd_image img;    /* vhd */
	uint64_t size;           /* bytes the output covers */
};

/* Sectors [sec, sec+n) inside one block of a VHD output. */
static int vhd_put(struct vhd_image *img, uint64_t sec, uint32_t n, const char *data)
{
	uint32_t blk = (uint32_t)(sec / img->spb), in = (uint32_t)(sec % img->spb), bm_sec;
	uint8_t bm[VHD_BITMAP_BYTES];
	int fresh = !vhd_block_allocated(img, blk);
	uint64_t off;

	if (fresh) {
		memset(bm, 0, sizeof(bm));
		if (vhd_alloc_reserve(img, blk, &bm_sec))
			return -EIO;
	} else {
		if (vhd_read_bitmap(img, blk, bm))
			return -EIO;
		bm_sec = img->bat[blk];
	}
	off = ((uint64_t)bm_sec + img->bm_secs + in) << VHD_SECTOR_SHIFT;
	if (pwrite(img->fd, data, (size_t)n << VHD_SECTOR_SHIFT, (off_t)off) != (ssize_t)n << VHD_SECTOR_SHIFT)
		return vhd_fail(errno ? errno : ENOSPC, "write %s at %llu: %s", img->path,
				(unsigned long long)off, strerror(errno ? errno : ENOSPC));
	for (uint32_t i = in; i < in + n; i++)
		vhd_bitmap_set(bm, i);
	if (vhd_write_bitmap_at(img, bm_sec, bm))
		return -EIO;
	return fresh && vhd_alloc_commit(img, blk, bm_sec) ? -EIO : 0;
}

/* One run of present sectors into the output. */
static int out_put(struct apply_out *o, uint64_t sec, uint32_t n, const char *data, char *err,
		   size_t errlen, const char *path)
{
	size_t len = (size_t)n << VHD_SECTOR_SHIFT;
	ssize_t w;

	if (o->is_vhd) {
		int rc = vhd_put(&o->img, sec, n, data);

		if (rc)
			hist_err(err, errlen, 0, "%s", vhd_errmsg());
		return rc;
	}
	w = pwrite(o->fd, data, len, (off_t)(sec << VHD_SECTOR_SHIFT));
	if (w == (ssize_t)len)
		return 0;
	hist_err(err, errlen, 0, "write %s at %llu: %s", path, (unsigned long long)(sec << VHD_SECTOR_SHIFT),
		 strerror(w < 0 ? errno : ENOSPC));
	return w < 0 ? -errno : -ENOSPC;
}

/* Open the output for writing and learn how much of a disk it covers. */
static int out_open(struct apply_out *o, const char *path, int is_vhd, char *err, size_t errlen)
{
	off_t end;

	memset(o, 0, sizeof(*o));
	o->is_vhd = is_vhd;
	o->fd = -1;
	o->img.fd = -1;
	if (is_vhd) {
		int rc = vhd_open(&o->img, path, 0);

		if (rc)
			hist_err(err, errlen, 0, "%s", vhd_errmsg());
		o->size = rc ? 0 : vhd_size(&o->img);
		return rc;
	}
	o->fd = open(path, O_WRONLY | O_CLOEXEC);
	end = o->fd >= 0 ? lseek(o->fd, 0, SEEK_END) : -1;
	if (end < 0) {
		hist_err(err, errlen, 0, "open %s: %s", path, strerror(errno));
		return -errno;
	}
	o->size = (uint64_t)end;
	return 0;
}

/* Make the output durable and close it. */
static int out_close(struct apply_out *o, const char *path, char *err, size_t errlen)
{
	int fd = o->is_vhd ? o->img.fd : o->fd, rc = 0;

	if (fd >= 0 && fsync(fd)) {
		rc = -errno;
		hist_err(err, errlen, 0, "fsync %s: %s", path, strerror(errno));
	}
	if (o->is_vhd)
		vhd_close(&o->img);
	else if (o->fd >= 0)
		close(o->fd);
	return rc;
}

/* Block `blk` of the overlay: read the span of its present sectors once,
 * then write each run. */
static int apply_block(struct vhd_image *src, uint32_t blk, uint8_t *bm, char *buf,
		       struct apply_out *o, const char *out, char *err, size_t errlen)
{
	uint64_t secs = vhd_size(src) >> VHD_SECTOR_SHIFT, base = (uint64_t)blk * src->spb;
	uint32_t last = secs - base < src->spb ? (uint32_t)(secs - base) : src->spb, first = 0, i;
	size_t span;

	if (vhd_read_bitmap(src, blk, bm)) {
		hist_err(err, errlen, 0, "%s", vhd_errmsg());
		return -EIO;
	}
	while (first < last && !vhd_bitmap_test(bm, first))
		first++;
	while (last > first && !vhd_bitmap_test(bm, last - 1))
		last--;
	if (first == last)
		return 0;
	span = (size_t)(last - first) << VHD_SECTOR_SHIFT;
	if (pread(src->fd, buf, span, (off_t)(vhd_block_data_off(src, blk) +
					      ((uint64_t)first << VHD_SECTOR_SHIFT))) != (ssize_t)span) {
		hist_err(err, errlen, 0, "read %s block %u: %s", src->path, blk, errno ? strerror(errno) : "short read");
		return errno ? -errno : -EIO;
	}
	for (i = first; i < last;) {
		uint32_t run = i;

		while (run < last && vhd_bitmap_test(bm, run))
			run++;
		if (run > i) {
			int rc = out_put(o, base + i, run - i, buf + ((size_t)(i - first) << VHD_SECTOR_SHIFT),
					 err, errlen, out);

			if (rc)
				return rc;
		}
		while (run < last && !vhd_bitmap_test(bm, run))
			run++;
		i = run;
	}
	return 0;
}

int hist_apply(const char *overlay, const char *out, int is_vhd, char *err, size_t errlen)
{
	struct vhd_image src;
	struct apply_out o;
	uint8_t *bm = NULL;
	char *buf = NULL;
	int rc = vhd_open(&src, overlay, VHD_OPEN_RDONLY);

	if (rc) {
		hist_err(err, errlen, 0, "%s", vhd_errmsg());
		return rc;
	}
	rc = out_open(&o, out, is_vhd, err, errlen);
	if (!rc && o.size < vhd_size(&src)) {
		hist_err(err, errlen, 0, "%s covers %llu bytes, less than the %llu of overlay %s", out,
			 (unsigned long long)o.size, (unsigned long long)vhd_size(&src), overlay);
		rc = -EINVAL;
	}
	bm = rc ? NULL : malloc(vhd_bitmap_bytes(&src));
	buf = rc ? NULL : malloc((size_t)src.spb << VHD_SECTOR_SHIFT);
	if (!rc && (!bm || !buf)) {
		hist_err(err, errlen, 0, "apply %s: out of memory", overlay);
		rc = -ENOMEM;
	}
	for (uint32_t b = 0; !rc && b < src.bat_entries; b++)
		if (vhd_block_allocated(&src, b))
			rc = apply_block(&src, b, bm, buf, &o, out, err, errlen);
	if (o.fd >= 0 || o.img.fd >= 0) {
		int rc2 = out_close(&o, out, rc ? NULL : err, rc ? 0 : errlen);

		rc = rc ? rc : rc2;
	}
	free(bm);
	free(buf);
	vhd_close(&src);
	return rc;
}
