/* The history's log: one record a line, `key=value` fields separated by
 * spaces, ending in ` crc=XXXXXXXX` (zlib's crc32 of the bytes before it):
 *
 *   v=1 gen=3 kind=overlay time=2025-01-02T03:04:05.123456Z file=3.vhd fmt=vhd
 *   uuid=... parent=... next=... alloc=... data=... size=... sha256=...
 *   disk=/srv/vm1.vhd base=/srv/base.raw crc=1a2b3c4d
 *
 * Append-only: a record is written at the end and made durable. A crash
 * during an append leaves a torn last record (no newline, or a bad crc):
 * it is ignored, and cut off before the next append. A bad record with
 * good ones after it is corruption: it is skipped and reported. Paths are
 * %XX-escaped outside [A-Za-z0-9/._+,:@-]; unknown keys are ignored. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>
#include "history.h"

#define LOG_VERSION 1

void hist_time_format(int64_t us, char out[40])
{
	time_t secs = (time_t)(us / 1000000);
	struct tm tm;

	gmtime_r(&secs, &tm);
	strftime(out, 40, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(out + strlen(out), 40 - strlen(out), ".%06dZ", (int)(us % 1000000));
}

/* ".123" after the seconds, as microseconds; the end of what it read. */
static const char *parse_fraction(const char *p, int64_t *us)
{
	int64_t scale = 100000;

	*us = 0;
	if (*p != '.')
		return p;
	for (p++; *p >= '0' && *p <= '9'; p++) {
		*us += (*p - '0') * scale;
		scale /= 10;
	}
	return p;
}

int hist_time_parse(const char *s, int64_t *us)
{
	struct tm tm = { 0 };
	int64_t frac;
	const char *p;
	char *end;
	int n = 0;

	if (s[0] == '@') {
		long long secs = strtoll(s + 1, &end, 10);

		if (end == s + 1 || secs < 0)
			return -EINVAL;
		p = parse_fraction(end, &frac);
		if (*p)
			return -EINVAL;
		*us = (int64_t)secs * 1000000 + frac;
		return 0;
	}
	if (sscanf(s, "%4d-%2d-%2d%*1[T ]%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
		   &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &n) != 6 || !n)
		return -EINVAL;
	p = parse_fraction(s + n, &frac);
	if (*p == 'Z')
		p++;
	if (*p)
		return -EINVAL;
	tm.tm_year -= 1900;
	tm.tm_mon -= 1;
	*us = (int64_t)timegm(&tm) * 1000000 + frac;
	return 0;
}

int64_t hist_now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* A path as a field value: nothing that ends a field or a line. */
static void put_escaped(FILE *f, const char *s)
{
	for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
		if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
		    strchr("/._+,:@-", *p))
			fputc(*p, f);
		else
			fprintf(f, "%%%02X", *p);
	}
}

/* The reverse of put_escaped (malloc'd), or NULL on a bad escape. */
static char *unescape(const char *s, size_t len)
{
	char *out = malloc(len + 1), *o = out;

	if (!out)
		return NULL;
	for (size_t i = 0; i < len; i++) {
		unsigned v;

		if (s[i] != '%') {
			*o++ = s[i];
			continue;
		}
		if (i + 2 >= len || sscanf(s + i + 1, "%2x", &v) != 1 || !v) {
			free(out);
			return NULL;
		}
		*o++ = (char)v;
		i += 2;
	}
	*o = '\0';
	return out;
}

/* The record as a line with its crc (malloc'd). */
static char *rec_encode(const struct hist_rec *r)
{
	char *line = NULL, *out = NULL, when[40];
	size_t len = 0;
	FILE *f = open_memstream(&line, &len);

	if (!f)
		return NULL;
	hist_time_format(r->time_us, when);
	fprintf(f, "v=%d gen=%" PRIu32 " kind=%s time=%s file=%s fmt=%s uuid=%s parent=%s next=%s "
		   "alloc=%" PRIu64 " data=%" PRIu64 " size=%" PRIu64 " sha256=%s disk=",
		LOG_VERSION, r->gen, r->kind == HIST_BASE ? "base" : "overlay", when, r->file, r->fmt,
		r->uuid, r->parent, r->next, r->alloc, r->data, r->size, r->sha256);
	put_escaped(f, r->disk);
	fputs(" base=", f);
	put_escaped(f, r->base);
	if (fclose(f)) {
		free(line);
		return NULL;
	}
	if (asprintf(&out, "%s crc=%08lx\n", line, (unsigned long)crc32(0L, (const Bytef *)line, (uInt)len)) < 0)
		out = NULL;
	free(line);
	return out;
}

