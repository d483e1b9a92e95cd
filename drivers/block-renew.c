/* Disk types `renew` (a VHD overlay, read-write) and `vhd` (a VHD parent,
 * read-only): a tapdisk driver over lib/vhd.
 *
 * Data moves through libaio on an O_DIRECT descriptor; metadata (footer,
 * BAT, bitmaps) goes through lib/vhd's buffered descriptor, whose writes
 * land in the page cache in microseconds and keep the order this driver
 * gives them. A request is split per block: sectors the overlay holds are
 * read from it, the rest are forwarded to the parent. A partial block's
 * bitmap not in the cache is read through libaio too, while the pieces
 * that need it wait (the direct read sees the page cache's newer copy,
 * which the kernel writes back first).
 *
 * Writes to a block that is not allocated yet follow lib/vhd's crash
 * order: reserve (new end footer past the block), data, bitmap, BAT entry;
 * only then is the write acknowledged. A kill at any point leaks the
 * reserved space at worst; a data or bitmap write that fails (no room,
 * an I/O error) gives the space back when no later block sits past it.
 * Unwritten sectors of a new block stay holes in the file and are never
 * read (their bitmap bits are clear): there is no zero-fill.
 *
 * A write into sectors the overlay already holds needs nothing once it
 * lands (no bitmap, no BAT), so it may go behind its ack (write-behind.c);
 * every read or write of an allocated block first waits for a landing
 * write it overlaps, and a flush waits for them all.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tapdisk.h"
#include "vhd.h"
#include "block-renew.h"

static int full_test(const struct renew_state *s, uint32_t blk)
{
	return (s->full[blk >> 3] >> (blk & 7)) & 1;
}

int renew_block_full(const struct renew_state *s, uint32_t blk)
{
	return full_test(s, blk);
}

static void full_set(struct renew_state *s, uint32_t blk)
{
	if (!full_test(s, blk)) {
		s->full[blk >> 3] |= (uint8_t)(1u << (blk & 7));
		s->full_blocks++;
	}
}

/* A block's two solid bits: bit 0 answered, bit 1 without holes. */
static uint8_t solid_bits(const struct renew_state *s, uint32_t blk)
{
	return (uint8_t)((s->solid[blk >> 2] >> ((blk & 3) * 2)) & 3);
}

/* Is [off, off + len) of the data file without a hole? */
static int range_solid(struct renew_state *s, uint64_t off, uint64_t len)
{
	off_t hole = lseek(s->dfd, (off_t)off, SEEK_HOLE);

	return hole >= 0 && (uint64_t)hole >= off + len;
}

/* Do bits [first, first + n) all have the value `v`? Counts the run. */
static uint32_t bitmap_run(const uint8_t *bm, uint32_t first, uint32_t n, int v)
{
	uint32_t i = first;

	while (i < first + n && vhd_bitmap_test(bm, i) == v)
		i++;
	return i - first;
}

/* Does any sector of the block's file range [a, b) hold data, by its
 * bitmap `bm` (NULL: the block is full)? */
static int held_in(const uint8_t *bm, uint64_t start, uint64_t a, uint64_t b)
{
	uint32_t first = (uint32_t)((a - start) >> VHD_SECTOR_SHIFT);
	uint32_t last = (uint32_t)((b - start + VHD_SECTOR_SIZE - 1) >> VHD_SECTOR_SHIFT);

	if (a >= b)
		return 0;
	return !bm || bitmap_run(bm, first, last - first, 0) != last - first;
}

#define SCAN_EXTENTS 64
#define EXTENT_NOT_WRITTEN (FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DELALLOC | FIEMAP_EXTENT_UNWRITTEN)

/* Is every sector the block holds (bitmap `bm`, NULL when full) on a
 * written extent of the file, so that overwriting it never allocates? One
 * FIEMAP walk of the block; -1 when the filesystem cannot tell. A write
 * that could need space (into a copy made sparse, say) must not go behind
 * its ack, or a full disk could fail it after the ack. */
static int held_solid(struct renew_state *s, uint32_t blk, const uint8_t *bm)
{
	uint64_t start = vhd_block_data_off(&s->vhd, blk);
	uint64_t end = start + ((uint64_t)s->vhd.spb << VHD_SECTOR_SHIFT), cur = start;
	struct {
		struct fiemap fm;
		struct fiemap_extent fe[SCAN_EXTENTS];
	} u;
	int last = 0;

	while (cur < end && !last) {
		/* all of it: valgrind does not learn that the kernel filled the extents */
		memset(&u, 0, sizeof(u));
		u.fm.fm_start = cur;
		u.fm.fm_length = end - cur;
		u.fm.fm_extent_count = SCAN_EXTENTS;
		if (ioctl(s->dfd, FS_IOC_FIEMAP, &u.fm) < 0)
			return -1;
		if (!u.fm.fm_mapped_extents)
			break;
		for (uint32_t i = 0; i < u.fm.fm_mapped_extents && cur < end; i++) {
			const struct fiemap_extent *e = &u.fm.fm_extents[i];
			uint64_t e_end = e->fe_logical + e->fe_length;

			if (held_in(bm, start, cur, e->fe_logical < end ? e->fe_logical : end))
				return 0; /* a hole under held sectors */
			if ((e->fe_flags & EXTENT_NOT_WRITTEN) &&
			    held_in(bm, start, e->fe_logical > cur ? e->fe_logical : cur,
				    e_end < end ? e_end : end))
				return 0;
			if (e_end > cur)
				cur = e_end;
			last = (e->fe_flags & FIEMAP_EXTENT_LAST) != 0;
		}
	}
	return !held_in(bm, start, cur, end);
}

