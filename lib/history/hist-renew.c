/* The history's part of a renew: before the base changes, generation 0
 * (the base saved) and the checks that the history is this disk's; after
 * the swap, the old overlay hashed, logged and given its final name. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "history.h"
#include "vhd.h"

/* The uuid in the footer copy at offset 0 of a VHD ("-" when unreadable). */
static void footer_uuid(const char *path, char out[37])
{
	uint8_t buf[VHD_FOOTER_SIZE];
	struct vhd_footer f;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	strcpy(out, "-");
	if (fd < 0)
		return;
	if (pread(fd, buf, sizeof(buf), 0) == (ssize_t)sizeof(buf) && !vhd_footer_decode(buf, &f, path))
		vhd_uuid_format(f.uuid, out);
	close(fd);
}

/* The uuid, parent uuid, allocation and sizes of the overlay at `path`. */
static int overlay_info(const char *path, struct hist_rec *r, char *err, size_t errlen)
{
	struct vhd_image v;
	uint8_t *bm;
	uint64_t secs;
	struct stat st;
	int rc = vhd_open(&v, path, VHD_OPEN_RDONLY);

	if (rc) {
		hist_err(err, errlen, 0, "%s", vhd_errmsg());
		return rc;
	}
	bm = malloc(vhd_bitmap_bytes(&v));
	secs = vhd_size(&v) >> VHD_SECTOR_SHIFT;
	vhd_uuid_format(v.footer.uuid, r->uuid);
	if (v.footer.type == VHD_TYPE_DIFF && !vhd_uuid_is_null(v.header.prt_uuid))
		vhd_uuid_format(v.header.prt_uuid, r->parent);
	else
		strcpy(r->parent, "-");
	for (uint32_t b = 0; bm && !rc && b < v.bat_entries; b++) {
		uint64_t first = (uint64_t)b * v.spb;

		if (!vhd_block_allocated(&v, b))
			continue;
		rc = vhd_read_bitmap(&v, b, bm);
		r->alloc += (uint64_t)v.spb << VHD_SECTOR_SHIFT;
		r->data += (uint64_t)vhd_bitmap_count(bm, secs - first < v.spb ? (uint32_t)(secs - first) : v.spb)
			   << VHD_SECTOR_SHIFT;
	}
	if (!bm)
		rc = -ENOMEM;
	if (rc)
		hist_err(err, errlen, 0, "history: read %s: %s", path, bm ? vhd_errmsg() : strerror(ENOMEM));
	if (!rc && !fstat(v.fd, &st))
		r->size = (uint64_t)st.st_size;
	free(bm);
	vhd_close(&v);
	return rc;
}