/* Copy a short field into a fixed buffer; -1 when it does not fit. */
static int field_copy(char *dst, size_t cap, const char *v, size_t len)
{
	if (len >= cap)
		return -1;
	memcpy(dst, v, len);
	dst[len] = '\0';
	return 0;
}

/* One `key=value` field into the record; unknown keys are ignored. */
static int rec_field(struct hist_rec *r, const char *k, size_t klen, const char *v, size_t vlen)
{
	char num[32];
	int64_t us;

#define KEY(s) (klen == sizeof(s) - 1 && !memcmp(k, s, klen))
	if (KEY("gen") || KEY("alloc") || KEY("data") || KEY("size") || KEY("v")) {
		char *end;
		unsigned long long x;

		if (field_copy(num, sizeof(num), v, vlen) || !vlen)
			return -1;
		x = strtoull(num, &end, 10);
		if (*end)
			return -1;
		if (KEY("gen"))
			r->gen = (uint32_t)x;
		else if (KEY("alloc"))
			r->alloc = x;
		else if (KEY("data"))
			r->data = x;
		else if (KEY("size"))
			r->size = x;
		else if (x != LOG_VERSION)
			return -1;
		return 0;
	}
	if (KEY("kind")) {
		r->kind = vlen == 4 && !memcmp(v, "base", 4) ? HIST_BASE
			: vlen == 7 && !memcmp(v, "overlay", 7) ? HIST_OVERLAY : 0;
		return r->kind ? 0 : -1;
	}
	if (KEY("time"))
		return field_copy(num, sizeof(num), v, vlen) || hist_time_parse(num, &us) ? -1
			: (r->time_us = us, 0);
	if (KEY("file"))
		return field_copy(r->file, sizeof(r->file), v, vlen) || !vlen || v[0] == '.' ||
		       memchr(v, '/', vlen) ? -1 : 0;
	if (KEY("fmt"))
		return field_copy(r->fmt, sizeof(r->fmt), v, vlen);
	if (KEY("uuid"))
		return field_copy(r->uuid, sizeof(r->uuid), v, vlen);
	if (KEY("parent"))
		return field_copy(r->parent, sizeof(r->parent), v, vlen);
	if (KEY("next"))
		return field_copy(r->next, sizeof(r->next), v, vlen);
	if (KEY("sha256"))
		return field_copy(r->sha256, sizeof(r->sha256), v, vlen) || vlen != 64 ? -1 : 0;
	if (KEY("disk"))
		return (r->disk = unescape(v, vlen)) ? 0 : -1;
	if (KEY("base"))
		return (r->base = unescape(v, vlen)) ? 0 : -1;
#undef KEY
	return 0;
}

/* A line (without its newline) into a record; -1 when it is not a good one. */
static int rec_decode(const char *line, size_t len, struct hist_rec *r)
{
	const char *crcp = NULL, *p = line, *end;
	unsigned long want;
	char hex[9];

	memset(r, 0, sizeof(*r));
	for (const char *q = line; q + 5 <= line + len; q++)
		if (!memcmp(q, " crc=", 5))
			crcp = q;
	if (!crcp || line + len - (crcp + 5) != 8)
		return -1;
	memcpy(hex, crcp + 5, 8);
	hex[8] = '\0';
	want = strtoul(hex, NULL, 16);
	if (crc32(0L, (const Bytef *)line, (uInt)(crcp - line)) != want)
		return -1;
	while (p < crcp) {
		const char *eq;

		end = memchr(p, ' ', (size_t)(crcp - p));
		if (!end)
			end = crcp;
		eq = memchr(p, '=', (size_t)(end - p));
		if (!eq || rec_field(r, p, (size_t)(eq - p), eq + 1, (size_t)(end - eq - 1))) {
			hist_rec_free(r);
			return -1;
		}
		p = end + 1;
	}
	if (!r->kind || !r->file[0] || !r->sha256[0]) {
		hist_rec_free(r);
		return -1;
	}
	return 0;
}

void hist_rec_free(struct hist_rec *r)
{
	free(r->disk);
	free(r->base);
	r->disk = r->base = NULL;
}