/* Record a block's solid bits (answered, without holes). */
static void solid_set(struct renew_state *s, uint32_t blk, uint8_t bits)
{
	s->solid[blk >> 2] |= (uint8_t)(bits << ((blk & 3) * 2));
}

/* Grow the pool by one chunk: requests in flight are bounded by clients. */
static int io_pool_grow(struct renew_state *s)
{
	struct renew_io *chunk = calloc(IO_POOL_CHUNK, sizeof(*chunk));
	void **chunks = realloc(s->chunks, sizeof(void *) * (size_t)(s->nr_chunks + 1));

	if (!chunk || !chunks) {
		free(chunk);
		if (chunks)
			s->chunks = chunks;
		return -ENOMEM;
	}
	s->chunks = chunks;
	s->chunks[s->nr_chunks++] = chunk;
	for (int i = 0; i < IO_POOL_CHUNK; i++) {
		chunk[i].next = s->free_io;
		s->free_io = &chunk[i];
	}
	return 0;
}

static struct renew_io *io_get(struct renew_state *s, td_request_t treq)
{
	struct renew_io *io;

	if (!s->free_io && io_pool_grow(s))
		return NULL;
	io = s->free_io;
	s->free_io = io->next;
	memset(io, 0, sizeof(*io));
	io->s = s;
	io->treq = treq;
	return io;
}

static void io_put(struct renew_state *s, struct renew_io *io)
{
	io->next = s->free_io;
	s->free_io = io;
}

/* A copy of `treq` covering `secs` sectors from `sec`. */
static td_request_t piece_of(td_request_t treq, td_sector_t sec, int secs)
{
	td_request_t p = treq;

	p.buf = treq.buf + ((sec - treq.sec) << VHD_SECTOR_SHIFT);
	p.sec = sec;
	p.secs = secs;
	return p;
}

/* The bitmap of an allocated block: cached, or read (and cached) now, on
 * the loop: only for a write that landed after its bitmap left the cache. */
static uint8_t *block_bitmap(struct renew_state *s, uint32_t blk, int *err)
{
	uint8_t buf[VHD_BITMAP_BYTES];
	uint8_t *bm = bm_cache_lookup(&s->cache, blk);

	if (bm)
		return bm;
	*err = vhd_read_bitmap(&s->vhd, blk, buf);
	if (*err) {
		EPRINTF("%s", vhd_errmsg());
		return NULL;
	}
	return bm_cache_insert(&s->cache, blk, buf);
}

/* Is every bit of the bitmap set? */
static int bitmap_full(const uint8_t *bm, uint32_t spb)
{
	for (uint32_t i = 0; i < spb / 8; i++)
		if (bm[i] != 0xFF)
			return 0;
	return 1;
}

/* Remember what a bitmap says about its block: full ones skip the cache. */
static void note_bitmap(struct renew_state *s, uint32_t blk, const uint8_t *bm)
{
	if (bitmap_full(bm, s->vhd.spb)) {
		full_set(s, blk);
		bm_cache_drop(&s->cache, blk);
	} else {
		bm_cache_insert(&s->cache, blk, bm);
	}
}

static void queue_data_io(struct renew_state *s, struct renew_io *io, int write,
			  uint64_t off, td_queue_callback_t cb)
{
	size_t len = (size_t)io->treq.secs << VHD_SECTOR_SHIFT;

	if (write)
		td_prep_write(s->drv, &io->tiocb, s->dfd, io->treq.buf, len, (long long)off, cb, io);
	else
		td_prep_read(s->drv, &io->tiocb, s->dfd, io->treq.buf, len, (long long)off, cb, io);
	td_queue_tiocb(s->drv, &io->tiocb);
}

/* Byte offset in the file of sector `sec`, which block `blk` holds. */
static uint64_t sector_off(struct renew_state *s, uint32_t blk, td_sector_t sec)
{
	return vhd_block_data_off(&s->vhd, blk) +
	       ((sec % s->vhd.spb) << VHD_SECTOR_SHIFT);
}

/* ---- reads ---- */

static void read_done(void *arg, struct tiocb *t, int err)
{
	struct renew_io *io = arg;
	td_request_t treq = io->treq;

	(void)t;
	io_put(io->s, io);
	td_complete_request(treq, err);
}

