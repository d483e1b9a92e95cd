/* Opening, validating, probing and closing a VHD; writing its footers and
 * header back. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "vhd.h"

/* Read exactly len bytes or say why not. */
static int read_at(const struct vhd_image *img, void *buf, size_t len, uint64_t off, const char *what)
{
	ssize_t n = pread(img->fd, buf, len, (off_t)off);

	if (n == (ssize_t)len)
		return 0;
	return vhd_fail(n < 0 ? errno : EIO, "open: %s: reading the %s at %llu: %s", img->path, what,
			(unsigned long long)off, n < 0 ? strerror(errno) : "short read");
}

/* The reason part of the last message ("open: PATH: reason" -> "reason"). */
static const char *reason(const char *path)
{
	const char *m = vhd_errmsg();
	size_t skip = strlen("open: ") + strlen(path) + 2;

	return strlen(m) > skip ? m + skip : m;
}

/* Size of a regular file or block device. */
int vhd_file_size(const char *path, uint64_t *size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	off_t end;

	if (fd < 0)
		return vhd_fail(errno, "open: %s: %s", path, strerror(errno));
	end = lseek(fd, 0, SEEK_END);
	close(fd);
	if (end < 0)
		return vhd_fail(errno, "open: %s: finding its size: %s", path, strerror(errno));
	*size = (uint64_t)end;
	return 0;
}

/* Both footer copies must be valid; say which one is not and how to fix. */
static int load_footer(struct vhd_image *img, uint64_t size, int flags)
{
	uint8_t end[512], copy[512];
	struct vhd_footer fe, f0;
	char why_end[512], why0[512];
	int re, r0;

	if (size % VHD_SECTOR_SIZE)
		return vhd_fail(EINVAL, "open: %s: file size %llu is not a multiple of 512 (truncated?)",
				img->path, (unsigned long long)size);
	if (size < VHD_FOOTER_SIZE * 2 + VHD_HEADER_SIZE)
		return vhd_fail(EINVAL, "open: %s: file is too small (%llu bytes) to be a dynamic VHD",
				img->path, (unsigned long long)size);
	if ((re = read_at(img, end, 512, size - 512, "end footer")) ||
	    (r0 = read_at(img, copy, 512, 0, "footer copy")))
		return re ? re : r0;
	re = vhd_footer_decode(end, &fe, img->path);
	snprintf(why_end, sizeof(why_end), "%s", re ? reason(img->path) : "");
	r0 = vhd_footer_decode(copy, &f0, img->path);
	snprintf(why0, sizeof(why0), "%s", r0 ? reason(img->path) : "");
	img->footer_off = size - 512;
	if (!re && fe.type == VHD_TYPE_FIXED) /* no copy at 0: that is guest data */
		return vhd_fail(ENOTSUP, "open: %s: fixed-size VHD is not supported (only dynamic and differencing disks)",
				img->path);
	if (!re && !r0) {
		img->footer = fe;
		return 0;
	}
	if (re && r0)
		return vhd_fail(EINVAL, "open: %s: not a usable VHD: end footer: %s; copy at offset 0: %s",
				img->path, why_end, why0);
	if (flags & VHD_OPEN_ANYFOOTER) {
		img->footer = re ? f0 : fe;
		return 0;
	}
	if (re)
		return vhd_fail(EINVAL, "open: %s: end footer is corrupt (%s) but the copy at offset 0 is valid: "
				"the file was torn or truncated; try `renew-img check --repair %s`",
				img->path, why_end, img->path);
	return vhd_fail(EINVAL, "open: %s: footer copy at offset 0 is corrupt (%s) but the end footer is valid; "
			"try `renew-img check --repair %s`", img->path, why0, img->path);
}

