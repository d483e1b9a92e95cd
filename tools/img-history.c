/* renew-img history / restore: look at a history directory (the overlays
 * renews kept, lib/history), start one offline, prune it, and rebuild the
 * base as of any generation. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "history.h"
#include "renew-img.h"
#include "tapdisk.h"

#define MiB(x) ((double)(x) / 1048576.0)

/* Open DIR; writers wait for nobody: a running renew makes them fail
 * (naming it), readers fall back to reading without the lock. */
static int open_history(struct hist *h, const char *dir, int flags, const char *op)
{
	char err[HIST_ERRLEN];
	int rc;

	hist_set_fault_hook(td_fault);
	rc = hist_open(h, dir, flags, err, sizeof(err));
	if (!rc && h->lockfd >= 0)
		rc = hist_recover(h, NULL, err, sizeof(err));
	if (rc) {
		hist_close(h);
		return img_fail("%s: %s", op, err);
	}
	return 0;
}

/* One generation as the listing shows it. */
struct gen_view {
	uint32_t gen;
	const char *kind;             /* base, overlay, pruned */
	const struct hist_rec *r;     /* its record (the base's for the base) */
	int64_t time_us;
	int present;
	uint64_t disk_bytes;
};

/* Describe generation `g` of the history. */
static void view_of(const struct hist *h, uint32_t g, struct gen_view *v)
{
	const struct hist_rec *b = hist_base(h), *o = hist_overlay(h, g);
	char path[4096];

	memset(v, 0, sizeof(*v));
	v->gen = g;
	v->r = g == b->gen ? b : o;
	v->kind = g == b->gen ? "base" : g < b->gen ? "pruned" : "overlay";
	v->time_us = o ? o->time_us : v->r ? v->r->time_us : 0;
	if (!v->r || g < b->gen)
		return;
	hist_path(h, v->r->file, path, sizeof(path));
	v->present = !access(path, R_OK);
	v->disk_bytes = v->present ? hist_disk_bytes(path) : 0;
}

/* The .pending files a renew is recording (or a crash left). */
static void print_pending(const struct hist *h, FILE *f)
{
	char name[64], path[4096];

	snprintf(name, sizeof(name), "%u.vhd.pending", hist_last_gen(h) + 1);
	hist_path(h, name, path, sizeof(path));
	if (!access(path, F_OK))
		fprintf(f, "pending: %s (a renew is recording it; the next history command completes it)\n", name);
}

/* The listing for people: one line a generation, then the totals. */
static void list_text(const struct hist *h)
{
	const struct hist_rec *b = hist_base(h);
	uint64_t total = 0, overlays = 0;
	char when[40], disk[4096], base[4096];

	hist_resolve(h, b->disk, disk, sizeof(disk));
	hist_resolve(h, b->base, base, sizeof(base));
	printf("history %s: generations %u..%u of %s (base %s)\n", h->dir, b->gen, hist_last_gen(h),
	       *disk ? disk : "?", base);
	printf("%-5s %-27s %-8s %11s %11s  %-12s  %s\n", "GEN", "TIME (UTC)", "KIND", "ALLOCATED",
	       "ON DISK", "SHA256", "FILE");
	for (uint32_t g = b->gen; g <= hist_last_gen(h); g++) {
		struct gen_view v;

		view_of(h, g, &v);
		hist_time_format(v.time_us, when);
		if (!v.r) {
			printf("%-5u %-27s %-8s missing from the log\n", g, "?", "?");
			continue;
		}
		printf("%-5u %-27s %-8s %9.1fMi %9.1fMi  %.12s  %s%s\n", g, when, v.kind, MiB(v.r->alloc),
		       MiB(v.disk_bytes), v.r->sha256, v.r->file, v.present ? "" : " (MISSING)");
		total += v.disk_bytes;
		if (g != b->gen)
			overlays += v.disk_bytes;
	}
	if (b->gen > 0)
		printf("generations 0..%u were pruned (folded into %s)\n", b->gen - 1, b->file);
	printf("on disk: %.1f MiB (saved base %.1f MiB, overlays %.1f MiB)\n", MiB(total),
	       MiB(total - overlays), MiB(overlays));
	if (h->log.torn)
		printf("log: a torn last record (an interrupted append) is ignored\n");
	if (h->log.bad_lines)
		printf("log: %d corrupt record(s), the first on line %d: skipped\n", h->log.bad_lines,
		       h->log.first_bad_line);
	if (h->lockfd < 0)
		printf("note: a renew or prune holds the history; its work in progress is not shown\n");
	print_pending(h, stdout);
}