static void read_from_overlay(struct renew_state *s, td_request_t p, uint32_t blk)
{
	struct renew_io *io = io_get(s, p);

	if (!io) {
		td_complete_request(p, -ENOMEM);
		return;
	}
	queue_data_io(s, io, 0, sector_off(s, blk, p.sec), read_done);
}

static void read_block(struct renew_state *s, td_request_t p, uint32_t blk);
static void write_block(struct renew_state *s, td_request_t p, uint32_t blk);

/* An overlapping write has landed: run the parked piece again. */
static void retry_piece(void *arg, int err)
{
	struct renew_io *io = arg;
	struct renew_state *s = io->s;
	td_request_t p = io->treq;
	uint32_t blk = io->blk;

	(void)err;
	io_put(s, io);
	if (p.op == TD_OP_READ)
		read_block(s, p, blk);
	else
		write_block(s, p, blk);
}

/* Park the piece while a write to its bytes is still landing; 1 if parked. */
static int wait_landing(struct renew_state *s, td_request_t p, uint32_t blk)
{
	uint64_t off = sector_off(s, blk, p.sec), len = (uint64_t)p.secs << VHD_SECTOR_SHIFT;
	struct renew_io *io;
	int err;

	if (!td_wb_landing(&s->wb, off, len))
		return 0;
	io = io_get(s, p);
	if (!io) {
		td_complete_request(p, -ENOMEM);
		return 1;
	}
	io->blk = blk;
	err = td_wb_wait(&s->wb, off, len, retry_piece, io);
	if (err) {
		io_put(s, io);
		td_complete_request(p, err);
	}
	return 1;
}

/* ---- bitmap loads ---- */

static struct renew_fetch *fetch_find(struct renew_state *s, uint32_t blk)
{
	for (struct renew_fetch *f = s->fetches; f; f = f->next)
		if (f->blk == blk)
			return f;
	return NULL;
}

/* A bitmap was written: a read of it in flight may return what was there
 * before, so its result must not reach the cache. */
static void fetch_stale(struct renew_state *s, uint32_t blk)
{
	struct renew_fetch *f = fetch_find(s, blk);

	if (f)
		f->stale = 1;
}

/* The bitmap arrived: cache it (unless something newer is there) and run
 * the waiting pieces again, in the order they came. */
static void fetch_done(void *arg, struct tiocb *t, int err)
{
	struct renew_fetch *f = arg, **pp;
	struct renew_state *s = f->s;
	struct renew_io *w = f->waiters;

	(void)t;
	for (pp = &s->fetches; *pp != f; pp = &(*pp)->next)
		;
	*pp = f->next;
	if (err)
		EPRINTF("read: %s: bitmap of block %u: %s", s->vhd.path, f->blk, strerror(-err));
	else if (!f->stale && !bm_cache_peek(&s->cache, f->blk))
		note_bitmap(s, f->blk, f->buf);
	f->next = s->free_fetches;
	s->free_fetches = f;
	while (w) {
		struct renew_io *next = w->next;
		td_request_t p = w->treq;

		if (err) {
			io_put(s, w);
			td_complete_request(p, err);
		} else {
			retry_piece(w, 0);
		}
		w = next;
	}
}

/* A fetch from the free list, or a new one: no more exist than misses
 * were ever in flight at once. */
static struct renew_fetch *fetch_get(struct renew_state *s)
{
	struct renew_fetch *f = s->free_fetches;

	if (f) {
		s->free_fetches = f->next;
	} else {
		f = calloc(1, sizeof(*f));
		if (!f || posix_memalign((void **)&f->buf, 4096, VHD_BITMAP_BYTES)) {
			free(f);
			return NULL;
		}
	}
	f->s = s;
	f->stale = 0;
	f->waiters = NULL;
	return f;
}

/* Start reading a block's bitmap through the data descriptor. */
static struct renew_fetch *fetch_start(struct renew_state *s, uint32_t blk)
{
	struct renew_fetch *f = fetch_get(s);

	if (!f)
		return NULL;
	f->blk = blk;
	f->next = s->fetches;
	s->fetches = f;
	td_prep_read(s->drv, &f->tiocb, s->dfd, (char *)f->buf, vhd_bitmap_bytes(&s->vhd),
		     (long long)vhd_block_bitmap_off(&s->vhd, blk), fetch_done, f);
	td_queue_tiocb(s->drv, &f->tiocb);
	return f;
}

/* Park a piece at the tail of a waiting list (an allocation's or a
 * bitmap read's), so the pieces run again in the order they came. */
static void park_piece(struct renew_state *s, struct renew_io **list, td_request_t p, uint32_t blk)
{
	struct renew_io *io = io_get(s, p);

	if (!io) {
		td_complete_request(p, -ENOMEM);
		return;
	}
	io->blk = blk;
	while (*list)
		list = &(*list)->next;
	*list = io;
}

