/* Renew, the driver's part: commit the overlay into its parent while the
 * guest runs, then rename a fresh overlay over it.
 *
 * The copier takes allocated blocks in order, COPY_SLOTS at a time: one
 * read of the block from the overlay, then one write into the parent per
 * run of present sectors. Guest writes meanwhile go to the overlay, and to
 * blocks the copier has passed also to the parent (write through, acked
 * when both are done; sectors the overlay does not hold yet go to the
 * parent only once it holds them); a block still ahead of the copier gets
 * its new data from the copier. So the parent is complete when the copier
 * reaches the end, and a guest writing ahead of the copier pays one
 * write, not two. The overlay stays the disk's authority until the
 * rename.
 *
 * A guest write and the copy of the same block are serialized: the copier
 * claims a block only once the guest writes to it are done, and guest
 * writes to a claimed block wait for its copy; otherwise the copier could
 * write older data over a newer guest write in the parent, which the swap
 * would then expose.
 *
 * The swap (see renew-job.c): the parent is made durable before the
 * pause (every copied sector); the pause holds only rename(fresh, path),
 * the commit point; after the resume the parent is synced again (the
 * guest's last write-through writes) and then the directory, while guest
 * flushes wait for both. No sync sits in the pause, and nothing a flush
 * promised hangs on the late one: a copied sector was durable before the
 * rename, and a write acked after the first sync is durable only once a
 * flush returns. Until the rename the disk is the old overlay over a
 * parent holding extra data the overlay hides; after it, the fresh overlay
 * over a complete parent: the same bytes either way.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "block-renew.h"
#include "scheduler.h"
#include "worker.h"

#define COPY_SLOTS 8
/* The guest counts as busy for this long after its last request: then the
 * copier keeps one block in flight and rests GUEST_TURNS times as long as
 * each block took, so the guest keeps about two thirds of the disk's time
 * (its writes behind the copier cost it two writes each). */
#define GUEST_BUSY_NS (100 * 1000000ull)
#define GUEST_TURNS 2

enum slot_state { SLOT_FREE = 0, SLOT_DRAIN, SLOT_READ, SLOT_WRITE };

struct renew_copy;

/* One block on its way from the overlay to the parent. */
struct copy_slot {
	struct renew_copy *c;
	int state;
	uint32_t blk;
	int pending;
	uint64_t start_ns;
	char *buf;                     /* the block's data, 4 KiB-aligned */
	uint8_t bm[VHD_BITMAP_BYTES];
	struct tiocb tiocb;
};

/* A guest write held while its block is being copied. */
struct held_write {
	td_request_t treq;
	struct held_write *next;
};

/* A guest write going to both images. */
struct wt_write {
	td_request_t orig;
	struct renew_copy *c;
	uint32_t blk;
	int pending;
	int err;                       /* the overlay's result decides */
	int after;                     /* the parent's half waits for the overlay's */
	td_request_t remote;
};

/* A guest flush during the commit: overlay and parent. */
struct wt_flush {
	td_request_t orig;
	int pending;
	int err;
};

struct renew_copy {
	struct renew_state *s;
	struct td_renew_job *job;
	td_driver_t *parent;           /* the chain's read-only parent */
	td_driver_t *target;           /* the same file, writable */
	char *parent_path;
	char *tmp_path;                /* the fresh overlay before the rename */
	int locked_ex;
	uint32_t next_blk;
	uint16_t *wr_inflight;         /* per block: guest writes in flight */
	uint8_t *claimed;              /* per block: the copier owns it */
	struct held_write *held;
	struct copy_slot slots[COPY_SLOTS];
	int busy;
	int err;
	int finishing;
	uint64_t start_ns, issued;     /* for --rate */
	uint64_t last_guest_ns;        /* the guest's last request */
	uint64_t next_claim_ns;        /* a busy guest's turn ends here */
	int rate_timer;
	char *swap_dir;
};

static void copy_pump(struct renew_copy *c);

static int claimed_test(const struct renew_copy *c, uint32_t blk)
{
	return (c->claimed[blk >> 3] >> (blk & 7)) & 1;
}

static void claimed_set(struct renew_copy *c, uint32_t blk, int v)
{
	if (v)
		c->claimed[blk >> 3] |= (uint8_t)(1u << (blk & 7));
	else
		c->claimed[blk >> 3] &= (uint8_t)~(1u << (blk & 7));
}