/* Generation 0: a durable copy of the base, its checksum, its record. */
int hist_init(struct hist *h, const char *base, const char *disk, struct hist_progress *pr,
	      char *err, size_t errlen)
{
	char tmp[4096], final[4096], e2[HIST_ERRLEN] = "";
	struct hist_rec r = { .kind = HIST_BASE, .gen = 0 };
	struct hist_progress dummy = { 0 };
	struct vhd_image v;
	int rc, reflinked, is_vhd = vhd_probe(base);
	struct stat st;

	if (!pr)
		pr = &dummy;
	if (hist_base(h)) {
		hist_err(err, errlen, 0, "history %s: already holds a saved base (generation %u)", h->dir,
			 hist_base(h)->gen);
		return -EEXIST;
	}
	if (is_vhd < 0 || stat(base, &st)) {
		hist_err(err, errlen, 0, "history %s: save base %s: %s", h->dir, base,
			 is_vhd < 0 ? vhd_errmsg() : strerror(errno));
		return is_vhd < 0 ? is_vhd : -errno;
	}
	strcpy(r.uuid, "-");
	if (is_vhd && !vhd_open(&v, base, VHD_OPEN_RDONLY | VHD_OPEN_NOCHECK)) {
		vhd_uuid_format(v.footer.uuid, r.uuid);
		vhd_close(&v);
	}
	pr->total = 2 * (uint64_t)st.st_size;  /* the copy, then its checksum */
	hist_path(h, ".0.base.tmp", tmp, sizeof(tmp));
	hist_path(h, "0.base", final, sizeof(final));
	unlink(tmp);
	rc = hist_copy_file(base, tmp, &reflinked, &pr->done, e2, sizeof(e2));
	if (!rc)
		rc = hist_fault("history.save_base");
	if (!rc)
		rc = hist_sha256_file(tmp, r.sha256, &pr->done, e2, sizeof(e2));
	if (!rc && rename(tmp, final))
		rc = hist_err(e2, sizeof(e2), -errno, "rename %s: %s", tmp, strerror(errno));
	if (rc) {
		unlink(tmp);
		hist_err(err, errlen, 0, "history %s: save base %s: %s", h->dir, base,
			 e2[0] ? e2 : strerror(-rc));
		return rc;
	}
	rc = hist_sync_dir(h, err, errlen);
	if (rc)
		return rc;
	r.time_us = hist_now_us();
	strcpy(r.file, "0.base");
	strcpy(r.fmt, is_vhd ? "vhd" : "raw");
	strcpy(r.parent, "-");
	if (disk)
		footer_uuid(disk, r.next);
	else
		strcpy(r.next, "-");
	r.alloc = hist_disk_bytes(final);
	r.data = r.size = (uint64_t)st.st_size;
	r.disk = hist_rel(h, disk);
	r.base = hist_rel(h, base);
	rc = hist_append(h, &r, err, errlen);
	hist_rec_free(&r);
	return rc;
}

/* Is `path` the file the record's path names? */
static int same_file(const struct hist *h, const char *path, const char *recorded)
{
	char where[4096];
	struct stat a, b;

	hist_resolve(h, recorded, where, sizeof(where));
	return recorded && !stat(path, &a) && !stat(where, &b) && a.st_dev == b.st_dev &&
	       a.st_ino == b.st_ino;
}

/* The history must be this disk's: same base, and the overlay the last
 * generation left (a renew without the history would leave a gap). */
static int check_disk(struct hist *h, const char *disk, const char *base, char *err, size_t errlen)
{
	const struct hist_rec *b = hist_base(h), *last = hist_last(h);
	char uuid[37], where[4096];

	if (!same_file(h, base, b->base)) {
		hist_resolve(h, b->base, where, sizeof(where));
		hist_err(err, errlen, 0, "history %s: is the history of the base %s; the parent of %s is %s "
			 "(use another history directory)", h->dir, where, disk, base);
		return -EINVAL;
	}
	footer_uuid(disk, uuid);
	if (strcmp(last->next, "-") && strcmp(last->next, uuid)) {
		hist_err(err, errlen, 0, "history %s: the overlay %s (uuid %s) is not the one generation %u left "
			 "(uuid %s): the disk was renewed or replaced without this history; "
			 "start a new history in another directory", h->dir, disk, uuid, last->gen, last->next);
		return -ESTALE;
	}
	return 0;
}

/* Is the history the directory of `path`? */
static int is_dir_of(const struct hist *h, const char *path)
{
	char *copy = strdup(path), *slash = copy ? strrchr(copy, '/') : NULL;
	char *rd, *rh = realpath(h->dir, NULL);
	int same;

	if (slash)
		*slash = '\0';
	rd = copy ? realpath(slash ? (*copy ? copy : "/") : ".", NULL) : NULL;
	same = rd && rh && !strcmp(rd, rh);
	free(copy);
	free(rd);
	free(rh);
	return same;
}

