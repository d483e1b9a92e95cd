/* Pruning: the generations before K folded into the saved base, so a
 * history does not grow without end. The new base (the base as of K-1)
 * is built and made durable under a temporary name, renamed, then logged;
 * only then do the old base and overlays go. A crash before the record
 * leaves an unlogged base that recovery removes; after it, superseded
 * files that recovery removes. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "history.h"

/* The base record for the new base at generation `gen`. */
static int log_new_base(struct hist *h, uint32_t gen, const char *file, const char *sha,
			const char *path, char *err, size_t errlen)
{
	const struct hist_rec *old = hist_base(h), *at = hist_overlay(h, gen);
	struct hist_rec r = { .kind = HIST_BASE, .gen = gen };
	int rc;

	r.time_us = at ? at->time_us : hist_now_us();
	snprintf(r.file, sizeof(r.file), "%s", file);
	snprintf(r.fmt, sizeof(r.fmt), "%s", old->fmt);
	snprintf(r.uuid, sizeof(r.uuid), "%s", old->uuid);
	strcpy(r.parent, "-");
	snprintf(r.next, sizeof(r.next), "%s", at ? at->next : "-");
	snprintf(r.sha256, sizeof(r.sha256), "%s", sha);
	r.alloc = hist_disk_bytes(path);
	r.data = r.size = old->size;
	r.disk = strdup(at && at->disk ? at->disk : old->disk ? old->disk : "");
	r.base = strdup(old->base ? old->base : "");
	rc = hist_append(h, &r, err, errlen);
	hist_rec_free(&r);
	return rc;
}

int hist_prune(struct hist *h, uint32_t before, int *folded, char *err, size_t errlen)
{
	char tmp[4096], path[4096], name[64], tname[80], sha[65], e2[HIST_ERRLEN] = "";
	const struct hist_rec *b;
	uint32_t target = before ? before - 1 : 0, old_gen;
	int rc;

	*folded = 0;
	if (h->lockfd < 0) {
		hist_err(err, errlen, 0, "history %s: prune needs the lock", h->dir);
		return -EBUSY;
	}
	rc = hist_recover(h, NULL, err, errlen);
	if (rc)
		return rc;
	b = hist_base(h);
	if (!b) {
		hist_err(err, errlen, 0, "history %s: no saved base", h->dir);
		return -ENOENT;
	}
	if (target <= b->gen)
		return 0;
	if (target > hist_last_gen(h)) {
		hist_err(err, errlen, 0, "history %s: prune before %u: generation %u does not exist (the "
			 "history ends at generation %u)", h->dir, before, target, hist_last_gen(h));
		return -ENOENT;
	}
	old_gen = b->gen;
	snprintf(name, sizeof(name), "%u.base", target);
	snprintf(tname, sizeof(tname), ".%u.base.tmp", target);
	hist_path(h, tname, tmp, sizeof(tmp));
	hist_path(h, name, path, sizeof(path));
	rc = hist_build(h, target, tmp, e2, sizeof(e2));
	if (!rc)
		rc = hist_sha256_file(tmp, sha, NULL, e2, sizeof(e2));
	if (!rc && rename(tmp, path))
		rc = hist_err(e2, sizeof(e2), -errno, "rename %s: %s", tmp, strerror(errno));
	if (!rc && !(rc = hist_sync_dir(h, e2, sizeof(e2))))
		rc = hist_fault("history.prune");
	if (!rc)
		rc = log_new_base(h, target, name, sha, path, e2, sizeof(e2));
	if (!rc)
		rc = hist_fault("history.prune.clean");
	if (!rc)
		rc = hist_recover(h, NULL, e2, sizeof(e2));  /* removes what the new base supersedes */
	if (rc) {
		hist_err(err, errlen, 0, "history %s: prune before %u: %s", h->dir, before, e2[0] ? e2 : strerror(-rc));
		return rc;
	}
	*folded = (int)(target - old_gen);
	return 0;
}