/* Park a piece until its block's bitmap is in the cache. */
static void fetch_wait(struct renew_state *s, td_request_t p, uint32_t blk)
{
	struct renew_fetch *f = fetch_find(s, blk);

	if (!f)
		f = fetch_start(s, blk);
	if (!f) {
		td_complete_request(p, -ENOMEM);
		return;
	}
	park_piece(s, &f->waiters, p, blk);
}

/* One block's part of a read: overlay runs and parent runs by the bitmap. */
static void read_block(struct renew_state *s, td_request_t p, uint32_t blk)
{
	uint8_t bm_copy[VHD_BITMAP_BYTES];
	uint32_t first, done = 0;
	uint8_t *bm;

	if (!vhd_block_allocated(&s->vhd, blk)) {
		td_forward_request(p);
		return;
	}
	if (wait_landing(s, p, blk))
		return;
	if (full_test(s, blk)) {
		read_from_overlay(s, p, blk);
		return;
	}
	bm = bm_cache_lookup(&s->cache, blk);
	if (!bm) {
		fetch_wait(s, p, blk);
		return;
	}
	/* completions below may run client code that touches the cache */
	memcpy(bm_copy, bm, sizeof(bm_copy));
	bm = bm_copy;
	first = (uint32_t)(p.sec % s->vhd.spb);
	while (done < (uint32_t)p.secs) {
		int v = vhd_bitmap_test(bm, first + done);
		uint32_t run = bitmap_run(bm, first + done, (uint32_t)p.secs - done, v);
		td_request_t sub = piece_of(p, p.sec + done, (int)run);

		done += run;
		if (v)
			read_from_overlay(s, sub, blk);
		else
			td_forward_request(sub);
	}
}

static void renew_queue_read(td_driver_t *drv, td_request_t treq)
{
	struct renew_state *s = drv->data;
	td_sector_t sec = treq.sec, end = treq.sec + (td_sector_t)treq.secs;

	if (s->copy)
		renew_copy_note_guest(s);
	while (sec < end) {
		uint32_t blk = (uint32_t)(sec / s->vhd.spb);
		td_sector_t blk_end = ((td_sector_t)blk + 1) * s->vhd.spb;
		td_sector_t n = (blk_end < end ? blk_end : end) - sec;

		read_block(s, piece_of(treq, sec, (int)n), blk);
		sec += n;
	}
}

/* ---- writes ---- */

static struct renew_alloc *alloc_find(struct renew_state *s, uint32_t blk)
{
	for (struct renew_alloc *a = s->allocs; a; a = a->next)
		if (a->blk == blk)
			return a;
	return NULL;
}

static void alloc_remove(struct renew_state *s, struct renew_alloc *a)
{
	for (struct renew_alloc **pp = &s->allocs; *pp; pp = &(*pp)->next)
		if (*pp == a) {
			*pp = a->next;
			return;
		}
}

/* The bitmap `bm` with the bits of [sec, sec + secs) set. */
static void bitmap_mark(uint8_t *bm, uint32_t spb, td_sector_t sec, int secs)
{
	uint32_t first = (uint32_t)(sec % spb);

	for (uint32_t i = first; i < first + (uint32_t)secs; i++)
		vhd_bitmap_set(bm, i);
}

/* Data landed in an allocated block: record its sectors in the bitmap. */
static int bitmap_record(struct renew_state *s, uint32_t blk, td_request_t p)
{
	uint8_t next[VHD_BITMAP_BYTES];
	uint8_t *bm;
	int err = 0;

	if (full_test(s, blk))
		return 0;
	bm = block_bitmap(s, blk, &err);
	if (!bm)
		return err;
	memcpy(next, bm, sizeof(next));
	bitmap_mark(next, s->vhd.spb, p.sec, p.secs);
	if (!memcmp(next, bm, sizeof(next)))
		return 0;
	err = vhd_write_bitmap(&s->vhd, blk, next);
	if (err) {
		EPRINTF("%s", vhd_errmsg());
		return err;
	}
	fetch_stale(s, blk);
	note_bitmap(s, blk, next);
	return 0;
}

/* Allocation settled (either way): let the waiting writes go again. */
static void alloc_finish(struct renew_state *s, struct renew_alloc *a)
{
	struct renew_io *w = a->waiters;

	alloc_remove(s, a);
	free(a);
	while (w) {
		struct renew_io *next = w->next;
		td_request_t p = w->treq;
		uint32_t blk = w->blk;

		io_put(s, w);
		write_block(s, p, blk);
		w = next;
	}
}

/* The allocation failed before its BAT entry: give its space back. */
static void alloc_cancel(struct renew_state *s, struct renew_alloc *a)
{
	if (vhd_alloc_cancel(&s->vhd, a->bm_sec, a->prev_footer_off))
		EPRINTF("%s (the space stays reserved)", vhd_errmsg());
}