/* Type, header, block size and BAT geometry the rest of the code relies on. */
static int load_header(struct vhd_image *img, int flags)
{
	uint8_t buf[VHD_HEADER_SIZE];
	const struct vhd_footer *f = &img->footer;
	struct vhd_header *h = &img->header;
	int rc;

	if (f->type == VHD_TYPE_FIXED)
		return vhd_fail(ENOTSUP, "open: %s: fixed-size VHD is not supported (only dynamic and differencing disks)",
				img->path);
	if (f->data_offset < VHD_FOOTER_SIZE || f->data_offset > img->footer_off ||
	    img->footer_off - f->data_offset < VHD_HEADER_SIZE)
		return vhd_fail(EINVAL, "open: %s: header offset %llu is outside the file",
				img->path, (unsigned long long)f->data_offset);
	if ((rc = read_at(img, buf, sizeof(buf), f->data_offset, "header")) ||
	    (rc = vhd_header_decode(buf, h, img->path)))
		return rc;
	if (h->block_size != VHD_BLOCK_SIZE && !(flags & VHD_OPEN_RDONLY))
		return vhd_fail(ENOTSUP, "open: %s: block size %u is not 2 MiB: this image can only be opened read-only",
				img->path, h->block_size);
	img->spb = h->block_size >> VHD_SECTOR_SHIFT;
	img->bm_secs = ((img->spb >> 3) + VHD_SECTOR_SIZE - 1) >> VHD_SECTOR_SHIFT;
	img->bat_entries = (uint32_t)((f->curr_size + h->block_size - 1) / h->block_size);
	if (h->max_bat_size < img->bat_entries)
		return vhd_fail(EINVAL, "open: %s: BAT has %u entries, fewer than the %u blocks of the virtual size %llu",
				img->path, h->max_bat_size, img->bat_entries, (unsigned long long)f->curr_size);
	return 0;
}

/* The whole BAT in memory, host order. */
static int load_bat(struct vhd_image *img)
{
	const struct vhd_header *h = &img->header;
	uint64_t bytes = (uint64_t)h->max_bat_size * 4;
	uint8_t *raw;
	int rc;

	if (h->table_offset < VHD_FOOTER_SIZE || h->table_offset > img->footer_off ||
	    img->footer_off - h->table_offset < bytes)
		return vhd_fail(EINVAL, "open: %s: BAT (offset %llu, %u entries) extends past the end of the file",
				img->path, (unsigned long long)h->table_offset, h->max_bat_size);
	img->bat = malloc(bytes ? bytes : 4);
	raw = malloc(bytes ? bytes : 4);
	if (!img->bat || !raw) {
		free(raw);
		return vhd_fail(ENOMEM, "open: %s: out of memory for the BAT", img->path);
	}
	rc = read_at(img, raw, bytes, h->table_offset, "BAT");
	for (uint32_t i = 0; !rc && i < h->max_bat_size; i++)
		img->bat[i] = vhd_be32(raw + 4 * (size_t)i);
	free(raw);
	return rc;
}

/* Keep the first layout problem as the error message. */
static void first_problem(void *arg, const char *msg)
{
	char *out = arg;

	if (!out[0])
		snprintf(out, 512, "%s", msg);
}

/* Refuse BAT entries past the end or overlapping anything. */
static int check_layout(struct vhd_image *img)
{
	char msg[512] = "";

	if (vhd_layout_scan(img, first_problem, msg, NULL))
		return vhd_fail(EINVAL, "open: %s: %s", img->path, msg);
	return 0;
}

/* Open and validate; on failure the image is left closed. */
int vhd_open(struct vhd_image *img, const char *path, int flags)
{
	struct stat st;
	int rc;

	memset(img, 0, sizeof(*img));
	img->rdonly = !!(flags & VHD_OPEN_RDONLY);
	img->fd = open(path, (img->rdonly ? O_RDONLY : O_RDWR) | O_CLOEXEC);
	if (img->fd < 0)
		return vhd_fail(errno, "open: %s: %s", path, strerror(errno));
	img->path = strdup(path);
	if (!img->path) {
		rc = vhd_fail(ENOMEM, "open: %s: out of memory", path);
		goto fail;
	}
	if (fstat(img->fd, &st)) {
		rc = vhd_fail(errno, "open: %s: %s", path, strerror(errno));
		goto fail;
	}
	if (!S_ISREG(st.st_mode)) {
		rc = vhd_fail(EINVAL, "open: %s: not a regular file", path);
		goto fail;
	}
	if ((rc = load_footer(img, (uint64_t)st.st_size, flags)) || (rc = load_header(img, flags)) ||
	    (rc = load_bat(img)))
		goto fail;
	img->first_block = vhd_metadata_end(img);
	if (!(flags & VHD_OPEN_NOCHECK) && (rc = check_layout(img)))
		goto fail;
	return 0;
fail:
	vhd_close(img);
	return rc;
}