/* Remember the first error; the copier stops claiming blocks. */
static void copy_fail(struct renew_copy *c, int err)
{
	if (!c->err)
		c->err = err ? err : -EIO;
}

/* ---- guest writes during the commit ---- */

static void wt_issue(struct renew_copy *c, td_request_t p, uint32_t blk);

/* Both halves of a write-through are done: acknowledge the guest. */
static void wt_done(td_request_t treq, int err)
{
	struct wt_write *w = treq.cb_data;
	struct renew_copy *c = w->c;
	td_request_t orig = w->orig;
	int res;

	if (treq.image == c->target->image) {
		if (err) {
			EPRINTF("renew: %s: write to parent %s at sector %llu: %s", c->s->vhd.path,
				c->parent_path, (unsigned long long)treq.sec, strerror(-err));
			copy_fail(c, err);
		}
	} else if (err) {
		w->err = err;
		w->pending -= w->after; /* the parent's half is not sent */
	} else if (w->after) {
		c->target->ops->td_queue_write(c->target, w->remote);
	}
	if (--w->pending)
		return;
	res = w->err;
	if (--c->wr_inflight[w->blk] == 0 && claimed_test(c, w->blk))
		copy_pump(c);  /* a slot was waiting for this block to be quiet */
	free(w);
	td_complete_request(orig, res);
}

/* Send one block's piece of a guest write to the overlay, and to the
 * parent too once the copier has passed the block: a block still ahead
 * gets the write from the copier, which reads it only when it is quiet. */
static void wt_issue(struct renew_copy *c, td_request_t p, uint32_t blk)
{
	struct wt_write *w = calloc(1, sizeof(*w));
	td_request_t local = p, remote = p;
	int through = blk < c->next_blk;

	if (!w) {
		td_complete_request(p, -ENOMEM);
		return;
	}
	w->orig = p;
	w->c = c;
	w->blk = blk;
	w->pending = through ? 2 : 1;
	/* sectors the overlay does not hold yet reach the parent only once it
	 * holds them: a kill in between must not leave the parent showing a
	 * write no overlay, and so no history generation, ever held. Sectors
	 * it holds already hide the parent's, so both halves go at once */
	w->after = through && !renew_holds(c->s, p);
	c->wr_inflight[blk]++;
	local.cb = remote.cb = wt_done;
	local.cb_data = remote.cb_data = w;
	remote.image = c->target->image;
	w->remote = remote;
	renew_write_local(c->s, local);
	if (through && !w->after)
		c->target->ops->td_queue_write(c->target, remote);
}

/* Hold a guest write until the copy of its block is done. */
static void wt_hold(struct renew_copy *c, td_request_t p)
{
	struct held_write *h = malloc(sizeof(*h)), **tail = &c->held;

	if (!h) {
		td_complete_request(p, -ENOMEM);
		return;
	}
	h->treq = p;
	h->next = NULL;
	while (*tail)
		tail = &(*tail)->next;
	*tail = h;
}

void renew_copy_note_guest(struct renew_state *s)
{
	s->copy->last_guest_ns = sched_now_ns();
}

void renew_copy_write(struct renew_state *s, td_request_t treq)
{
	struct renew_copy *c = s->copy;
	td_sector_t sec = treq.sec, end = treq.sec + (td_sector_t)treq.secs;

	c->last_guest_ns = sched_now_ns();
	while (sec < end) {
		uint32_t blk = (uint32_t)(sec / s->vhd.spb);
		td_sector_t blk_end = ((td_sector_t)blk + 1) * s->vhd.spb;
		td_sector_t n = (blk_end < end ? blk_end : end) - sec;
		td_request_t p = treq;

		p.buf = treq.buf + ((sec - treq.sec) << VHD_SECTOR_SHIFT);
		p.sec = sec;
		p.secs = (int)n;
		if (claimed_test(c, blk))
			wt_hold(c, p);
		else
			wt_issue(c, p, blk);
		sec += n;
	}
}

/* Release the guest writes held for `blk`, in order. */
static void wt_release(struct renew_copy *c, uint32_t blk)
{
	struct held_write **pp = &c->held, *mine = NULL, **mt = &mine;

	while (*pp) {
		struct held_write *h = *pp;

		if ((uint32_t)(h->treq.sec / c->s->vhd.spb) == blk) {
			*pp = h->next;
			h->next = NULL;
			*mt = h;
			mt = &h->next;
		} else {
			pp = &h->next;
		}
	}
	while (mine) {
		struct held_write *h = mine;

		mine = h->next;
		wt_issue(c, h->treq, blk);
		free(h);
	}
}