/* The allocating write's data landed: bitmap, then BAT entry, then ack. */
static int alloc_commit(struct renew_state *s, struct renew_alloc *a, td_request_t p)
{
	uint8_t bm[VHD_BITMAP_BYTES];
	int err;

	memset(bm, 0, sizeof(bm));
	bitmap_mark(bm, s->vhd.spb, p.sec, p.secs);
	td_fault("alloc.data");
	err = vhd_write_bitmap_at(&s->vhd, a->bm_sec, bm);
	td_fault("alloc.bitmap");
	if (err) {
		EPRINTF("%s", vhd_errmsg());
		alloc_cancel(s, a);
		return err;
	}
	err = vhd_alloc_commit(&s->vhd, a->blk, a->bm_sec);
	if (err) {
		/* the BAT sector may be half there: keep the space it may name */
		EPRINTF("%s", vhd_errmsg());
		return err;
	}
	s->blocks_allocated++;
	/* every sector it holds was written here, through the data descriptor:
	 * nothing it holds is a hole, now or as it fills up */
	solid_set(s, a->blk, 3);
	note_bitmap(s, a->blk, bm);
	return 0;
}

static void write_done(void *arg, struct tiocb *t, int err)
{
	struct renew_io *io = arg;
	struct renew_state *s = io->s;
	struct renew_alloc *a = io->alloc;
	td_request_t treq = io->treq;

	(void)t;
	if (a) {
		if (err)
			alloc_cancel(s, a);
		else
			err = alloc_commit(s, a, treq);
		io_put(s, io);
		/* settle the allocation before the ack: the ack may be the last
		 * request a pausing vbd waits for, and a renew's reopen then
		 * closes this image (freeing `s` and `a`) inside it */
		alloc_finish(s, a);
		td_complete_request(treq, err);
		return;
	}
	if (!err && io->bitmap_update)
		err = bitmap_record(s, io->blk, treq);
	io_put(s, io);
	td_complete_request(treq, err);
}

/* Start writing back the new end footer now. Until the filesystem maps
 * the page, its idea of the size on disk stays below the new block, and
 * ext4 runs a direct write past that size synchronously, inside
 * io_submit, under the inode lock: every first write of a block, and
 * writes into the newest blocks, would stall the loop for a disk write.
 * Mapping the page moves the size on disk at once; the write itself goes
 * on in the background, ordered as before. Only a hint: a failure here
 * changes nothing the image holds. */
static void footer_writeback(struct renew_state *s)
{
	(void)sync_file_range(s->vhd.fd, (off_t)s->vhd.footer_off, VHD_FOOTER_SIZE,
			      SYNC_FILE_RANGE_WRITE);
}

/* First write to a block: reserve its place, then write its data there. */
static void write_allocate(struct renew_state *s, td_request_t p, uint32_t blk)
{
	struct renew_alloc *a = calloc(1, sizeof(*a));
	struct renew_io *io = io_get(s, p);
	uint64_t off;
	int err;

	if (!a || !io) {
		free(a);
		if (io)
			io_put(s, io);
		td_complete_request(p, -ENOMEM);
		return;
	}
	a->prev_footer_off = s->vhd.footer_off;
	err = vhd_alloc_reserve(&s->vhd, blk, &a->bm_sec);
	if (err) {
		EPRINTF("%s", vhd_errmsg());
		free(a);
		io_put(s, io);
		td_complete_request(p, err);
		return;
	}
	td_fault("alloc.reserved");
	footer_writeback(s);
	a->blk = blk;
	a->next = s->allocs;
	s->allocs = a;
	io->alloc = a;
	io->blk = blk;
	off = (((uint64_t)a->bm_sec + s->vhd.bm_secs) << VHD_SECTOR_SHIFT) +
	      ((p.sec % s->vhd.spb) << VHD_SECTOR_SHIFT);
	queue_data_io(s, io, 1, off, write_done);
}

/* Is a piece the overlay holds in the file without holes? Each block is
 * walked once per open (held_solid): a block allocated in this open, or
 * found solid, stays solid, since every sector it gains is written through
 * the data descriptor. Only in a block with holes under held sectors (a
 * sparse copy), or where the filesystem has no FIEMAP (tmpfs), is each
 * piece's range asked. */
static int piece_solid(struct renew_state *s, uint32_t blk, const uint8_t *bm, td_request_t p)
{
	uint8_t bits = solid_bits(s, blk);

	if (!(bits & 1)) {
		bits = held_solid(s, blk, full_test(s, blk) ? NULL : bm) > 0 ? 3 : 1;
		solid_set(s, blk, bits);
	}
	if (bits & 2)
		return 1;
	return range_solid(s, sector_off(s, blk, p.sec), (uint64_t)p.secs << VHD_SECTOR_SHIFT);
}

/* Does the block already record every sector of the piece? `bm` is its
 * cached bitmap, unless the block is full. */
