/* Rebuilding the base as of a generation: the saved base copied, then the
 * saved overlays written over it one by one, each checked against its
 * record first. Nothing in the history is ever written. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include "history.h"

/* The generation exists and every record from the base to it is there
 * and chained (each overlay is the one its predecessor left). */
static int check_chain(const struct hist *h, uint32_t gen, char *err, size_t errlen)
{
	const struct hist_rec *b = hist_base(h), *prev;
	uint32_t last = hist_last_gen(h);

	if (!b) {
		hist_err(err, errlen, 0, "history %s: no saved base", h->dir);
		return -ENOENT;
	}
	if (gen < b->gen || gen > last) {
		hist_err(err, errlen, 0, "history %s: generation %u %s (the history holds generations %u..%u)",
			 h->dir, gen, gen < b->gen ? "was pruned" : "does not exist", b->gen, last);
		return -ENOENT;
	}
	prev = b;
	for (uint32_t g = b->gen + 1; g <= gen; g++) {
		const struct hist_rec *r = hist_overlay(h, g);
		char note[96] = "";

		if (h->log.bad_lines)
			snprintf(note, sizeof(note), "; line %d of the log is corrupt", h->log.first_bad_line);
		if (!r) {
			hist_err(err, errlen, 0, "history %s: generation %u is missing from the log (a gap in the "
				 "chain%s): cannot rebuild generation %u", h->dir, g, note, gen);
			return -ENOENT;
		}
		if (strcmp(prev->next, "-") && strcmp(prev->next, r->uuid)) {
			hist_err(err, errlen, 0, "history %s: the chain is broken at generation %u: its overlay is "
				 "%s, generation %u left %s", h->dir, g, r->uuid, prev->gen, prev->next);
			return -EINVAL;
		}
		if (strcmp(b->uuid, "-") && strcmp(r->parent, b->uuid)) {
			hist_err(err, errlen, 0, "history %s: generation %u is an overlay of %s, not of the saved "
				 "base %s", h->dir, g, r->parent, b->uuid);
			return -EINVAL;
		}
		prev = r;
	}
	return 0;
}

/* The file of a record is there and has the bytes the log says. */
static int verify_file(const struct hist *h, const struct hist_rec *r, const char *path,
		       const char *what, char *err, size_t errlen)
{
	char sum[65], e2[HIST_ERRLEN];
	int rc;

	if (access(path, R_OK)) {
		hist_err(err, errlen, 0, "history %s: missing %s %s (generation %u): %s", h->dir, what, path,
			 r->gen, strerror(errno));
		return -ENOENT;
	}
	rc = hist_sha256_file(path, sum, NULL, e2, sizeof(e2));
	if (rc) {
		hist_err(err, errlen, 0, "history %s: %s", h->dir, e2);
		return rc;
	}
	if (strcmp(sum, r->sha256)) {
		hist_err(err, errlen, 0, "history %s: %s %s (generation %u) is corrupt: sha256 %s, the log "
			 "says %s", h->dir, what, path, r->gen, sum, r->sha256);
		return -EBADMSG;
	}
	return 0;
}

/* The saved base copied to `out`, checked by the checksum of the copy. */
static int build_base(struct hist *h, const struct hist_rec *b, const char *out, char *err,
		      size_t errlen)
{
	char src[4096], e2[HIST_ERRLEN];
	int reflinked, rc;

	hist_path(h, b->file, src, sizeof(src));
	if (access(src, R_OK)) {
		hist_err(err, errlen, 0, "history %s: missing saved base %s: %s", h->dir, src, strerror(errno));
		return -ENOENT;
	}
	rc = hist_copy_file(src, out, &reflinked, NULL, e2, sizeof(e2));
	if (rc) {
		hist_err(err, errlen, 0, "history %s: %s", h->dir, e2);
		return rc;
	}
	return verify_file(h, b, out, "copy of the saved base", err, errlen);
}

int hist_build(struct hist *h, uint32_t gen, const char *out, char *err, size_t errlen)
{
	const struct hist_rec *b = hist_base(h);
	char path[4096], e2[HIST_ERRLEN];
	int rc = check_chain(h, gen, err, errlen);

	for (uint32_t g = b ? b->gen + 1 : 1; !rc && g <= gen; g++) {  /* fail before copying */
		hist_path(h, hist_overlay(h, g)->file, path, sizeof(path));
		if (access(path, R_OK)) {
			hist_err(err, errlen, 0, "history %s: missing overlay %s (generation %u): %s", h->dir,
				 path, g, strerror(errno));
			rc = -ENOENT;
		}
	}
	if (!rc)
		rc = build_base(h, b, out, err, errlen);
	for (uint32_t g = b ? b->gen + 1 : 1; !rc && g <= gen; g++) {
		const struct hist_rec *r = hist_overlay(h, g);

		hist_path(h, r->file, path, sizeof(path));
		rc = verify_file(h, r, path, "overlay", err, errlen);
		if (!rc && (rc = hist_apply(path, out, !strcmp(b->fmt, "vhd"), e2, sizeof(e2))))
			hist_err(err, errlen, 0, "history %s: apply generation %u to %s: %s", h->dir, g, out, e2);
	}
	if (rc)
		unlink(out);
	return rc;
}