static void wt_flush_done(td_request_t treq, int err)
{
	struct wt_flush *f = treq.cb_data;
	td_request_t orig = f->orig;

	if (err && !f->err)
		f->err = err;
	if (--f->pending)
		return;
	err = f->err;
	free(f);
	td_complete_request(orig, err);
}

void renew_copy_flush(struct renew_state *s, td_request_t treq)
{
	struct renew_copy *c = s->copy;
	struct wt_flush *f = calloc(1, sizeof(*f));
	td_request_t remote = treq, local = treq;

	if (!f) {
		td_complete_request(treq, -ENOMEM);
		return;
	}
	f->orig = treq;
	f->pending = 2;
	local.cb = remote.cb = wt_flush_done;
	local.cb_data = remote.cb_data = f;
	remote.image = c->target->image;
	renew_flush_local(s, local);
	c->target->ops->td_queue_flush(c->target, remote);
}

/* ---- the copier ---- */

/* One write of the slot is done (or the issuing bias is dropped). */
static void slot_put(struct copy_slot *slot)
{
	struct renew_copy *c = slot->c;
	uint32_t blk = slot->blk;
	uint64_t now;

	if (--slot->pending)
		return;
	slot->state = SLOT_FREE;
	c->busy--;
	/* a busy guest gets GUEST_TURNS times the time this block took */
	now = sched_now_ns();
	c->next_claim_ns = now + (now - slot->start_ns) * GUEST_TURNS;
	c->job->bytes_done += (uint64_t)c->s->vhd.spb << VHD_SECTOR_SHIFT;
	claimed_set(c, blk, 0);
	wt_release(c, blk);
	copy_pump(c);
}

static void slot_write_done(td_request_t treq, int err)
{
	struct copy_slot *slot = treq.cb_data;

	if (!err)
		err = td_fault("renew.copy.write");
	if (err) {
		EPRINTF("renew: %s: write to parent %s at sector %llu (%d sectors): %s",
			slot->c->s->vhd.path, slot->c->parent_path, (unsigned long long)treq.sec,
			treq.secs, strerror(-err));
		copy_fail(slot->c, err);
	}
	slot_put(slot);
}

/* Bytes the copier may have issued by now under --rate. */
static int rate_allows(struct renew_copy *c, uint64_t *wait_ms)
{
	uint64_t rate = c->job->rate_bps, elapsed, allowed;

	if (!rate)
		return 1;
	elapsed = sched_now_ns() - c->start_ns;
	allowed = (uint64_t)((double)rate * (double)elapsed / 1e9);
	if (c->issued <= allowed)
		return 1;
	*wait_ms = (uint64_t)((double)(c->issued - allowed) * 1000.0 / (double)rate) + 1;
	return 0;
}

/* The block's data is in the slot: write each run of present sectors. */
static void slot_read_done(void *arg, struct tiocb *t, int err)
{
	struct copy_slot *slot = arg;
	struct renew_copy *c = slot->c;
	uint32_t spb = c->s->vhd.spb, i = 0;
	td_sector_t base = (td_sector_t)slot->blk * spb;

	(void)t;
	if (!err)
		err = td_fault("renew.copy.read");
	slot->state = SLOT_WRITE;
	slot->pending = 1;  /* bias while issuing */
	if (err) {
		EPRINTF("renew: %s: read of block %u: %s", c->s->vhd.path, slot->blk, strerror(-err));
		copy_fail(c, err);
	}
	while (!err && i < spb) {
		int v = vhd_bitmap_test(slot->bm, i);
		uint32_t run = i;
		td_request_t w;

		while (run < spb && vhd_bitmap_test(slot->bm, run) == v)
			run++;
		if (v && base + i < c->s->drv->info.size) {
			uint32_t n = run - i;

			if (base + i + n > c->s->drv->info.size)
				n = (uint32_t)(c->s->drv->info.size - base - i);
			memset(&w, 0, sizeof(w));
			w.op = TD_OP_WRITE;
			w.buf = slot->buf + ((size_t)i << VHD_SECTOR_SHIFT);
			w.sec = base + i;
			w.secs = (int)n;
			w.image = c->target->image;
			w.cb = slot_write_done;
			w.cb_data = slot;
			c->job->bytes_copied += (uint64_t)n << VHD_SECTOR_SHIFT;
			slot->pending++;
			c->target->ops->td_queue_write(c->target, w);
		}
		i = run;
	}
	slot_put(slot);
}

