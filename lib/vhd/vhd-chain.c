/* A chain of images (top first, down to a raw or dynamic base) opened for
 * synchronous reads: which layer holds a sector, and reading through. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "vhd.h"

#define CHAIN_MAX_DEPTH 256
#define BMC_SLOTS 64 /* 64 bitmaps = 128 MiB of 2 MiB blocks: plenty for scans */

/* A small LRU of block bitmaps across the chain's layers. */
struct vhd_bm_cache {
	uint64_t tick;
	size_t bytes;
	struct bmc_slot {
		int layer;
		uint32_t blk;
		uint64_t used;
		uint8_t *bm;
	} slot[BMC_SLOTS];
};

/* Identity of a file, to spot a parent that is already in the chain. */
struct file_id {
	dev_t dev;
	ino_t ino;
};

/* Open one layer: VHD (validated) or raw. */
static int layer_open(struct vhd_layer *l, const char *path, int flags)
{
	int rc = vhd_probe(path);

	memset(l, 0, sizeof(*l));
	l->fd = -1;
	l->img.fd = -1;
	if (rc < 0)
		return rc;
	l->path = strdup(path);
	if (!l->path)
		return vhd_fail(ENOMEM, "open: %s: out of memory", path);
	if (rc == 1) {
		l->kind = LAYER_VHD;
		if ((rc = vhd_open(&l->img, path, flags)))
			return rc;
		l->fd = l->img.fd;
		l->size = l->img.footer.curr_size;
		return 0;
	}
	l->kind = LAYER_RAW;
	l->fd = open(path, ((flags & VHD_OPEN_RDONLY) ? O_RDONLY : O_RDWR) | O_CLOEXEC);
	if (l->fd < 0)
		return vhd_fail(errno, "open: %s: %s", path, strerror(errno));
	off_t end = lseek(l->fd, 0, SEEK_END);
	if (end < 0)
		return vhd_fail(errno, "open: %s: finding its size: %s", path, strerror(errno));
	l->size = (uint64_t)end & ~(uint64_t)(VHD_SECTOR_SIZE - 1);
	return 0;
}

static void layer_close(struct vhd_layer *l)
{
	if (l->kind == LAYER_VHD)
		vhd_close(&l->img);
	else if (l->fd >= 0)
		close(l->fd);
	free(l->path);
	l->path = NULL;
	l->fd = -1;
}

/* Refuse a file seen before in this chain (a parent loop). */
static int check_loop(const struct file_id *ids, int n, const struct stat *st, const char *child, const char *path)
{
	for (int i = 0; i < n; i++)
		if (ids[i].dev == st->st_dev && ids[i].ino == st->st_ino)
			return vhd_fail(ELOOP, "open: %s: parent loop: its parent %s is already in the chain", child, path);
	return 0;
}

/* Walk parents down from `path`, validating each link. */
int vhd_chain_open(struct vhd_chain *c, const char *path, int top_flags)
{
	struct file_id ids[CHAIN_MAX_DEPTH];
	char *cur = strdup(path);
	int flags = top_flags, rc = 0;
	struct stat st;

	memset(c, 0, sizeof(*c));
	c->layers = calloc(CHAIN_MAX_DEPTH, sizeof(*c->layers));
	if (!cur || !c->layers) {
		free(cur);
		free(c->layers);
		c->layers = NULL;
		return vhd_fail(ENOMEM, "open: %s: out of memory", path);
	}
	while (cur) {
		struct vhd_layer *child = c->depth ? &c->layers[c->depth - 1] : NULL;
		char *next = NULL;
		if (c->depth == CHAIN_MAX_DEPTH) {
			rc = vhd_fail(ELOOP, "open: %s: chain deeper than %d images", path, CHAIN_MAX_DEPTH);
			break;
		}
		if (stat(cur, &st)) {
			rc = vhd_fail(errno, "open: %s: %s", cur, strerror(errno));
			break;
		}
		if ((rc = check_loop(ids, c->depth, &st, child ? child->path : path, cur)) ||
		    (child && (rc = vhd_validate_parent(&child->img, cur))))
			break;
		ids[c->depth] = (struct file_id){ st.st_dev, st.st_ino };
		rc = layer_open(&c->layers[c->depth], cur, flags);
		c->depth++;
		if (rc)
			break;
		struct vhd_layer *l = &c->layers[c->depth - 1];
		if (l->kind == LAYER_VHD && l->img.footer.type == VHD_TYPE_DIFF &&
		    (rc = vhd_parent_path(&l->img, &next)))
			break;
		free(cur);
		cur = next;
		flags = VHD_OPEN_RDONLY;
	}
	free(cur);
	if (rc)
		vhd_chain_close(c);
	return rc;
}

void vhd_chain_close(struct vhd_chain *c)
{
	for (int i = 0; i < c->depth; i++)
		layer_close(&c->layers[i]);
	free(c->layers);
	if (c->bmc) {
		for (int i = 0; i < BMC_SLOTS; i++)
			free(c->bmc->slot[i].bm);
		free(c->bmc);
	}
	memset(c, 0, sizeof(*c));
}

