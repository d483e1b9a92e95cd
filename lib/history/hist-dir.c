/* The history directory: open and lock it, read its log, find records,
 * and put it back in order after a crash (the rules in history.h). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include "history.h"

void hist_path(const struct hist *h, const char *name, char *buf, size_t len)
{
	snprintf(buf, len, "%s/%s", h->dir, name);
}

/* "pid 123 (tapdisk-renew)" for whoever holds the lock file, for the error. */
static void lock_holder(int fd, char *out, size_t len)
{
	struct stat st;
	char line[256];
	FILE *f;

	out[0] = '\0';
	if (fstat(fd, &st) || !(f = fopen("/proc/locks", "re")))
		return;
	while (fgets(line, sizeof(line), f)) {
		unsigned int maj, min;
		unsigned long ino;
		char comm[64] = "?", cpath[64];
		FILE *cf;
		int pid;

		if (sscanf(line, "%*d: %*s %*s %*s %d %x:%x:%lu", &pid, &maj, &min, &ino) != 4 ||
		    ino != st.st_ino || makedev(maj, min) != st.st_dev)
			continue;
		snprintf(cpath, sizeof(cpath), "/proc/%d/comm", pid);
		if ((cf = fopen(cpath, "re"))) {
			if (fgets(comm, sizeof(comm), cf))
				comm[strcspn(comm, "\n")] = '\0';
			fclose(cf);
		}
		snprintf(out, len, " by pid %d (%s)", pid, comm);
		break;
	}
	fclose(f);
}

/* Make the directory when missing, and its entry durable. */
static int make_dir(const char *dir, char *err, size_t errlen)
{
	char *copy;
	int pfd;

	if (!mkdir(dir, 0700)) {
		copy = strdup(dir);
		pfd = copy ? open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
		if (pfd >= 0) {
			fsync(pfd);
			close(pfd);
		}
		free(copy);
		return 0;
	}
	if (errno == EEXIST)
		return 0;
	hist_err(err, errlen, 0, "history %s: create the directory: %s", dir, strerror(errno));
	return -errno;
}

/* The writers' lock: a renew, a prune, an init, a recovery at a time. */
static int take_lock(struct hist *h, int flags, char *err, size_t errlen)
{
	char path[4096], who[128];

	hist_path(h, "lock", path, sizeof(path));
	h->lockfd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (h->lockfd < 0) {
		hist_err(err, errlen, 0, "history %s: open %s: %s", h->dir, path, strerror(errno));
		return -errno;
	}
	if (!flock(h->lockfd, LOCK_EX | LOCK_NB))
		return 0;
	if (errno == EWOULDBLOCK && (flags & HIST_TRY)) {
		close(h->lockfd);
		h->lockfd = -1;
		return 0;
	}
	lock_holder(h->lockfd, who, sizeof(who));
	hist_err(err, errlen, 0, "history %s: in use%s (a renew, prune or init of this history is running)",
		 h->dir, who);
	return -EBUSY;
}

int hist_open(struct hist *h, const char *dir, int flags, char *err, size_t errlen)
{
	char path[4096];
	int rc;

	memset(h, 0, sizeof(*h));
	h->dfd = h->logfd = h->lockfd = -1;
	h->dir = strdup(dir);
	if (!h->dir) {
		hist_err(err, errlen, 0, "history %s: out of memory", dir);
		return -ENOMEM;
	}
	if ((flags & HIST_CREATE) && (rc = make_dir(dir, err, errlen)))
		goto fail;
	h->dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (h->dfd < 0) {
		rc = -errno;
		hist_err(err, errlen, 0, "history %s: %s", dir, strerror(errno));
		goto fail;
	}
	if ((flags & HIST_WRITE) && (rc = take_lock(h, flags, err, errlen)))
		goto fail;
	hist_path(h, "log", path, sizeof(path));
	h->logfd = open(path, (h->lockfd >= 0 ? O_RDWR : O_RDONLY) | O_CLOEXEC |
			      ((flags & HIST_CREATE) && h->lockfd >= 0 ? O_CREAT : 0), 0600);
	if (h->logfd < 0) {
		rc = -errno;
		if (errno == ENOENT)
			hist_err(err, errlen, 0, "history %s: not a history (no log): make one with "
				 "`renew-img history %s --init BASE` or a renew with --history", dir, dir);
		else
			hist_err(err, errlen, 0, "history %s: open %s: %s", dir, path, strerror(errno));
		goto fail;
	}
	rc = hist_log_read(h->logfd, path, &h->log, err, errlen);
	if (rc)
		goto fail;
	return 0;
fail:
	hist_close(h);
	return rc;
}