/* Read the pages of the block that cover what its bitmap (slot->bm) holds. */
static void slot_read_held(struct copy_slot *slot)
{
	struct renew_state *s = slot->c->s;
	uint32_t spb = s->vhd.spb, first = 0, last = spb;

	while (first < spb && !vhd_bitmap_test(slot->bm, first))
		first++;
	while (last > first && !vhd_bitmap_test(slot->bm, last - 1))
		last--;
	/* whole 4 KiB pages: the O_DIRECT-friendly cover of the runs */
	first &= ~7u;
	last = (last + 7) & ~7u;
	if (last > spb)
		last = spb;
	if (first >= last) {
		slot->pending = 1;
		slot_put(slot);
		return;
	}
	td_prep_read(s->drv, &slot->tiocb, s->dfd, slot->buf + ((size_t)first << VHD_SECTOR_SHIFT),
		     (size_t)(last - first) << VHD_SECTOR_SHIFT,
		     (long long)(vhd_block_data_off(&s->vhd, slot->blk) + ((uint64_t)first << VHD_SECTOR_SHIFT)),
		     slot_read_done, slot);
	td_queue_tiocb(s->drv, &slot->tiocb);
}

/* The bitmap of a block not in the cache arrived (guest writes to the
 * block are held meanwhile, so it cannot change under us). */
static void slot_bitmap_done(void *arg, struct tiocb *t, int err)
{
	struct copy_slot *slot = arg;
	struct renew_copy *c = slot->c;

	(void)t;
	if (err) {
		EPRINTF("renew: %s: read of the bitmap of block %u: %s", c->s->vhd.path, slot->blk,
			strerror(-err));
		copy_fail(c, err);
		slot->pending = 1;
		slot_put(slot);
		return;
	}
	memcpy(slot->bm, slot->buf, sizeof(slot->bm));
	slot_read_held(slot);
}

/* The claimed block is quiet: read what the overlay holds of it (its
 * bitmap first when the cache lacks it, without stalling the loop). */
static void slot_start_read(struct copy_slot *slot)
{
	struct renew_copy *c = slot->c;
	struct renew_state *s = c->s;
	uint8_t *bm;

	slot->state = SLOT_READ;
	if (!vhd_block_allocated(&s->vhd, slot->blk)) {
		/* the write that drained failed before allocating it */
		slot->pending = 1;
		slot_put(slot);
		return;
	}
	if (renew_block_full(s, slot->blk)) {
		memset(slot->bm, 0xFF, sizeof(slot->bm));
		slot_read_held(slot);
		return;
	}
	bm = bm_cache_lookup(&s->cache, slot->blk);
	if (bm) {
		memcpy(slot->bm, bm, sizeof(slot->bm));
		slot_read_held(slot);
		return;
	}
	td_prep_read(s->drv, &slot->tiocb, s->dfd, slot->buf, vhd_bitmap_bytes(&s->vhd),
		     (long long)vhd_block_bitmap_off(&s->vhd, slot->blk), slot_bitmap_done, slot);
	td_queue_tiocb(s->drv, &slot->tiocb);
}

static void rate_tick(void *arg)
{
	struct renew_copy *c = arg;

	c->rate_timer = 0;
	copy_pump(c);
}

static void copy_finish(struct renew_copy *c);