/* When generation `g` came to be: its renew, or the saving of the base. */
static int64_t gen_time(const struct hist *h, uint32_t g)
{
	const struct hist_rec *r = hist_overlay(h, g), *b = hist_base(h);

	return r ? r->time_us : b && b->gen == g ? b->time_us : -1;
}

int hist_gen_at(const struct hist *h, int64_t time_us, uint32_t *gen, char *err, size_t errlen)
{
	const struct hist_rec *b = hist_base(h);
	char first[40], want[40];
	int found = 0;

	for (uint32_t g = b ? b->gen : 1; b && g <= hist_last_gen(h); g++) {
		int64_t t = gen_time(h, g);

		if (t >= 0 && t <= time_us) {
			*gen = g;
			found = 1;
		}
	}
	if (found)
		return 0;
	hist_time_format(time_us, want);
	if (b)
		hist_time_format(gen_time(h, b->gen), first);
	hist_err(err, errlen, 0, "history %s: no generation at or before %s (the history starts at %s)",
		 h->dir, want, b ? first : "nothing: it is empty");
	return -ENOENT;
}

/* Refuse early when OUT's filesystem cannot hold the result; a base on
 * the history's own filesystem may be a reflink, so only the overlays
 * count there. */
static int check_room(const struct hist *h, uint32_t gen, const char *out, char *err, size_t errlen)
{
	const struct hist_rec *b = hist_base(h);
	char *copy = strdup(out), *dir = copy ? dirname(copy) : NULL;
	uint64_t need = 0, avail;
	struct statvfs sv;
	struct stat ds, hs;
	char path[4096];

	if (!dir || statvfs(dir, &sv) || stat(dir, &ds) || fstat(h->dfd, &hs)) {
		hist_err(err, errlen, 0, "restore %s: %s", out, strerror(copy ? errno : ENOMEM));
		free(copy);
		return copy ? -errno : -ENOMEM;
	}
	free(copy);
	for (uint32_t g = b->gen + 1; g <= gen; g++)
		need += hist_overlay(h, g)->alloc;
	hist_path(h, b->file, path, sizeof(path));
	if (ds.st_dev != hs.st_dev)
		need += hist_disk_bytes(path);
	avail = (uint64_t)sv.f_bavail * sv.f_frsize;
	if (need <= avail)
		return 0;
	hist_err(err, errlen, 0, "restore %s: no room: generation %u needs %llu MiB, the filesystem has %llu MiB free",
		 out, gen, (unsigned long long)(need >> 20), (unsigned long long)(avail >> 20));
	return -ENOSPC;
}

/* ".NAME.restore.tmp" next to OUT. */
static void tmp_name(const char *out, char *buf, size_t len)
{
	const char *slash = strrchr(out, '/');
	int dirlen = slash ? (int)(slash - out + 1) : 0;

	snprintf(buf, len, "%.*s.%s.restore.tmp", dirlen, out, slash ? slash + 1 : out);
}

/* OUT must not be inside the history: a rebuild never touches it. */
static int out_inside(const struct hist *h, const char *out)
{
	char *copy = strdup(out), *rdir = copy ? realpath(dirname(copy), NULL) : NULL;
	char *rh = realpath(h->dir, NULL);
	int inside = rdir && rh && !strcmp(rdir, rh);

	free(copy);
	free(rdir);
	free(rh);
	return inside;
}

/* Give the finished file its name without replacing anything. */
static int publish(const char *tmp, const char *out, char *err, size_t errlen)
{
	char *copy = strdup(out);
	int dfd, rc = 0;

	if (link(tmp, out)) {
		rc = -errno;
		hist_err(err, errlen, 0, "restore %s: %s", out, strerror(errno));
	}
	unlink(tmp);
	dfd = copy ? open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
	if (dfd >= 0) {
		fsync(dfd);
		close(dfd);
	}
	free(copy);
	return rc;
}

int hist_restore(struct hist *h, uint32_t gen, const char *out, char *err, size_t errlen)
{
	char tmp[PATH_MAX + 32], e2[HIST_ERRLEN];
	struct stat st;
	int rc;

	if (!lstat(out, &st)) {
		hist_err(err, errlen, 0, "restore %s: exists; remove it or choose another name", out);
		return -EEXIST;
	}
	if (out_inside(h, out)) {
		hist_err(err, errlen, 0, "restore %s: inside the history %s; write it elsewhere", out, h->dir);
		return -EINVAL;
	}
	rc = check_chain(h, gen, err, errlen);
	if (!rc)
		rc = check_room(h, gen, out, err, errlen);
	if (rc)
		return rc;
	tmp_name(out, tmp, sizeof(tmp));
	unlink(tmp);
	rc = hist_build(h, gen, tmp, e2, sizeof(e2));
	if (rc == -ENOSPC)
		hist_err(err, errlen, 0, "restore %s: no room: %s", out, e2);
	else if (rc)
		hist_err(err, errlen, 0, "restore %s: %s", out, e2);
	return rc ? rc : publish(tmp, out, err, errlen);
}
