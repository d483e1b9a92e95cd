/* Disk type `aio`: a raw file or block device, read and written with
 * O_DIRECT through the runtime's libaio queue. */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>
#include "tapdisk.h"

#define AIO_POOL_CHUNK 256

/* One I/O in flight: the tiocb and the request piece it serves. */
struct aio_req {
	struct tiocb tiocb;
	td_request_t treq;
	struct aio_req *next_free;
};

/* A block of aio_reqs, kept to be freed on close. */
struct aio_chunk {
	struct aio_chunk *next;
	struct aio_req reqs[AIO_POOL_CHUNK];
};

struct aio_state {
	int fd;
	int direct;
	struct aio_req *free_list;
	struct aio_chunk *chunks;
	unsigned long inflight;
};

/* Add a chunk of requests to the free list. */
static int pool_grow(struct aio_state *s)
{
	struct aio_chunk *c = calloc(1, sizeof(*c));

	if (!c)
		return -ENOMEM;
	c->next = s->chunks;
	s->chunks = c;
	for (int i = 0; i < AIO_POOL_CHUNK; i++) {
		c->reqs[i].next_free = s->free_list;
		s->free_list = &c->reqs[i];
	}
	return 0;
}

/* A free request from the pool, growing it if exhausted. */
static struct aio_req *pool_get(struct aio_state *s)
{
	struct aio_req *r;

	if (!s->free_list && pool_grow(s) < 0)
		return NULL;
	r = s->free_list;
	s->free_list = r->next_free;
	s->inflight++;
	return r;
}

/* Give a request back to the pool. */
static void pool_put(struct aio_state *s, struct aio_req *r)
{
	r->next_free = s->free_list;
	s->free_list = r;
	s->inflight--;
}

/* Open `path`, O_DIRECT unless refused by the filesystem. */
static int aio_open_fd(const char *path, td_flag_t flags, int *direct)
{
	int mode = (flags & TD_OPEN_RDONLY) ? O_RDONLY : O_RDWR;
	int fd = -1;

	*direct = !(flags & TD_OPEN_NO_O_DIRECT);
	if (*direct) {
		fd = open(path, mode | O_DIRECT | O_CLOEXEC);
		if (fd < 0 && errno == EINVAL) {
			tlog(TLOG_INFO, "open: %s: O_DIRECT refused by the filesystem, using buffered I/O", path);
			*direct = 0;
		} else if (fd < 0) {
			EPRINTF("open: %s: %m", path);
			return -errno;
		}
	}
	if (!*direct) {
		fd = open(path, mode | O_CLOEXEC);
		if (fd < 0) {
			EPRINTF("open: %s: %m", path);
			return -errno;
		}
	}
	return fd;
}

/* Lock the file: shared for a parent others may share, else exclusive. */
static int aio_lock(int fd, const char *path, td_flag_t flags)
{
	if (flags & TD_OPEN_NOLOCK)
		return 0;
	return td_lock_image(fd, path, (flags & TD_OPEN_SHAREABLE) != 0);
}

/* The size in bytes of a regular file or a block device. */
static int aio_size(int fd, const char *path, uint64_t *bytes)
{
	struct stat st;

	if (fstat(fd, &st) < 0) {
		EPRINTF("stat: %s: %m", path);
		return -errno;
	}
	if (S_ISBLK(st.st_mode)) {
		if (ioctl(fd, BLKGETSIZE64, bytes) < 0) {
			EPRINTF("BLKGETSIZE64: %s: %m", path);
			return -errno;
		}
		return 0;
	}
	if (!S_ISREG(st.st_mode)) {
		EPRINTF("open: %s: not a regular file or block device", path);
		return -EINVAL;
	}
	*bytes = (uint64_t)st.st_size;
	return 0;
}

static int aio_open(td_driver_t *drv, const char *name, td_flag_t flags)
{
	struct aio_state *s = drv->data;
	uint64_t bytes;
	int r;

	s->fd = -1;
	r = aio_open_fd(name, flags, &s->direct);
	if (r < 0)
		return r;
	s->fd = r;
	r = aio_lock(s->fd, name, flags);
	if (r == 0)
		r = aio_size(s->fd, name, &bytes);
	if (r == 0)
		r = pool_grow(s);
	if (r < 0) {
		close(s->fd);
		s->fd = -1;
		return r;
	}
	if (bytes % 512)
		tlog(TLOG_WARN, "open: %s: size %llu is not a multiple of 512; the tail is ignored",
		     name, (unsigned long long)bytes);
	drv->info.size = bytes / 512;
	drv->info.sector_size = 512;
	drv->info.info = 0;
	DPRINTF("open: %s: %llu bytes, %s%s", name, (unsigned long long)bytes,
		s->direct ? "O_DIRECT" : "buffered", (flags & TD_OPEN_RDONLY) ? ", read-only" : "");
	return 0;
}