/* Claim the next allocated blocks while slots and the rate allow. */
static void copy_pump(struct renew_copy *c)
{
	struct renew_state *s = c->s;
	uint64_t block_bytes = (uint64_t)s->vhd.spb << VHD_SECTOR_SHIFT, wait_ms;
	uint64_t now = sched_now_ns();
	int guest_busy = now - c->last_guest_ns < GUEST_BUSY_NS;
	int max_busy = guest_busy ? 1 : COPY_SLOTS;

	for (int i = 0; i < COPY_SLOTS; i++)
		if (c->slots[i].state == SLOT_DRAIN && !c->wr_inflight[c->slots[i].blk])
			slot_start_read(&c->slots[i]);
	while (!c->err && !c->finishing && c->busy < max_busy && c->next_blk < s->vhd.bat_entries) {
		struct copy_slot *slot = NULL;
		uint32_t blk;
		int r;

		if (guest_busy && now < c->next_claim_ns) {
			if (!c->rate_timer)
				c->rate_timer = sched_timer((c->next_claim_ns - now) / 1000000 + 1, rate_tick, c);
			break;
		}
		if (!rate_allows(c, &wait_ms)) {
			if (!c->rate_timer)
				c->rate_timer = sched_timer(wait_ms, rate_tick, c);
			break;
		}
		blk = c->next_blk++;
		/* a write in flight may be allocating it: wait and look again */
		if (!vhd_block_allocated(&s->vhd, blk) && !c->wr_inflight[blk])
			continue;
		r = td_fault("renew.copy");
		if (r) {
			EPRINTF("renew: %s: copy of block %u: %s", s->vhd.path, blk, strerror(-r));
			copy_fail(c, r);
			break;
		}
		for (int i = 0; i < COPY_SLOTS && !slot; i++)
			if (c->slots[i].state == SLOT_FREE)
				slot = &c->slots[i];
		slot->blk = blk;
		slot->pending = 0;
		slot->start_ns = now;
		c->busy++;
		c->issued += block_bytes;
		claimed_set(c, blk, 1);
		if (c->wr_inflight[blk])
			slot->state = SLOT_DRAIN;
		else
			slot_start_read(slot);
	}
	if (!c->busy && !c->finishing && (c->err || c->next_blk >= s->vhd.bat_entries))
		copy_finish(c);
}

/* The fresh overlay, next to the image, ready to be renamed over it. */
static int make_fresh_overlay(struct renew_copy *c)
{
	struct renew_state *s = c->s;
	int r;

	unlink(c->tmp_path);
	r = vhd_snapshot_ex(c->parent_path, c->tmp_path, s->vhd.footer.curr_size, 1);
	if (r) {
		EPRINTF("renew: %s: %s", s->vhd.path, vhd_errmsg());
		return r;
	}
	return 0;
}

/* In a thread: creating and syncing a file may take a while on a busy disk. */
static int fresh_overlay_work(void *arg)
{
	return make_fresh_overlay(arg);
}

static void fresh_overlay_done(void *arg, int rc)
{
	struct renew_copy *c = arg;

	td_renew_copied(c->job, rc);
}

/* The parent is durable: prepare the swap and hand over to the job. */
static void finish_flushed(td_request_t treq, int err)
{
	struct renew_copy *c = treq.cb_data;

	if (err) {
		EPRINTF("renew: %s: flush of parent %s: %s", c->s->vhd.path, c->parent_path, strerror(-err));
	} else if (!c->job->commit_only) {
		if (!td_worker_run(fresh_overlay_work, c, fresh_overlay_done))
			return;
		err = make_fresh_overlay(c);
	}
	td_renew_copied(c->job, err);
}

/* Every block is copied (or the copy failed): flush the parent first. */
static void copy_finish(struct renew_copy *c)
{
	td_request_t fl;

	c->finishing = 1;
	if (c->err) {
		td_renew_copied(c->job, c->err);
		return;
	}
	memset(&fl, 0, sizeof(fl));
	fl.image = c->target->image;
	fl.cb = finish_flushed;
	fl.cb_data = c;
	c->target->ops->td_queue_flush(c->target, fl);
}

static void copy_start(void *arg)
{
	copy_pump(arg);
}

/* ---- guards on the parent ---- */

/* "/x/.disk.vhd.renew-new": the fresh overlay's name before the rename. */
static char *tmp_path_of(const char *path)
{
	const char *slash = strrchr(path, '/');
	char *out = NULL;
	int dirlen = slash ? (int)(slash - path + 1) : 0;

	if (asprintf(&out, "%.*s.%s.renew-new", dirlen, path, slash ? slash + 1 : path) < 0)
		return NULL;
	return out;
}

void renew_remove_stale(const char *path)
{
	char *tmp = tmp_path_of(path);

	if (tmp && unlink(tmp) == 0)
		tlog(TLOG_WARN, "renew: removed %s, left by an interrupted renew", tmp);
	free(tmp);
}