/* One generation as a JSON object. */
static void json_gen(const struct hist *h, uint32_t g, int first)
{
	struct gen_view v;
	char when[40];

	view_of(h, g, &v);
	hist_time_format(v.time_us, when);
	printf("%s\n    {\"generation\": %u, \"kind\": \"%s\"", first ? "" : ",", g, v.r ? v.kind : "missing");
	if (v.r)
		printf(", \"time\": \"%s\", \"time_us\": %lld, \"file\": \"%s\", \"present\": %s, "
		       "\"allocated_bytes\": %llu, \"data_bytes\": %llu, \"file_bytes\": %llu, "
		       "\"disk_bytes\": %llu, \"sha256\": \"%s\", \"uuid\": \"%s\", \"parent_uuid\": \"%s\", "
		       "\"next_uuid\": \"%s\"", when, (long long)v.time_us, v.r->file,
		       v.present ? "true" : "false", (unsigned long long)v.r->alloc,
		       (unsigned long long)v.r->data, (unsigned long long)v.r->size,
		       (unsigned long long)v.disk_bytes, v.r->sha256, v.r->uuid, v.r->parent, v.r->next);
	printf("}");
}

/* The listing for programs. */
static void list_json(const struct hist *h)
{
	const struct hist_rec *b = hist_base(h);
	char disk[4096], base[4096];
	uint64_t total = 0;

	hist_resolve(h, b->disk, disk, sizeof(disk));
	hist_resolve(h, b->base, base, sizeof(base));
	printf("{\"dir\": ");
	img_json_str(stdout, h->dir);
	printf(", \"disk\": ");
	img_json_str(stdout, disk);
	printf(", \"base\": ");
	img_json_str(stdout, base);
	for (uint32_t g = b->gen; g <= hist_last_gen(h); g++) {
		struct gen_view v;

		view_of(h, g, &v);
		total += v.disk_bytes;
	}
	printf(", \"base_generation\": %u, \"last_generation\": %u, \"disk_bytes\": %llu, "
	       "\"torn_tail\": %s, \"corrupt_records\": %d, \"locked\": %s, \"generations\": [",
	       b->gen, hist_last_gen(h), (unsigned long long)total, h->log.torn ? "true" : "false",
	       h->log.bad_lines, h->lockfd < 0 ? "true" : "false");
	for (uint32_t g = b->gen; g <= hist_last_gen(h); g++)
		json_gen(h, g, g == b->gen);
	printf("\n  ]}\n");
}

/* history DIR --init BASE: generation 0, offline. */
static int history_init(const char *dir, const char *base)
{
	char err[HIST_ERRLEN];
	struct hist h;
	int rc;

	if (open_history(&h, dir, HIST_CREATE | HIST_WRITE, "history"))
		return IMG_EXIT_FAIL;
	rc = hist_init(&h, base, NULL, NULL, err, sizeof(err));
	if (rc)
		rc = img_fail("history: %s", err);
	else
		printf("history %s: generation 0 saved from %s (%.1f MiB on disk)\n", dir, base,
		       MiB(hist_base(&h)->alloc));
	hist_close(&h);
	return rc;
}