static int bits_present(struct renew_state *s, uint32_t blk, const uint8_t *bm, td_request_t p)
{
	if (full_test(s, blk))
		return 1;
	if (bitmap_full(bm, s->vhd.spb)) {
		note_bitmap(s, blk, bm); /* the next writes take the fast path */
		return 1;
	}
	return bitmap_run(bm, (uint32_t)(p.sec % s->vhd.spb), (uint32_t)p.secs, 1) ==
	       (uint32_t)p.secs;
}

static void write_block(struct renew_state *s, td_request_t p, uint32_t blk)
{
	struct renew_alloc *a;
	struct renew_io *io;
	uint8_t *bm = NULL;
	int present;

	if (!vhd_block_allocated(&s->vhd, blk)) {
		a = alloc_find(s, blk);
		if (a)
			park_piece(s, &a->waiters, p, blk);
		else
			write_allocate(s, p, blk);
		return;
	}
	if (wait_landing(s, p, blk))
		return;
	if (!full_test(s, blk) && !(bm = bm_cache_lookup(&s->cache, blk))) {
		fetch_wait(s, p, blk);
		return;
	}
	present = bits_present(s, blk, bm, p);
	/* sectors the overlay holds record nothing when rewritten: the write
	 * may go behind its ack */
	if (present && !s->copy && td_wb_room(&s->wb, (size_t)p.secs << VHD_SECTOR_SHIFT) &&
	    piece_solid(s, blk, bm, p) &&
	    td_wb_write(&s->wb, s->drv, s->dfd, p, sector_off(s, blk, p.sec)) == 1)
		return;
	io = io_get(s, p);
	if (!io) {
		td_complete_request(p, -ENOMEM);
		return;
	}
	io->blk = blk;
	io->bitmap_update = !present;
	queue_data_io(s, io, 1, sector_off(s, blk, p.sec), write_done);
}

int renew_holds(struct renew_state *s, td_request_t p)
{
	uint32_t blk = (uint32_t)(p.sec / s->vhd.spb);
	uint8_t *bm = NULL;

	if (!vhd_block_allocated(&s->vhd, blk))
		return 0;
	if (!full_test(s, blk) && !(bm = bm_cache_lookup(&s->cache, blk)))
		return 0;
	return bits_present(s, blk, bm, p);
}

void renew_write_local(struct renew_state *s, td_request_t treq)
{
	td_sector_t sec = treq.sec, end = treq.sec + (td_sector_t)treq.secs;

	while (sec < end) {
		uint32_t blk = (uint32_t)(sec / s->vhd.spb);
		td_sector_t blk_end = ((td_sector_t)blk + 1) * s->vhd.spb;
		td_sector_t n = (blk_end < end ? blk_end : end) - sec;

		write_block(s, piece_of(treq, sec, (int)n), blk);
		sec += n;
	}
}

static void renew_queue_write(td_driver_t *drv, td_request_t treq)
{
	struct renew_state *s = drv->data;

	if (s->rdonly) {
		td_complete_request(treq, -EROFS);
		return;
	}
	if (s->copy)
		renew_copy_write(s, treq);
	else
		renew_write_local(s, treq);
}

/* ---- flush ---- */

static void flush_done(void *arg, struct tiocb *t, int err)
{
	struct renew_io *io = arg;
	td_request_t treq = io->treq;

	(void)t;
	io_put(io->s, io);
	td_complete_request(treq, err);
}

/* Every write acked before the flush has landed: sync them. */
static void flush_landed(void *arg, int err)
{
	struct renew_io *io = arg;
	struct renew_state *s = io->s;

	if (err) {
		flush_done(io, NULL, err);
		return;
	}
	/* fdatasync covers the inode: the metadata written through the other
	 * descriptor is made durable with the data */
	td_prep_fdsync(s->drv, &io->tiocb, s->dfd, flush_done, io);
	td_queue_tiocb(s->drv, &io->tiocb);
}

void renew_flush_local(struct renew_state *s, td_request_t treq)
{
	struct renew_io *io;

	if (s->rdonly) {
		td_complete_request(treq, 0);
		return;
	}
	io = io_get(s, treq);
	if (!io) {
		td_complete_request(treq, -ENOMEM);
		return;
	}
	td_wb_barrier(&s->wb, flush_landed, io);
}

static void renew_queue_flush(td_driver_t *drv, td_request_t treq)
{
	struct renew_state *s = drv->data;

	if (s->copy)
		renew_copy_flush(s, treq);
	else
		renew_flush_local(s, treq);
}

/* ---- open / close ---- */

/* O_DIRECT unless the filesystem refuses it or wants more than 512-byte
 * alignment (requests are sector-granular). */
static int open_data_fd(const char *path, int rdonly, td_flag_t flags)
{
	int mode = rdonly ? O_RDONLY : O_RDWR;
	int fd = -1;

	if (!(flags & TD_OPEN_NO_O_DIRECT)) {
		fd = open(path, mode | O_DIRECT | O_CLOEXEC);
#ifdef STATX_DIOALIGN
		if (fd >= 0) {
			struct statx stx;

			if (!statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) &&
			    (stx.stx_mask & STATX_DIOALIGN) && stx.stx_dio_offset_align > 512) {
				close(fd);
				fd = -1;
			}
		}
#endif
		if (fd >= 0)
			return fd;
	}
	return open(path, mode | O_CLOEXEC);
}