/* Take the parent exclusively: nobody else may read it while it changes. */
static int guard_lock(struct renew_copy *c)
{
	char who[256];

	if (!c->parent->ops->td_lock) {
		EPRINTF("renew: %s: cannot lock the parent %s (use --force)", c->s->vhd.path, c->parent_path);
		return -EOPNOTSUPP;
	}
	if (c->parent->ops->td_lock(c->parent, LOCK_EX | LOCK_NB) == 0) {
		c->locked_ex = 1;
		return 0;
	}
	c->parent->ops->td_lock(c->parent, LOCK_SH | LOCK_NB);
	td_lock_holders(c->parent_path, who, sizeof(who));
	EPRINTF("renew: %s: the parent %s is in use by another disk or process%s%s (use --force to commit anyway)",
		c->s->vhd.path, c->parent_path, *who ? ": " : "", who);
	return -EBUSY;
}

/* Is `path` a VHD whose parent is the file `parent`? */
static int is_child_of(const char *path, const struct stat *parent)
{
	struct vhd_image v;
	struct stat st;
	char *pp = NULL;
	int yes = 0;

	if (vhd_open(&v, path, VHD_OPEN_RDONLY | VHD_OPEN_NOCHECK))
		return 0;
	if (v.footer.type == VHD_TYPE_DIFF && !vhd_parent_path(&v, &pp) && !stat(pp, &st))
		yes = st.st_dev == parent->st_dev && st.st_ino == parent->st_ino;
	free(pp);
	vhd_close(&v);
	return yes;
}

/* Other overlays of the same parent in `dir`: committing would change
 * what they show. Returns the first one found (malloc'd) or NULL. */
static char *other_child_in(const char *dir, const struct stat *parent, const struct stat *self)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	char *found = NULL;

	if (!d)
		return NULL;
	while (!found && (e = readdir(d))) {
		size_t n = strlen(e->d_name);
		char *path;
		struct stat st;

		if (n < 5 || strcasecmp(e->d_name + n - 4, ".vhd") || e->d_name[0] == '.')
			continue;
		if (asprintf(&path, "%s/%s", dir, e->d_name) < 0)
			break;
		if (!stat(path, &st) && S_ISREG(st.st_mode) &&
		    !(st.st_dev == self->st_dev && st.st_ino == self->st_ino) && is_child_of(path, parent))
			found = path;
		else
			free(path);
	}
	closedir(d);
	return found;
}

/* The parent must be writable, not hidden, and nobody else's parent. */
static int guard_parent(struct renew_copy *c)
{
	struct renew_state *s = c->s;
	struct stat pst, cst;
	char *pdir, *cdir, *other;

	if (access(c->parent_path, W_OK)) {
		EPRINTF("renew: %s: the parent %s is not writable: %s", s->vhd.path, c->parent_path,
			strerror(errno));
		return -EACCES;
	}
	if (c->parent->type == DISK_TYPE_VHD &&
	    ((struct renew_state *)c->parent->data)->vhd.footer.hidden) {
		EPRINTF("renew: %s: the parent %s is marked hidden (a shared base; use --force)",
			s->vhd.path, c->parent_path);
		return -EPERM;
	}
	if (stat(c->parent_path, &pst) || fstat(s->vhd.fd, &cst))
		return -errno;
	pdir = strdup(c->parent_path);
	cdir = strdup(s->vhd.path);
	if (!pdir || !cdir) {
		free(pdir);
		free(cdir);
		return -ENOMEM;
	}
	other = other_child_in(dirname(pdir), &pst, &cst);
	if (!other)
		other = other_child_in(dirname(cdir), &pst, &cst);
	free(pdir);
	free(cdir);
	if (other) {
		EPRINTF("renew: %s: the parent %s has another overlay, %s, which the commit would change (use --force)",
			s->vhd.path, c->parent_path, other);
		free(other);
		return -EBUSY;
	}
	return 0;
}

/* Bytes of the raw parent's holes that lie under the overlay's allocated
 * blocks in [0, size): one walk over the holes (none, on a preallocated
 * base), not two seeks per block, which blocked the loop for tens of ms
 * on an 8 GiB overlay. */