/* history DIR --prune-before K */
static int history_prune(const char *dir, const char *k)
{
	char err[HIST_ERRLEN], *end;
	unsigned long before = strtoul(k, &end, 10);
	uint32_t old;
	struct hist h;
	int rc, folded;

	if (*end || !*k || before > UINT32_MAX) {
		fprintf(stderr, "renew-img: history: --prune-before wants a generation number, not '%s'\n", k);
		return img_usage("history");
	}
	if (open_history(&h, dir, HIST_WRITE, "history"))
		return IMG_EXIT_FAIL;
	old = hist_base(&h) ? hist_base(&h)->gen : 0;
	rc = hist_prune(&h, (uint32_t)before, &folded, err, sizeof(err));
	if (rc)
		rc = img_fail("history: %s", err);
	else if (!folded)
		printf("history %s: nothing to prune: the history starts at generation %u\n", dir, old);
	else
		printf("history %s: generations %u..%lu folded into the base; it holds generations %lu..%u\n",
		       dir, old, before - 1, before - 1, hist_last_gen(&h));
	hist_close(&h);
	return rc;
}

/* history DIR [--json] | DIR --init BASE | DIR --prune-before K */
int img_cmd_history(int argc, char **argv)
{
	const char *dir = NULL, *init = NULL, *prune = NULL;
	int json = 0, rc;
	struct hist h;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--json"))
			json = 1;
		else if (!strcmp(argv[i], "--init") && i + 1 < argc)
			init = argv[++i];
		else if (!strcmp(argv[i], "--prune-before") && i + 1 < argc)
			prune = argv[++i];
		else if (argv[i][0] != '-' && !dir)
			dir = argv[i];
		else
			return img_usage("history");
	}
	if (!dir || (init && prune))
		return img_usage("history");
	if (init)
		return history_init(dir, init);
	if (prune)
		return history_prune(dir, prune);
	if (open_history(&h, dir, HIST_WRITE | HIST_TRY, "history"))
		return IMG_EXIT_FAIL;
	rc = 0;
	if (!hist_base(&h))
		rc = img_fail("history: %s: no saved base yet (empty history)", dir);
	else if (json)
		list_json(&h);
	else
		list_text(&h);
	hist_close(&h);
	return rc;
}

/* The generation restore asks for: --generation K, or --at TIME. */
static int pick_generation(const struct hist *h, const char *k, const char *at, uint32_t *gen)
{
	char err[HIST_ERRLEN], *end;
	int64_t us;

	if (k) {
		unsigned long v = strtoul(k, &end, 10);

		if (*end || !*k || v > UINT32_MAX) {
			fprintf(stderr, "renew-img: restore: --generation wants a number, not '%s'\n", k);
			return IMG_EXIT_USAGE;
		}
		*gen = (uint32_t)v;
		return 0;
	}
	if (hist_time_parse(at, &us)) {
		fprintf(stderr, "renew-img: restore: --at wants a UTC time like 2025-01-02T03:04:05Z "
			"(or @SECONDS), not '%s'\n", at);
		return IMG_EXIT_USAGE;
	}
	if (hist_gen_at(h, us, gen, err, sizeof(err)))
		return img_fail("restore: %s", err);
	return 0;
}

/* restore DIR --generation K|--at TIME OUT */
int img_cmd_restore(int argc, char **argv)
{
	const char *dir = NULL, *out = NULL, *k = NULL, *at = NULL;
	char err[HIST_ERRLEN], when[40];
	struct hist h;
	uint32_t gen = 0;
	int rc;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--generation") && i + 1 < argc)
			k = argv[++i];
		else if (!strcmp(argv[i], "--at") && i + 1 < argc)
			at = argv[++i];
		else if (argv[i][0] != '-' && !dir)
			dir = argv[i];
		else if (argv[i][0] != '-' && !out)
			out = argv[i];
		else
			return img_usage("restore");
	}
	if (!dir || !out || !k == !at)
		return img_usage("restore");
	if (open_history(&h, dir, HIST_WRITE | HIST_TRY, "restore"))
		return IMG_EXIT_FAIL;
	rc = pick_generation(&h, k, at, &gen);
	if (rc == IMG_EXIT_USAGE)
		rc = img_usage("restore");
	if (!rc && hist_restore(&h, gen, out, err, sizeof(err)))
		rc = img_fail("restore: %s", err);
	if (!rc) {
		const struct hist_rec *r = hist_overlay(&h, gen);

		hist_time_format(r ? r->time_us : hist_base(&h)->time_us, when);
		printf("restore: %s: the base as of generation %u (%s)\n", out, gen, when);
	}
	hist_close(&h);
	return rc;
}