void hist_close(struct hist *h)
{
	if (h->logfd >= 0)
		close(h->logfd);
	if (h->lockfd >= 0)
		close(h->lockfd);
	if (h->dfd >= 0)
		close(h->dfd);
	hist_log_free(&h->log);
	free(h->dir);
	memset(h, 0, sizeof(*h));
	h->dfd = h->logfd = h->lockfd = -1;
}

const struct hist_rec *hist_base(const struct hist *h)
{
	for (size_t i = h->log.n; i-- > 0;)
		if (h->log.r[i].kind == HIST_BASE)
			return &h->log.r[i];
	return NULL;
}

const struct hist_rec *hist_overlay(const struct hist *h, uint32_t gen)
{
	for (size_t i = h->log.n; i-- > 0;)
		if (h->log.r[i].kind == HIST_OVERLAY && h->log.r[i].gen == gen)
			return &h->log.r[i];
	return NULL;
}

const struct hist_rec *hist_last(const struct hist *h)
{
	const struct hist_rec *last = NULL;

	for (size_t i = 0; i < h->log.n; i++) {
		const struct hist_rec *r = &h->log.r[i];

		if (!last || r->gen > last->gen || (r->gen == last->gen && r->kind == HIST_BASE))
			last = r;
	}
	return last;
}

uint32_t hist_last_gen(const struct hist *h)
{
	const struct hist_rec *r = hist_last(h);

	return r ? r->gen : 0;
}

/* The length of the longest run of whole components `from` and `to` share. */
static size_t common_dirs(const char *from, const char *to)
{
	size_t i = 0;

	while (from[i] && from[i] == to[i])
		i++;
	if (!from[i] && (to[i] == '/' || !to[i]))
		return i;
	while (i > 0 && from[i] != '/')
		i--;
	return i;
}

char *hist_rel(const struct hist *h, const char *path)
{
	char *to = path && *path ? realpath(path, NULL) : NULL, *from = realpath(h->dir, NULL);
	char *out = NULL;
	size_t common, len = 0;
	FILE *f;

	if (!to || !from || !(f = open_memstream(&out, &len))) {
		free(from);
		return to ? to : strdup(path ? path : "");
	}
	common = common_dirs(from, to);
	for (const char *p = from + common; *p; p++)
		if (*p == '/' && p[1])
			fputs("../", f);
	fputs(to + common + (to[common] == '/'), f);
	fclose(f);
	free(from);
	free(to);
	return out;
}

void hist_resolve(const struct hist *h, const char *recorded, char *buf, size_t len)
{
	if (!recorded || !*recorded || recorded[0] == '/')
		snprintf(buf, len, "%s", recorded ? recorded : "");
	else
		snprintf(buf, len, "%s/%s", h->dir, recorded);
}

int hist_append(struct hist *h, const struct hist_rec *r, char *err, size_t errlen)
{
	char path[4096];

	hist_path(h, "log", path, sizeof(path));
	return hist_log_append(h->logfd, path, &h->log, r, err, errlen);
}

int hist_sync_dir(const struct hist *h, char *err, size_t errlen)
{
	if (!fsync(h->dfd))
		return 0;
	hist_err(err, errlen, 0, "history %s: fsync the directory: %s", h->dir, strerror(errno));
	return -errno;
}

/* Remove a file of the directory; a missing one is fine. */
static int remove_name(struct hist *h, const char *name, char *err, size_t errlen)
{
	if (!unlinkat(h->dfd, name, 0) || errno == ENOENT)
		return 0;
	hist_err(err, errlen, 0, "history %s: remove %s: %s", h->dir, name, strerror(errno));
	return -errno;
}

/* Is the .pending overlay still the disk (its renew stopped before the
 * commit point)? Then the disk's path names it, or something else does. */
static int pending_in_use(const struct stat *pst, const char *disk)
{
	struct stat dst;

	if (disk && *disk && !stat(disk, &dst) && dst.st_dev == pst->st_dev && dst.st_ino == pst->st_ino)
		return 1;
	return pst->st_nlink > 1;
}