static int aio_close(td_driver_t *drv)
{
	struct aio_state *s = drv->data;

	if (s->inflight)
		EPRINTF("close: %s: %lu requests still in flight", drv->name, s->inflight);
	if (s->fd >= 0)
		close(s->fd); /* drops the lock */
	s->fd = -1;
	while (s->chunks) {
		struct aio_chunk *c = s->chunks;

		s->chunks = c->next;
		free(c);
	}
	s->free_list = NULL;
	return 0;
}

static int aio_get_parent_id(td_driver_t *drv, td_disk_id_t *id)
{
	return TD_NO_PARENT;
}

static int aio_validate_parent(td_driver_t *child, td_driver_t *parent, td_flag_t flags)
{
	return -EINVAL; /* a raw file has no parent */
}

/* A tiocb finished: complete its piece. */
static void aio_done(void *arg, struct tiocb *t, int err)
{
	struct aio_req *r = arg;
	td_driver_t *drv = r->treq.image->driver;
	td_request_t treq = r->treq;

	if (err && err != -EPERM)
		EPRINTF("%s: %s at byte %llu (%llu bytes): %s", drv->name,
			treq.op == TD_OP_READ ? "read" : treq.op == TD_OP_WRITE ? "write" : "fdatasync",
			(unsigned long long)treq.sec * 512, (unsigned long long)treq.secs * 512,
			strerror(-err));
	pool_put(drv->data, r);
	td_complete_request(treq, err);
}

/* Queue one read, write or fdsync for `treq`. */
static void aio_queue(td_driver_t *drv, td_request_t treq)
{
	struct aio_state *s = drv->data;
	struct aio_req *r;

	if (treq.op != TD_OP_FLUSH && treq.sec + (uint64_t)treq.secs > drv->info.size) {
		td_complete_request(treq, -EINVAL);
		return;
	}
	r = pool_get(s);
	if (!r) {
		td_complete_request(treq, -ENOMEM);
		return;
	}
	r->treq = treq;
	if (treq.op == TD_OP_READ)
		td_prep_read(drv, &r->tiocb, s->fd, treq.buf, (size_t)treq.secs * 512,
			     (long long)treq.sec * 512, aio_done, r);
	else if (treq.op == TD_OP_WRITE)
		td_prep_write(drv, &r->tiocb, s->fd, treq.buf, (size_t)treq.secs * 512,
			      (long long)treq.sec * 512, aio_done, r);
	else
		td_prep_fdsync(drv, &r->tiocb, s->fd, aio_done, r);
	td_queue_tiocb(drv, &r->tiocb);
}

static void aio_queue_read(td_driver_t *drv, td_request_t treq)
{
	aio_queue(drv, treq);
}

static void aio_queue_write(td_driver_t *drv, td_request_t treq)
{
	if (drv->flags & TD_OPEN_RDONLY) {
		td_complete_request(treq, -EPERM);
		return;
	}
	aio_queue(drv, treq);
}

static void aio_queue_flush(td_driver_t *drv, td_request_t treq)
{
	treq.op = TD_OP_FLUSH;
	aio_queue(drv, treq);
}

static void aio_debug(td_driver_t *drv)
{
	struct aio_state *s = drv->data;

	tlog(TLOG_INFO, "aio %s: fd %d, %s, %lu in flight", drv->name, s->fd,
	     s->direct ? "O_DIRECT" : "buffered", s->inflight);
}

static void aio_stats(td_driver_t *drv, td_stats_t *st)
{
	struct aio_state *s = drv->data;
	struct stat sb;

	if (fstat(s->fd, &sb) == 0 && S_ISREG(sb.st_mode))
		st->allocated_bytes = (uint64_t)sb.st_blocks * 512;
	snprintf(st->extra, sizeof(st->extra), "\"o_direct\":%s,\"inflight\":%lu",
		 s->direct ? "true" : "false", s->inflight);
}

/* Convert the lock (renew takes a parent exclusively for its commit). */
static int aio_td_lock(td_driver_t *drv, int op)
{
	struct aio_state *s = drv->data;

	return flock(s->fd, op) ? -errno : 0;
}

const struct tap_disk tapdisk_aio = {
	.disk_type = "tapdisk_aio",
	.flags = 0,
	.private_data_size = sizeof(struct aio_state),
	.td_open = aio_open,
	.td_close = aio_close,
	.td_get_parent_id = aio_get_parent_id,
	.td_validate_parent = aio_validate_parent,
	.td_queue_read = aio_queue_read,
	.td_queue_write = aio_queue_write,
	.td_queue_flush = aio_queue_flush,
	.td_debug = aio_debug,
	.td_stats = aio_stats,
	.td_lock = aio_td_lock,
};