/* Largest bitmap among the chain's VHD layers. */
static size_t max_bitmap(const struct vhd_chain *c)
{
	size_t m = VHD_BITMAP_BYTES;

	for (int i = 0; i < c->depth; i++)
		if (c->layers[i].kind == LAYER_VHD && vhd_bitmap_bytes(&c->layers[i].img) > m)
			m = vhd_bitmap_bytes(&c->layers[i].img);
	return m;
}

/* A block's bitmap from the cache, reading it on a miss (LRU eviction). */
static const uint8_t *bitmap_get(struct vhd_chain *c, int layer, uint32_t blk, int *err)
{
	struct vhd_bm_cache *bc = c->bmc;
	struct bmc_slot *victim;

	if (!bc) {
		bc = c->bmc = calloc(1, sizeof(*bc));
		if (!bc) {
			*err = vhd_fail(ENOMEM, "read: out of memory for the bitmap cache");
			return NULL;
		}
		bc->bytes = max_bitmap(c);
	}
	victim = &bc->slot[0];
	for (int i = 0; i < BMC_SLOTS; i++) {
		struct bmc_slot *s = &bc->slot[i];
		if (s->bm && s->layer == layer && s->blk == blk) {
			s->used = ++bc->tick;
			return s->bm;
		}
		if (!s->bm || s->used < victim->used)
			victim = s;
		if (!s->bm)
			break;
	}
	if (!victim->bm && !(victim->bm = malloc(bc->bytes))) {
		*err = vhd_fail(ENOMEM, "read: out of memory for the bitmap cache");
		return NULL;
	}
	victim->used = 0; /* invalid until read */
	victim->layer = -1;
	if ((*err = vhd_read_bitmap(&c->layers[layer].img, blk, victim->bm)))
		return NULL;
	victim->layer = layer;
	victim->blk = blk;
	victim->used = ++bc->tick;
	return victim->bm;
}

/* Topmost layer with data for `sec`, and how many sectors in a row share
 * that answer (never crossing a block boundary of any layer consulted). */
int vhd_chain_locate(struct vhd_chain *c, uint64_t sec, uint32_t max, uint32_t *run)
{
	uint32_t r = max;

	for (int i = 0; i < c->depth; i++) {
		struct vhd_layer *l = &c->layers[i];
		uint64_t lsecs = l->size >> VHD_SECTOR_SHIFT;
		if (sec >= lsecs)
			break; /* past this layer's size: zeros, whatever lies below */
		if (lsecs - sec < r)
			r = (uint32_t)(lsecs - sec);
		if (l->kind == LAYER_RAW) {
			*run = r;
			return i;
		}
		struct vhd_image *img = &l->img;
		uint32_t blk = (uint32_t)(sec / img->spb), in = (uint32_t)(sec % img->spb), j;
		if (img->spb - in < r)
			r = img->spb - in;
		if (!vhd_block_allocated(img, blk))
			continue;
		int err = 0;
		const uint8_t *bm = bitmap_get(c, i, blk, &err);
		if (!bm)
			return err;
		int bit = vhd_bitmap_test(bm, in);
		for (j = in + 1; j < in + r && vhd_bitmap_test(bm, j) == bit; j++)
			;
		r = j - in;
		if (bit) {
			*run = r;
			return i;
		}
	}
	*run = r;
	return c->depth;
}

/* pread all of it; a short read inside a validated layer is an error. */
static int read_full(const struct vhd_layer *l, void *buf, size_t len, uint64_t off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = pread(l->fd, (char *)buf + done, len - done, (off_t)(off + done));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return vhd_fail(n < 0 ? errno : EIO, "read: %s: at %llu: %s", l->path,
					(unsigned long long)(off + done), n < 0 ? strerror(errno) : "unexpected end of file");
		done += (size_t)n;
	}
	return 0;
}

/* Sectors as the guest sees them through the whole chain. */
int vhd_chain_read(struct vhd_chain *c, void *buf, uint64_t sec, uint32_t secs)
{
	uint8_t *p = buf;

	if (!c->depth || sec > c->layers[0].size >> VHD_SECTOR_SHIFT ||
	    secs > (c->layers[0].size >> VHD_SECTOR_SHIFT) - sec)
		return vhd_fail(EINVAL, "read: %s: sectors %llu+%u are beyond the virtual size",
				c->depth ? c->layers[0].path : "(closed)", (unsigned long long)sec, secs);
	while (secs) {
		uint32_t run;
		int i = vhd_chain_locate(c, sec, secs, &run), rc;
		size_t len = (size_t)run << VHD_SECTOR_SHIFT;
		if (i < 0)
			return i;
		if (i == c->depth) {
			memset(p, 0, len);
		} else {
			struct vhd_layer *l = &c->layers[i];
			uint64_t off = sec << VHD_SECTOR_SHIFT;
			if (l->kind == LAYER_VHD) {
				uint32_t blk = (uint32_t)(sec / l->img.spb);
				off = vhd_block_data_off(&l->img, blk) + ((sec % l->img.spb) << VHD_SECTOR_SHIFT);
			}
			if ((rc = read_full(l, p, len, off)))
				return rc;
		}
		p += len;
		sec += run;
		secs -= run;
	}
	return 0;
}