/* Shared for parents, exclusive for the overlay a disk writes. */
static int lock_image(struct renew_state *s, const char *path)
{
	if (s->drv->flags & TD_OPEN_NOLOCK)
		return 0;
	return td_lock_image(s->vhd.fd, path, s->rdonly);
}

static void renew_free(struct renew_state *s)
{
	td_wb_fini(&s->wb);
	renew_copy_end(s, NULL);
	while (s->allocs) {
		struct renew_alloc *a = s->allocs;

		s->allocs = a->next;
		free(a);
	}
	while (s->free_fetches) {
		struct renew_fetch *f = s->free_fetches;

		s->free_fetches = f->next;
		free(f->buf);
		free(f);
	}
	for (int i = 0; i < s->nr_chunks; i++)
		free(s->chunks[i]);
	free(s->chunks);
	s->chunks = NULL;
	s->nr_chunks = 0;
	s->free_io = NULL;
	bm_cache_free(&s->cache);
	free(s->full);
	s->full = NULL;
	free(s->solid);
	s->solid = NULL;
	if (s->dfd >= 0)
		close(s->dfd);
	s->dfd = -1;
	vhd_close(&s->vhd);
}

/* How many partial blocks' bitmaps to keep: BM_CACHE_ENTRIES, or
 * $RENEW_BITMAP_CACHE (a host with huge working sets and memory to spare,
 * or a test that wants evictions). */
static int cache_entries(const char *name, uint32_t *entries)
{
	const char *env = getenv("RENEW_BITMAP_CACHE");
	unsigned long v;
	char *end;

	*entries = BM_CACHE_ENTRIES;
	if (!env)
		return 0;
	errno = 0;
	v = strtoul(env, &end, 10);
	if (!*env || *end || errno || v < 1 || v > BM_CACHE_ENTRIES_MAX || env[0] == '-') {
		EPRINTF("open: %s: RENEW_BITMAP_CACHE=%s: want a number of bitmaps from 1 to %u",
			name, env, BM_CACHE_ENTRIES_MAX);
		return -EINVAL;
	}
	*entries = (uint32_t)v;
	return 0;
}

static int renew_open_common(td_driver_t *drv, const char *name, td_flag_t flags, int rdonly)
{
	struct renew_state *s = drv->data;
	uint32_t entries;
	int err;

	memset(s, 0, sizeof(*s));
	s->dfd = -1;
	s->drv = drv;
	s->rdonly = rdonly;
	vhd_set_fault_hook(td_fault); /* tests fail named metadata writes */
	err = cache_entries(name, &entries);
	if (err)
		return err;
	err = vhd_open(&s->vhd, name, rdonly ? VHD_OPEN_RDONLY : 0);
	if (err) {
		EPRINTF("%s", vhd_errmsg());
		return err;
	}
	if (s->vhd.spb != VHD_SECTORS_PER_BLOCK) {
		EPRINTF("open: %s: block size %u bytes not supported (2 MiB only)",
			name, s->vhd.spb << VHD_SECTOR_SHIFT);
		err = -ENOTSUP;
		goto fail;
	}
	err = lock_image(s, name);
	if (err)
		goto fail;
	s->dfd = open_data_fd(name, rdonly, flags);
	if (s->dfd < 0) {
		err = -errno;
		EPRINTF("open: %s: %s", name, strerror(errno));
		goto fail;
	}
	if (!rdonly)
		td_wb_init(&s->wb, s->dfd, name);
	s->full = calloc((s->vhd.bat_entries + 7) / 8 + 1, 1);
	s->solid = calloc((s->vhd.bat_entries + 3) / 4 + 1, 1);
	err = s->full && s->solid ? bm_cache_init(&s->cache, s->vhd.bat_entries, entries) : -ENOMEM;
	if (err)
		goto fail;
	for (uint32_t b = 0; b < s->vhd.bat_entries; b++)
		s->blocks_allocated += vhd_block_allocated(&s->vhd, b);
	drv->info.size = s->vhd.footer.curr_size >> VHD_SECTOR_SHIFT;
	drv->info.sector_size = VHD_SECTOR_SIZE;
	drv->info.info = 0;
	return 0;
fail:
	renew_free(s);
	return err;
}

static int renew_open(td_driver_t *drv, const char *name, td_flag_t flags)
{
	int rdonly = !!(flags & TD_OPEN_RDONLY);

	if (!rdonly && !(flags & TD_OPEN_NOLOCK))
		renew_remove_stale(name);
	return renew_open_common(drv, name, flags, rdonly);
}

static int vhd_parent_open(td_driver_t *drv, const char *name, td_flag_t flags)
{
	return renew_open_common(drv, name, flags, 1);
}