int hist_prepare(struct hist *h, const char *disk, const char *base, uint32_t *gen,
		 char *pending, size_t plen, struct hist_progress *pr, char *err, size_t errlen)
{
	struct stat ds, hs;
	char name[64];
	int rc = hist_recover(h, disk, err, errlen);

	if (rc)
		return rc;
	if (stat(disk, &ds) || fstat(h->dfd, &hs)) {
		hist_err(err, errlen, 0, "history %s: stat %s: %s", h->dir, disk, strerror(errno));
		return -errno;
	}
	if (is_dir_of(h, disk) || is_dir_of(h, base)) {
		hist_err(err, errlen, 0, "history %s: is the directory of %s or its base; give the history a "
			 "directory of its own (the overlays it keeps would look like other overlays of the base)",
			 h->dir, disk);
		return -EINVAL;
	}
	if (ds.st_dev != hs.st_dev) {
		hist_err(err, errlen, 0, "history %s: not on the filesystem of %s: the old overlay is kept by "
			 "a hard link, so the history must live on the same filesystem", h->dir, disk);
		return -EXDEV;
	}
	if (!hist_base(h))
		rc = hist_init(h, base, disk, pr, err, errlen);
	else
		rc = check_disk(h, disk, base, err, errlen);
	if (rc)
		return rc;
	*gen = hist_last_gen(h) + 1;
	snprintf(name, sizeof(name), "%u.vhd.pending", *gen);
	if (pending)
		hist_path(h, name, pending, plen);
	return 0;
}

/* The pending file is on disk for good: fsync it (its last writes went
 * through the page cache of the daemon that wrote it). */
static int make_durable(const char *path, struct stat *st, char *err, size_t errlen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC), rc = 0;

	if (fd < 0 || fstat(fd, st) || fsync(fd))
		rc = -errno;
	if (rc)
		hist_err(err, errlen, 0, "history: fsync %s: %s", path, strerror(-rc));
	if (fd >= 0)
		close(fd);
	return rc;
}

int hist_record(struct hist *h, uint32_t gen, const char *disk, int64_t time_us,
		struct hist_progress *pr, char *err, size_t errlen)
{
	struct hist_rec r = { .kind = HIST_OVERLAY, .gen = gen };
	const struct hist_rec *b = hist_base(h);
	char name[64], path[4096], final[64], e2[HIST_ERRLEN] = "";
	struct stat st, ds;
	int rc;

	snprintf(name, sizeof(name), "%u.vhd.pending", gen);
	snprintf(final, sizeof(final), "%u.vhd", gen);
	hist_path(h, name, path, sizeof(path));
	rc = make_durable(path, &st, e2, sizeof(e2));
	if (!rc && pr)
		pr->total = (uint64_t)st.st_size;
	if (!rc)
		rc = hist_fault("history.record");
	if (!rc)
		rc = hist_sha256_file(path, r.sha256, pr ? &pr->done : NULL, e2, sizeof(e2));
	if (!rc)
		rc = overlay_info(path, &r, e2, sizeof(e2));
	if (rc) {
		hist_err(err, errlen, 0, "history %s: record generation %u: %s", h->dir, gen,
			 e2[0] ? e2 : strerror(-rc));
		return rc;
	}
	r.time_us = time_us ? time_us : (int64_t)st.st_ctim.tv_sec * 1000000 + st.st_ctim.tv_nsec / 1000;
	strcpy(r.file, final);
	strcpy(r.fmt, "vhd");
	if (disk && !stat(disk, &ds) && !(ds.st_dev == st.st_dev && ds.st_ino == st.st_ino))
		footer_uuid(disk, r.next);
	else
		strcpy(r.next, "-");
	r.disk = hist_rel(h, disk);
	r.base = strdup(b && b->base ? b->base : "");
	rc = hist_append(h, &r, e2, sizeof(e2));
	hist_rec_free(&r);
	if (!rc)
		rc = hist_fault("history.append");
	if (!rc && renameat(h->dfd, name, h->dfd, final))
		rc = hist_err(e2, sizeof(e2), -errno, "rename %s to %s: %s", name, final, strerror(errno));
	if (rc) {
		hist_err(err, errlen, 0, "history %s: record generation %u: %s", h->dir, gen,
			 e2[0] ? e2 : strerror(-rc));
		return rc;
	}
	return hist_sync_dir(h, err, errlen);
}