/* A deep copy of `r` at the end of the log's array. */
static int log_push(struct hist_log *log, const struct hist_rec *r)
{
	struct hist_rec *c;

	if (log->n == log->cap) {
		size_t cap = log->cap ? log->cap * 2 : 16;
		struct hist_rec *nr = realloc(log->r, cap * sizeof(*nr));

		if (!nr)
			return -ENOMEM;
		log->r = nr;
		log->cap = cap;
	}
	c = &log->r[log->n];
	*c = *r;
	c->disk = r->disk ? strdup(r->disk) : NULL;
	c->base = r->base ? strdup(r->base) : NULL;
	if ((r->disk && !c->disk) || (r->base && !c->base)) {
		hist_rec_free(c);
		return -ENOMEM;
	}
	log->n++;
	return 0;
}

void hist_log_free(struct hist_log *log)
{
	for (size_t i = 0; i < log->n; i++)
		hist_rec_free(&log->r[i]);
	free(log->r);
	memset(log, 0, sizeof(*log));
}

/* The whole file into memory (the log is one short line per renew). */
static int slurp(int fd, const char *path, char **buf, size_t *len, char *err, size_t errlen)
{
	struct stat st;
	ssize_t n;

	if (fstat(fd, &st)) {
		hist_err(err, errlen, 0, "read log %s: %s", path, strerror(errno));
		return -errno;
	}
	*buf = malloc((size_t)st.st_size + 1);
	if (!*buf) {
		hist_err(err, errlen, 0, "read log %s: out of memory", path);
		return -ENOMEM;
	}
	n = pread(fd, *buf, (size_t)st.st_size, 0);
	if (n < 0) {
		hist_err(err, errlen, 0, "read log %s: %s", path, strerror(errno));
		free(*buf);
		return -errno;
	}
	*len = (size_t)n;
	return 0;
}

int hist_log_read(int fd, const char *path, struct hist_log *log, char *err, size_t errlen)
{
	size_t len = 0, off = 0;
	int lineno = 0, rc, bad_after = 0, first_bad_after = 0;
	char *buf = NULL;

	memset(log, 0, sizeof(*log));
	rc = slurp(fd, path, &buf, &len, err, errlen);
	if (rc)
		return rc;
	log->file_end = len;
	while (off < len) {
		char *nl = memchr(buf + off, '\n', len - off);
		size_t end = nl ? (size_t)(nl - buf) : len;
		struct hist_rec r;

		lineno++;
		if (nl && !rec_decode(buf + off, end - off, &r)) {
			r.line = lineno;
			rc = log_push(log, &r);
			hist_rec_free(&r);
			if (rc) {
				hist_err(err, errlen, 0, "read log %s: out of memory", path);
				break;
			}
			/* the bad lines seen so far are followed by a good one: corrupt */
			log->bad_lines += bad_after;
			if (!log->first_bad_line && first_bad_after)
				log->first_bad_line = first_bad_after;
			bad_after = first_bad_after = 0;
			log->valid_end = end + 1;
		} else if (!bad_after++) {
			first_bad_after = lineno;
		}
		off = nl ? end + 1 : len;
	}
	log->torn = log->file_end > log->valid_end;
	free(buf);
	if (rc)
		hist_log_free(log);
	return rc;
}

int hist_log_append(int fd, const char *path, struct hist_log *log, const struct hist_rec *r,
		    char *err, size_t errlen)
{
	char *line = rec_encode(r);
	size_t len, half;
	int rc = 0;

	if (!line) {
		hist_err(err, errlen, 0, "append to log %s: out of memory", path);
		return -ENOMEM;
	}
	len = strlen(line);
	half = len / 2;
	if (log->file_end > log->valid_end && ftruncate(fd, (off_t)log->valid_end)) {
		rc = -errno;
		hist_err(err, errlen, 0, "append to log %s: cut the torn last record: %s", path, strerror(errno));
		goto out;
	}
	/* a crash test's torn record: half a line, then the kill */
	if (pwrite(fd, line, half, (off_t)log->valid_end) != (ssize_t)half ||
	    (rc = hist_fault("history.append.torn")) ||
	    pwrite(fd, line + half, len - half, (off_t)(log->valid_end + half)) != (ssize_t)(len - half) ||
	    fdatasync(fd)) {
		rc = rc ? rc : errno ? -errno : -EIO;
		hist_err(err, errlen, 0, "append to log %s: %s", path, strerror(-rc));
		log->file_end = log->valid_end + len;  /* maybe partly written */
		goto out;
	}
	log->valid_end += len;
	log->file_end = log->valid_end;
	log->torn = 0;
	rc = log_push(log, r);
	if (rc)
		hist_err(err, errlen, 0, "append to log %s: out of memory", path);
out:
	free(line);
	return rc;
}