static int renew_close(td_driver_t *drv)
{
	struct renew_state *s = drv->data;

	renew_free(s);
	return 0;
}

static int renew_get_parent_id(td_driver_t *drv, td_disk_id_t *id)
{
	struct renew_state *s = drv->data;
	char *path = NULL;
	int err, is_vhd;

	if (s->vhd.footer.type != VHD_TYPE_DIFF)
		return TD_NO_PARENT;
	err = vhd_parent_path(&s->vhd, &path);
	if (err) {
		EPRINTF("%s", vhd_errmsg());
		return err;
	}
	is_vhd = vhd_probe(path);
	if (is_vhd < 0) {
		EPRINTF("%s", vhd_errmsg());
		free(path);
		return is_vhd;
	}
	id->name = path;
	id->type = is_vhd ? DISK_TYPE_VHD : DISK_TYPE_AIO;
	id->flags = 0;
	return 0;
}

static int renew_validate_parent(td_driver_t *child, td_driver_t *parent, td_flag_t flags)
{
	struct renew_state *s = child->data;
	int err;

	(void)flags;
	if (parent->info.size < child->info.size) {
		EPRINTF("open: %s: parent %s is smaller (%llu sectors) than the disk (%llu sectors)",
			child->name, parent->name, (unsigned long long)parent->info.size,
			(unsigned long long)child->info.size);
		return -EINVAL;
	}
	err = vhd_validate_parent(&s->vhd, parent->name);
	if (err)
		EPRINTF("%s", vhd_errmsg());
	return err;
}

static void renew_debug(td_driver_t *drv)
{
	struct renew_state *s = drv->data;

	tlog(TLOG_INFO, "%s: %u blocks, %llu allocated, %llu full, %u bitmaps cached, %s",
	     drv->name, s->vhd.bat_entries, (unsigned long long)s->blocks_allocated,
	     (unsigned long long)s->full_blocks, bm_cache_count(&s->cache),
	     s->allocs ? "allocations in progress" : "idle");
}

static void renew_stats(td_driver_t *drv, td_stats_t *st)
{
	struct renew_state *s = drv->data;

	st->blocks_allocated = s->blocks_allocated;
	st->allocated_bytes = s->blocks_allocated * ((uint64_t)s->vhd.spb << VHD_SECTOR_SHIFT);
	st->bitmap_cache_hits = s->cache.hits;
	st->bitmap_cache_misses = s->cache.misses;
	int n = snprintf(st->extra, sizeof(st->extra),
			 "\"full_blocks\":%llu,\"bitmaps_cached\":%u,\"virtual_blocks\":%u,",
			 (unsigned long long)s->full_blocks, bm_cache_count(&s->cache),
			 s->vhd.bat_entries);

	if (n > 0 && (size_t)n < sizeof(st->extra))
		td_wb_stats_json(&s->wb, st->extra + n, sizeof(st->extra) - (size_t)n);
}

static int renew_lock(td_driver_t *drv, int op)
{
	struct renew_state *s = drv->data;

	return flock(s->vhd.fd, op) ? -errno : 0;
}

static int renew_renew_prepare(td_driver_t *drv, struct td_renew_job *job)
{
	return renew_copy_prepare(drv->data, job);
}

static int renew_renew_begin(td_driver_t *drv, struct td_renew_job *job)
{
	return renew_copy_begin(drv->data, job);
}

static void renew_renew_swap(td_driver_t *drv, struct td_renew_job *job)
{
	renew_copy_swap(drv->data, job);
}

static void renew_renew_end(td_driver_t *drv, struct td_renew_job *job)
{
	renew_copy_end(drv->data, job);
}

const struct tap_disk tapdisk_renew = {
	.disk_type = "tapdisk_renew",
	.flags = 0,
	.private_data_size = sizeof(struct renew_state),
	.td_open = renew_open,
	.td_close = renew_close,
	.td_get_parent_id = renew_get_parent_id,
	.td_validate_parent = renew_validate_parent,
	.td_queue_read = renew_queue_read,
	.td_queue_write = renew_queue_write,
	.td_queue_flush = renew_queue_flush,
	.td_debug = renew_debug,
	.td_stats = renew_stats,
	.td_lock = renew_lock,
	.td_renew_prepare = renew_renew_prepare,
	.td_renew_begin = renew_renew_begin,
	.td_renew_swap = renew_renew_swap,
	.td_renew_end = renew_renew_end,
};

const struct tap_disk tapdisk_vhd = {
	.disk_type = "tapdisk_vhd",
	.flags = 0,
	.private_data_size = sizeof(struct renew_state),
	.td_open = vhd_parent_open,
	.td_close = renew_close,
	.td_get_parent_id = renew_get_parent_id,
	.td_validate_parent = renew_validate_parent,
	.td_queue_read = renew_queue_read,
	.td_queue_write = renew_queue_write,
	.td_queue_flush = renew_queue_flush,
	.td_debug = renew_debug,
	.td_stats = renew_stats,
	.td_lock = renew_lock,
};
