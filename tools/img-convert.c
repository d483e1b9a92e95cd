/* renew-img convert: the chain's view flattened into a raw file. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "renew-img.h"
#include "vhd.h"

#define CHUNK_SECS 4096u /* 2 MiB per read */

/* Refuse to write over any image of the chain being read. */
static int out_is_input(const struct vhd_chain *c, const char *out)
{
	struct stat so, si;

	if (stat(out, &so))
		return 0;
	for (int i = 0; i < c->depth; i++)
		if (!stat(c->layers[i].path, &si) && si.st_dev == so.st_dev && si.st_ino == so.st_ino)
			return 1;
	return 0;
}

/* write() all of it (stdout may be a pipe). */
static int write_all(int fd, const uint8_t *p, size_t len)
{
	while (len) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Is the buffer all zero bytes? Such chunks stay holes. */
static int all_zero(const uint8_t *p, size_t len)
{
	return len == 0 || (p[0] == 0 && !memcmp(p, p + 1, len - 1));
}

/* Data extents are read and written unless zero; holes are skipped (file)
 * or written as zeros (stream). */
static int copy_chain(struct vhd_chain *c, int fd, int stream, const char *out, uint8_t *buf)
{
	uint64_t total = c->layers[0].size >> VHD_SECTOR_SHIFT, sec = 0;

	while (sec < total) {
		uint32_t run, max = total - sec > CHUNK_SECS ? CHUNK_SECS : (uint32_t)(total - sec);
		int layer = vhd_chain_locate(c, sec, max, &run);
		size_t len = (size_t)run << VHD_SECTOR_SHIFT;
		if (layer < 0)
			return img_fail_lib();
		if (layer == c->depth)
			memset(buf, 0, len);
		else if (vhd_chain_read(c, buf, sec, run))
			return img_fail_lib();
		if (stream) {
			if (write_all(fd, buf, len))
				return img_fail("convert: %s: write: %s", out, strerror(errno));
		} else if (layer != c->depth && !all_zero(buf, len)) {
			if (pwrite(fd, buf, len, (off_t)(sec << VHD_SECTOR_SHIFT)) != (ssize_t)len)
				return img_fail("convert: %s: write: %s", out, strerror(errno));
		}
		sec += run;
	}
	return 0;
}

/* convert FILE OUT */
int img_cmd_convert(int argc, char **argv)
{
	char *ops[2];
	struct vhd_chain c;
	unsigned flags;
	uint8_t *buf;
	int fd, stream, rc;

	if (img_args(argc, argv, "", &flags, ops, 2) != 2)
		return img_usage("convert");
	if (vhd_chain_open(&c, ops[0], VHD_OPEN_RDONLY))
		return img_fail_lib();
	stream = !strcmp(ops[1], "-");
	if (!stream && out_is_input(&c, ops[1])) {
		vhd_chain_close(&c);
		return img_fail("convert: %s: is an image of the chain being read", ops[1]);
	}
	fd = stream ? STDOUT_FILENO : open(ops[1], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	buf = malloc((size_t)CHUNK_SECS << VHD_SECTOR_SHIFT);
	if (fd < 0 || !buf) {
		rc = img_fail("convert: %s: %s", ops[1], strerror(errno ? errno : ENOMEM));
		goto out;
	}
	if (!stream && ftruncate(fd, (off_t)c.layers[0].size)) {
		rc = img_fail("convert: %s: setting the size: %s", ops[1], strerror(errno));
		goto out;
	}
	rc = copy_chain(&c, fd, stream, ops[1], buf);
	if (!rc && !stream && fsync(fd))
		rc = img_fail("convert: %s: fsync: %s", ops[1], strerror(errno));
out:
	if (fd >= 0 && !stream)
		close(fd);
	free(buf);
	vhd_chain_close(&c);
	return rc;
}
