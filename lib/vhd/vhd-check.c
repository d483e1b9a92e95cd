/* `check`: find every inconsistency of an image and its chain, report
 * leaks (space a crash left behind) apart from errors, and repair only
 * what is safe: a torn footer from the valid copy, leaked space at the end. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "vhd.h"

struct checker {
	const char *path;
	int repair, errors;
	void (*report)(void *, const char *);
	void *arg;
};

/* One report line. */
static void line(struct checker *ck, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void line(struct checker *ck, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	ck->report(ck->arg, buf);
}

/* The reason in a library message, without its "open: PATH: " prefix. */
static const char *reason_of(const char *msg, const char *path)
{
	size_t n = strlen(path);

	if (!strncmp(msg, "open: ", 6) && !strncmp(msg + 6, path, n) && !strncmp(msg + 6 + n, ": ", 2))
		return msg + 8 + n;
	return msg;
}

/* Layout problems are errors. */
static void layout_problem(void *arg, const char *msg)
{
	struct checker *ck = arg;

	line(ck, "error: %s: %s", ck->path, msg);
	ck->errors++;
}

/* Which footer copies are bad: 0 none, 1 end, 2 copy at 0, 3 both. */
static int footers_state(struct checker *ck, int fd, uint64_t size, uint8_t end[512], uint8_t copy[512])
{
	struct vhd_footer f;
	int bad = 0;

	if (pread(fd, end, 512, (off_t)(size - 512)) != 512 || pread(fd, copy, 512, 0) != 512) {
		line(ck, "error: %s: cannot read the footers: %s", ck->path, strerror(errno));
		ck->errors++;
		return 3;
	}
	if (vhd_footer_decode(end, &f, ck->path)) {
		line(ck, "error: %s: end footer: %s", ck->path, reason_of(vhd_errmsg(), ck->path));
		ck->errors++;
		bad |= 1;
	} else if (f.type == VHD_TYPE_FIXED) {
		line(ck, "error: %s: fixed-size VHD is not supported (only dynamic and differencing disks)", ck->path);
		ck->errors++;
		return 3; /* and offset 0 is guest data: never touch it */
	}
	if (vhd_footer_decode(copy, &f, ck->path)) {
		line(ck, "error: %s: footer copy at offset 0: %s", ck->path, reason_of(vhd_errmsg(), ck->path));
		ck->errors++;
		bad |= 2;
	}
	if (!bad && memcmp(end, copy, 512))
		line(ck, "warning: %s: the end footer and the copy at offset 0 differ (both valid)", ck->path);
	return bad;
}

/* Rewrite the corrupt footer copy from the valid one (layout already clean). */
static void repair_footer(struct checker *ck, struct vhd_image *img, int bad)
{
	int rc;

	rc = vhd_write_footers(img) || fsync(img->fd);
	if (rc) {
		line(ck, "error: %s: repair failed: %s", ck->path, vhd_errmsg());
		return;
	}
	line(ck, "repaired: %s: rewrote the %s from the valid copy %s", ck->path,
	     bad == 1 ? "end footer" : "footer copy at offset 0",
	     bad == 1 ? "at offset 0" : "at the end");
	ck->errors--;
}

/* Sort block offsets to measure the gaps between them. */
static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

/* Unreferenced space between blocks: reported, never moved. */
static void interior_leaks(struct checker *ck, const struct vhd_image *img)
{
	uint32_t *offs = malloc(((size_t)img->header.max_bat_size + 1) * sizeof(*offs)), n = 0;
	uint64_t bytes = (uint64_t)(img->bm_secs + img->spb) << VHD_SECTOR_SHIFT;
	uint64_t prev = img->first_block, leaked = 0;

	if (!offs)
		return;
	for (uint32_t i = 0; i < img->header.max_bat_size; i++)
		if (img->bat[i] != VHD_BAT_UNUSED)
			offs[n++] = img->bat[i];
	qsort(offs, n, sizeof(*offs), cmp_u32);
	for (uint32_t i = 0; i < n; i++) {
		uint64_t s = (uint64_t)offs[i] << VHD_SECTOR_SHIFT;
		if (s > prev && s - prev >= VHD_DATA_ALIGN + bytes - VHD_SECTOR_SIZE)
			leaked += s - prev;
		if (s + bytes > prev)
			prev = s + bytes;
	}
	free(offs);
	if (leaked)
		line(ck, "leak: %s: %llu bytes between blocks belong to no block (an allocation cut short by a crash or an I/O error)",
		     ck->path, (unsigned long long)leaked);
}

/* Space past the last block: reported, and with --repair the footer moves
 * down (written first) and the file is truncated after it. */
static void tail_leak(struct checker *ck, struct vhd_image *img, uint64_t used_end)
{
	uint64_t leaked = img->footer_off - used_end;
	int rc;

	if (img->footer_off <= used_end)
		return;
	line(ck, "leak: %s: %llu bytes at the end (bytes %llu..%llu) belong to no block (an allocation cut short by a crash or an I/O error)",
	     ck->path, (unsigned long long)leaked, (unsigned long long)used_end, (unsigned long long)img->footer_off);
	if (!ck->repair)
		return;
	img->footer_off = used_end;
	rc = vhd_write_footers(img);
	if (!rc && (fsync(img->fd) || ftruncate(img->fd, (off_t)(used_end + VHD_FOOTER_SIZE)) || fsync(img->fd)))
		rc = vhd_fail(errno, "repair: %s: %s", ck->path, strerror(errno));
	if (rc)
		line(ck, "error: %s: repair failed: %s", ck->path, vhd_errmsg());
	else
		line(ck, "repaired: %s: moved the end footer to %llu and truncated %llu leaked bytes",
		     ck->path, (unsigned long long)used_end, (unsigned long long)leaked);
	if (rc)
		ck->errors++;
}

/* The parent must resolve and match, and the whole chain must open
 * (the top leniently: its own problems are reported above). */
static void check_parent(struct checker *ck, const struct vhd_image *img)
{
	struct vhd_chain c;
	char *parent;

	if (vhd_parent_path(img, &parent)) {
		line(ck, "error: %s: %s", ck->path, reason_of(vhd_errmsg(), ck->path));
		ck->errors++;
		return;
	}
	if (vhd_validate_parent(img, parent) ||
	    vhd_chain_open(&c, ck->path, VHD_OPEN_RDONLY | VHD_OPEN_NOCHECK | VHD_OPEN_ANYFOOTER)) {
		line(ck, "error: %s: %s", ck->path, reason_of(vhd_errmsg(), ck->path));
		ck->errors++;
	} else {
		vhd_chain_close(&c);
	}
	free(parent);
}

int vhd_check(const char *path, int repair, void (*report)(void *arg, const char *line), void *arg)
{
	struct checker ck = { path, repair, 0, report, arg };
	struct vhd_image img;
	uint8_t end[512], copy[512];
	uint64_t used_end = 0;
	struct stat st;
	int fd, bad, rc;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st)) {
		rc = vhd_fail(errno, "check: %s: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return rc;
	}
	if (st.st_size % VHD_SECTOR_SIZE || st.st_size < 2048) {
		close(fd);
		line(&ck, "error: %s: file size %lld is not a whole number of sectors or too small (truncated?)",
		     path, (long long)st.st_size);
		return 1;
	}
	bad = footers_state(&ck, fd, (uint64_t)st.st_size, end, copy);
	close(fd);
	if (bad == 3)
		return ck.errors;
	rc = vhd_open(&img, path, VHD_OPEN_NOCHECK | VHD_OPEN_ANYFOOTER | (repair ? 0 : VHD_OPEN_RDONLY));
	if (rc) {
		line(&ck, "error: %s: %s", path, reason_of(vhd_errmsg(), path));
		return ck.errors + 1;
	}
	int layout = vhd_layout_scan(&img, layout_problem, &ck, &used_end);
	if (bad && repair && !layout)
		repair_footer(&ck, &img, bad);
	else if (bad && repair)
		line(&ck, "error: %s: not repairing the footer: the layout is inconsistent (truncated file?)", path);
	if (!layout) {
		interior_leaks(&ck, &img);
		tail_leak(&ck, &img, used_end);
	}
	if (img.footer.type == VHD_TYPE_DIFF)
		check_parent(&ck, &img);
	vhd_close(&img);
	return ck.errors;
}