/* Finish or undo the .pending overlay of generation `gen`. */
static int recover_pending(struct hist *h, uint32_t gen, const char *disk, char *err, size_t errlen)
{
	char name[64], final[64];
	const struct hist_rec *b = hist_base(h);
	struct stat st;

	snprintf(name, sizeof(name), "%u.vhd.pending", gen);
	snprintf(final, sizeof(final), "%u.vhd", gen);
	if (fstatat(h->dfd, name, &st, 0))
		return 0;
	if (hist_overlay(h, gen)) {  /* logged: only the rename was left */
		if (!faccessat(h->dfd, final, F_OK, 0))
			return remove_name(h, name, err, errlen);
		if (renameat(h->dfd, name, h->dfd, final)) {
			hist_err(err, errlen, 0, "history %s: rename %s to %s: %s", h->dir, name, final, strerror(errno));
			return -errno;
		}
		return 0;
	}
	if (b && gen <= b->gen)
		return remove_name(h, name, err, errlen);
	if (!b || gen != hist_last_gen(h) + 1) {
		hist_err(err, errlen, 0, "history %s: %s does not follow the log (it ends at generation %u); "
			 "move it away to go on", h->dir, name, hist_last_gen(h));
		return -EINVAL;
	}
	if (pending_in_use(&st, disk))
		return remove_name(h, name, err, errlen);
	return hist_record(h, gen, disk, 0, NULL, err, errlen);
}

/* Is `name` "<digits><suffix>"? Its number in *gen. */
static int numbered(const char *name, const char *suffix, uint32_t *gen)
{
	char *end;
	unsigned long v;

	if (name[0] < '0' || name[0] > '9')
		return 0;
	v = strtoul(name, &end, 10);
	if (strcmp(end, suffix) || v > UINT32_MAX)
		return 0;
	*gen = (uint32_t)v;
	return 1;
}

/* Remove what a crash or a finished prune left; note the .pending ones. */
static int sweep(struct hist *h, uint32_t *pend, size_t *npend, size_t cap, char *err, size_t errlen)
{
	const struct hist_rec *b = hist_base(h);
	int dfd = dup(h->dfd), rc = 0;
	DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
	struct dirent *e;
	uint32_t g;

	if (!d) {
		hist_err(err, errlen, 0, "history %s: read the directory: %s", h->dir, strerror(errno));
		if (dfd >= 0)
			close(dfd);
		return -errno;
	}
	while (!rc && (e = readdir(d))) {
		size_t n = strlen(e->d_name);

		if (e->d_name[0] == '.' && n > 5 && !strcmp(e->d_name + n - 4, ".tmp"))
			rc = remove_name(h, e->d_name, err, errlen);
		else if (numbered(e->d_name, ".vhd.pending", &g) && *npend < cap)
			pend[(*npend)++] = g;
		else if (b && numbered(e->d_name, ".vhd", &g) && g <= b->gen)
			rc = remove_name(h, e->d_name, err, errlen);
		else if (b && numbered(e->d_name, ".base", &g) && strcmp(e->d_name, b->file))
			rc = remove_name(h, e->d_name, err, errlen);
	}
	closedir(d);
	return rc;
}

/* Oldest first: a later pending waits for an earlier one's record. */
static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

int hist_recover(struct hist *h, const char *disk, char *err, size_t errlen)
{
	const struct hist_rec *last = hist_last(h);
	uint32_t pend[16];
	size_t npend = 0;
	char *dk = NULL;
	int rc;
	char where[4096];

	if (h->lockfd < 0)
		return 0;
	if (h->log.torn) {
		if (ftruncate(h->logfd, (off_t)h->log.valid_end) || fdatasync(h->logfd)) {
			hist_err(err, errlen, 0, "history %s: cut the torn last record of the log: %s", h->dir,
				 strerror(errno));
			return -errno;
		}
		h->log.file_end = h->log.valid_end;
		h->log.torn = 0;
	}
	rc = sweep(h, pend, &npend, sizeof(pend) / sizeof(pend[0]), err, errlen);
	if (rc)
		return rc;
	if (!disk && last && last->disk && *last->disk) {
		hist_resolve(h, last->disk, where, sizeof(where));
		disk = dk = strdup(where);
	}
	qsort(pend, npend, sizeof(pend[0]), cmp_u32);
	for (size_t i = 0; !rc && i < npend; i++)
		rc = recover_pending(h, pend[i], disk, err, errlen);
	free(dk);
	return rc ? rc : hist_sync_dir(h, err, errlen);
}