/* Safe on a failed or already closed image. */
void vhd_close(struct vhd_image *img)
{
	if (img->fd >= 0)
		close(img->fd);
	free(img->bat);
	free(img->path);
	memset(img, 0, sizeof(*img));
	img->fd = -1;
}

/* A VHD has a footer cookie at the end (or, torn, in the copy at 0). */
int vhd_probe(const char *path)
{
	uint8_t buf[8];
	int fd = open(path, O_RDONLY | O_CLOEXEC), found = 0;
	off_t end;

	if (fd < 0)
		return vhd_fail(errno, "probe: %s: %s", path, strerror(errno));
	end = lseek(fd, 0, SEEK_END);
	if (end >= 512 && pread(fd, buf, 8, end - 512) == 8 && !memcmp(buf, "conectix", 8))
		found = 1;
	if (!found && end >= 512 && pread(fd, buf, 8, 0) == 8 && !memcmp(buf, "conectix", 8))
		found = 1;
	close(fd);
	return found;
}

static int (*fault_hook)(const char *point);

void vhd_set_fault_hook(int (*hook)(const char *point))
{
	fault_hook = hook;
}

/* The test hook for a write of `what`: point vhd.write.WHAT (lower case,
 * dashes for spaces); a negative errno fails the write before it runs. */
static int write_fault(const char *what)
{
	char point[64] = "vhd.write.";
	size_t i = strlen(point);
	int r;

	if (!fault_hook)
		return 0;
	for (; *what && i < sizeof(point) - 1; what++)
		point[i++] = *what == ' ' ? '-' : (char)tolower((unsigned char)*what);
	point[i] = '\0';
	r = fault_hook(point);
	return r == -EINPROGRESS ? 0 : r;
}

/* Write a whole buffer at an offset, naming the operation on failure. A
 * short write is continued: the next call says why it stopped (ENOSPC). */
int vhd_write_at(struct vhd_image *img, const void *buf, size_t len, uint64_t off, const char *what)
{
	size_t done = 0;
	ssize_t n = 0;
	int r;

	if (img->rdonly)
		return vhd_fail(EROFS, "write: %s: opened read-only", img->path);
	if ((r = write_fault(what)))
		return vhd_fail(-r, "write: %s: writing the %s at %llu: %s", img->path, what,
				(unsigned long long)off, strerror(-r));
	while (done < len) {
		n = pwrite(img->fd, (const char *)buf + done, len - done, (off_t)(off + done));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		done += (size_t)n;
	}
	if (done == len)
		return 0;
	return vhd_fail(n < 0 ? errno : EIO, "write: %s: writing the %s at %llu: %s", img->path, what,
			(unsigned long long)off, n < 0 ? strerror(errno) : "short write");
}

/* The end footer first (it is the one readers trust), then the copy at 0. */
int vhd_write_footers(struct vhd_image *img)
{
	uint8_t buf[512];
	int rc;

	vhd_footer_encode(&img->footer, buf);
	img->footer.checksum = vhd_be32(buf + 64);
	if ((rc = vhd_write_at(img, buf, 512, img->footer_off, "end footer")))
		return rc;
	return vhd_write_at(img, buf, 512, 0, "footer copy");
}

/* The dynamic header where the footer says it lives. */
int vhd_write_header(struct vhd_image *img)
{
	uint8_t buf[VHD_HEADER_SIZE];

	vhd_header_encode(&img->header, buf);
	img->header.checksum = vhd_be32(buf + 36);
	return vhd_write_at(img, buf, sizeof(buf), img->footer.data_offset, "header");
}
