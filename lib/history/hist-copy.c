/* Copies of whole images for the history: the saved base and the start of
 * a rebuild. A reflink (FICLONE) costs nothing where the filesystem shares
 * blocks (btrfs, XFS); elsewhere only the data extents are copied
 * (SEEK_DATA / SEEK_HOLE), so a sparse base stays sparse. */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>
#include "history.h"

#define COPY_CHUNK (4u << 20)

uint64_t hist_disk_bytes(const char *path)
{
	struct stat st;

	return stat(path, &st) ? 0 : (uint64_t)st.st_blocks * 512;
}

/* [off, end) of `in` to the same place in `out`, in kernel where it can. */
static int copy_range(int in, int out, uint64_t off, uint64_t end, char **buf, uint64_t *done)
{
	int kernel = 1;

	while (off < end) {
		size_t want = end - off < COPY_CHUNK ? (size_t)(end - off) : COPY_CHUNK;
		ssize_t n = -1;

		if (kernel) {
			loff_t i = (loff_t)off, o = (loff_t)off;

			n = copy_file_range(in, &i, out, &o, want, 0);
			if (n < 0 && (errno == EXDEV || errno == EINVAL || errno == ENOSYS ||
				      errno == EOPNOTSUPP || errno == EBADF)) {
				kernel = 0;
				continue;
			}
		} else {
			if (!*buf && !(*buf = malloc(COPY_CHUNK)))
				return -ENOMEM;
			n = pread(in, *buf, want, (off_t)off);
			if (n > 0 && pwrite(out, *buf, (size_t)n, (off_t)off) != n)
				n = -1;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return errno ? -errno : -EIO;
		if (n == 0)
			return -EIO;  /* the source shrank under us */
		off += (uint64_t)n;
		if (done)
			__atomic_add_fetch(done, (uint64_t)n, __ATOMIC_RELAXED);
	}
	return 0;
}

/* Copy the data extents of `in` (size bytes); holes stay holes. */
static int sparse_copy(int in, int out, uint64_t size, uint64_t *done)
{
	uint64_t off = 0;
	char *buf = NULL;
	int rc = 0;

	while (!rc && off < size) {
		off_t data = lseek(in, (off_t)off, SEEK_DATA), hole;

		if (data < 0 && errno == ENXIO)
			break;  /* only a hole is left */
		if (data < 0) {  /* no SEEK_DATA here: all of it is data */
			rc = copy_range(in, out, off, size, &buf, done);
			break;
		}
		hole = lseek(in, data, SEEK_HOLE);
		if (hole < 0 || (uint64_t)hole > size)
			hole = (off_t)size;
		rc = copy_range(in, out, (uint64_t)data, (uint64_t)hole, &buf, done);
		off = (uint64_t)hole;
	}
	free(buf);
	if (!rc && ftruncate(out, (off_t)size))
		rc = -errno;
	return rc;
}

int hist_copy_file(const char *src, const char *dst, int *reflinked, uint64_t *done,
		   char *err, size_t errlen)
{
	int in = open(src, O_RDONLY | O_CLOEXEC), out = -1, rc = 0;
	off_t size;

	*reflinked = 0;
	if (in < 0) {
		hist_err(err, errlen, 0, "copy %s: %s", src, strerror(errno));
		return -errno;
	}
	size = lseek(in, 0, SEEK_END);
	out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (size < 0 || out < 0) {
		rc = -errno;
		hist_err(err, errlen, 0, "copy %s to %s: %s", src, dst, strerror(errno));
		goto out;
	}
	if (!ioctl(out, FICLONE, in)) {
		*reflinked = 1;
		if (done)
			__atomic_add_fetch(done, (uint64_t)size, __ATOMIC_RELAXED);
	} else {
		rc = sparse_copy(in, out, (uint64_t)size, done);
	}
	if (!rc && fsync(out))
		rc = -errno;
	if (rc)
		hist_err(err, errlen, 0, "copy %s to %s: %s", src, dst, strerror(-rc));
out:
	close(in);
	if (out >= 0)
		close(out);
	if (rc && out >= 0)
		unlink(dst);
	return rc;
}