static uint64_t hole_bytes(int fd, const struct vhd_image *vhd, uint64_t block, uint64_t size)
{
	uint64_t need = 0, off = 0;

	while (off < size) {
		off_t h = lseek(fd, (off_t)off, SEEK_HOLE), d;

		if (h < 0 || (uint64_t)h >= size)
			break;
		d = lseek(fd, h, SEEK_DATA);
		if (d < 0 || (uint64_t)d > size)
			d = (off_t)size;
		for (uint64_t b = (uint64_t)h / block; b * block < (uint64_t)d; b++) {
			uint64_t from = b * block > (uint64_t)h ? b * block : (uint64_t)h;
			uint64_t to = (b + 1) * block < (uint64_t)d ? (b + 1) * block : (uint64_t)d;

			if (b < vhd->bat_entries && vhd_block_allocated(vhd, (uint32_t)b))
				need += to - from;
		}
		off = (uint64_t)d;
	}
	return need;
}

/* Refuse before writing anything when the parent's filesystem is too full. */
static int guard_space(struct renew_copy *c)
{
	struct renew_state *s = c->s;
	uint64_t block = (uint64_t)s->vhd.spb << VHD_SECTOR_SHIFT, need = 0, avail;
	uint64_t size = s->vhd.footer.curr_size;
	struct statvfs sv;
	int fd = -1;

	if (c->parent->type == DISK_TYPE_AIO) {
		fd = open(c->parent_path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			return -errno;
	}
	if (fd >= 0) {
		need = hole_bytes(fd, &s->vhd, block, size);
		close(fd);
	} else {
		for (uint32_t b = 0; b < s->vhd.bat_entries; b++)
			if (vhd_block_allocated(&s->vhd, b) &&
			    !vhd_block_allocated(&((struct renew_state *)c->parent->data)->vhd, b))
				need += block + VHD_DATA_ALIGN;
	}
	if (statvfs(c->parent_path, &sv))
		return -errno;
	avail = (uint64_t)sv.f_bavail * sv.f_frsize;
	if (need > avail) {
		EPRINTF("renew: %s: no room to commit into %s: needs %llu MiB, the filesystem has %llu MiB free",
			s->vhd.path, c->parent_path, (unsigned long long)(need >> 20),
			(unsigned long long)(avail >> 20));
		return -ENOSPC;
	}
	return 0;
}

/* ---- begin, swap, end ---- */

static void copy_free(struct renew_copy *c)
{
	for (int i = 0; i < COPY_SLOTS; i++)
		free(c->slots[i].buf);
	while (c->held) {
		struct held_write *h = c->held;

		c->held = h->next;
		td_complete_request(h->treq, -EIO);
		free(h);
	}
	if (c->target)
		td_driver_close(c->target);
	free(c->wr_inflight);
	free(c->claimed);
	free(c->parent_path);
	free(c->tmp_path);
	free(c);
}

/* Everything the commit needs that the guest need not wait for: the
 * guards (a directory scan, the parent's holes), the lock, the parent
 * opened for writing. */
int renew_copy_prepare(struct renew_state *s, struct td_renew_job *job)
{
	td_image_t *pimg = s->drv->image ? s->drv->image->next : NULL;
	size_t block = (size_t)s->vhd.spb << VHD_SECTOR_SHIFT;
	struct renew_copy *c;
	char err[512] = "";
	int r;

	if (s->vhd.footer.type != VHD_TYPE_DIFF || !pimg) {
		EPRINTF("renew: %s: not a differencing VHD: there is no parent to commit into", s->vhd.path);
		return -EINVAL;
	}
	if (s->copy || s->prepared) {
		EPRINTF("renew: %s: a renew is already running", s->vhd.path);
		return -EBUSY;
	}
	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->s = s;
	c->job = job;
	c->parent = pimg->driver;
	c->parent_path = strdup(c->parent->name);
	c->tmp_path = tmp_path_of(s->vhd.path);
	c->wr_inflight = calloc(s->vhd.bat_entries + 1, sizeof(*c->wr_inflight));
	c->claimed = calloc(s->vhd.bat_entries / 8 + 1, 1);
	r = (!c->parent_path || !c->tmp_path || !c->wr_inflight || !c->claimed) ? -ENOMEM : 0;
	for (int i = 0; !r && i < COPY_SLOTS; i++) {
		c->slots[i].c = c;
		if (posix_memalign((void **)&c->slots[i].buf, VHD_DATA_ALIGN, block))
			r = -ENOMEM;
	}
	if (r)
		goto fail;
	renew_remove_stale(s->vhd.path);
	if (!job->force && ((r = guard_parent(c)) || (r = guard_lock(c))))
		goto fail;
	r = guard_space(c);
	if (r)
		goto fail;
	c->target = td_driver_open(c->parent->type == DISK_TYPE_VHD ? DISK_TYPE_RENEW : DISK_TYPE_AIO,
				   c->parent_path, TD_OPEN_NOLOCK, err, sizeof(err));
	if (!c->target) {
		EPRINTF("renew: %s: open the parent for writing: %s", s->vhd.path, err);
		r = -EIO;
		goto fail;
	}
	s->prepared = c;
	return 0;
fail:
	if (c->locked_ex)
		c->parent->ops->td_lock(c->parent, LOCK_SH | LOCK_NB);
	copy_free(c);
	return r;
}

/* Paused, nothing in flight: from now on guest writes go through the
 * copier's rules. The estimate counts the blocks allocated right now. */
int renew_copy_begin(struct renew_state *s, struct td_renew_job *job)
{
	struct renew_copy *c;
	int r;

	if (!s->prepared && (r = renew_copy_prepare(s, job)))
		return r;
	c = s->prepared;
	s->prepared = NULL;
	job->bytes_total = s->blocks_allocated * ((uint64_t)s->vhd.spb << VHD_SECTOR_SHIFT);
	job->bytes_done = job->bytes_copied = 0;
	c->start_ns = sched_now_ns();
	s->copy = c;
	/* after the job resumes the guest: the copy may end at once */
	sched_timer(0, copy_start, c);
	return 0;
}

/* History: give the old overlay a name in the history directory, durable
 * before the rename, so once the commit point is passed it cannot be lost.
 * A link and a directory fsync: the pause does not grow with the overlay. */
static int keep_overlay(struct renew_copy *c)
{
	const char *keep = c->job->keep_path;
	char *dir;
	int dfd, err = td_fault("history.link");

	if (!err && link(c->s->vhd.path, keep))
		err = -errno;
	if (err) {
		EPRINTF("renew: %s: keep the old overlay as %s: %s", c->s->vhd.path, keep, strerror(-err));
		return err;
	}
	dir = strdup(keep);
	dfd = dir ? open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
	if (dfd < 0 || fsync(dfd)) {
		err = dir ? -errno : -ENOMEM;
		EPRINTF("renew: %s: fsync the directory of %s: %s", c->s->vhd.path, keep, strerror(-err));
		unlink(keep);
	}
	if (dfd >= 0)
		close(dfd);
	free(dir);
	return err;
}

/* Paused: the rename makes the fresh overlay the disk. Every block the
 * copier wrote is durable in the parent (copy_finish); what the guest
 * wrote through since then is durable once the job's sync after the resume
 * is done, and the guest's flushes wait for it: a power loss before then
 * may lose only writes the guest has not flushed, as with any disk. */
void renew_copy_swap(struct renew_state *s, struct td_renew_job *job)
{
	struct renew_copy *c = s->copy;
	char *dir;
	int err;

	if (c->job->keep_path && (err = keep_overlay(c))) {
		td_renew_swapped(c->job, err);
		return;
	}
	td_fault("renew.before_rename");
	if (rename(c->tmp_path, s->vhd.path)) {
		err = -errno;
		EPRINTF("renew: %s: rename %s over it: %s", s->vhd.path, c->tmp_path, strerror(errno));
		if (c->job->keep_path)
			unlink(c->job->keep_path);  /* the overlay stays the disk */
		td_renew_swapped(c->job, err);
		return;
	}
	td_fault("renew.after_rename");
	/* hold the old overlay: its last close must not happen on the loop */
	c->job->old_fd = dup(s->vhd.fd);
	/* the rename is durable once its directory is: the job does that after
	 * the guest resumes, holding back guest flushes until it is done */
	dir = strdup(s->vhd.path);
	c->job->sync_dir = dir ? strdup(dirname(dir)) : NULL;
	free(dir);
	c->job->sync_parent = strdup(c->parent_path);
	td_renew_swapped(c->job, 0);
}

void renew_copy_end(struct renew_state *s, struct td_renew_job *job)
{
	struct renew_copy *c = s->copy ? s->copy : s->prepared;

	if (!c)
		return;
	if (c->rate_timer)
		sched_cancel_timer(c->rate_timer);
	if (c->locked_ex)
		c->parent->ops->td_lock(c->parent, LOCK_SH | LOCK_NB);
	unlink(c->tmp_path);
	s->copy = s->prepared = NULL;
	copy_free(c);
}
