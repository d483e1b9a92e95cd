/* renew-img commit / renew: the same job the daemon runs on a live disk
 * (tapdisk-glue/renew-job.c and the renew driver), run in this process on
 * an image nobody else has open. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "renew-img.h"
#include "renew-job.h"
#include "scheduler.h"
#include "vbd.h"

struct run {
	int done;
	int err;
	char why[512];
	int progress_timer;
	int tty;
	td_vbd_t *vbd;
};

/* The job ended: leave the loop. */
static void run_done(td_vbd_t *vbd, int err, const char *why, void *arg)
{
	struct run *r = arg;

	r->done = 1;
	r->err = err;
	snprintf(r->why, sizeof(r->why), "%s", why ? why : "");
	sched_stop();
}

/* "42.0% 380.2 MB/s ETA 12s" on the terminal, twice a second. */
static void run_progress(void *arg)
{
	struct run *r = arg;
	struct renew_status st;

	if (!tapdisk_renew_status(r->vbd, &st)) {
		if (st.state == RENEW_SAVING_BASE || st.state == RENEW_RECORDING)
			fprintf(stderr, "\r%s %5.1f%%                    ", st.state_name, st.history_percent);
		else if (st.eta_s < 0)
			fprintf(stderr, "\r%5.1f%%  %7.1f MB/s  ETA ?   ", st.percent, st.mb_per_s);
		else
			fprintf(stderr, "\r%5.1f%%  %7.1f MB/s  ETA %.0fs   ", st.percent, st.mb_per_s, st.eta_s);
	}
	r->progress_timer = sched_timer(500, run_progress, r);
}

/* Run one commit or renew of `path` to its end. */
static int run_one(const char *path, const struct renew_opts *opts, int quiet)
{
	struct run r = { 0 };
	char err[1024] = "", *params = NULL;
	struct renew_status st = { 0 };
	int rc;

	if (sched_init())
		return img_fail("%s: %s: cannot set up the event loop", opts->commit_only ? "commit" : "renew", path);
	r.vbd = tapdisk_vbd_create(0);
	if (!r.vbd || asprintf(&params, "renew:%s", path) < 0) {
		sched_fini();
		return img_fail("renew: out of memory");
	}
	if (tapdisk_vbd_open(r.vbd, params, 0, err, sizeof(err))) {
		rc = img_fail("%s: %s", opts->commit_only ? "commit" : "renew", err);
		goto out;
	}
	if (tapdisk_renew_start(r.vbd, opts, run_done, &r, err, sizeof(err))) {
		rc = img_fail("%s", err);
		goto out;
	}
	r.tty = !quiet && isatty(2);
	if (r.tty)
		r.progress_timer = sched_timer(500, run_progress, &r);
	sched_run();
	if (r.tty)
		fprintf(stderr, "\r%60s\r", "");
	if (!r.done) {
		rc = img_fail("%s: %s: interrupted", opts->commit_only ? "commit" : "renew", path);
		goto out;
	}
	if (r.err) {
		rc = img_fail("%s", r.why);
		goto out;
	}
	if (!quiet && !tapdisk_renew_status(r.vbd, &st))
		printf("%s: %s: %llu bytes committed into the parent in %.2fs%s\n",
		       opts->commit_only ? "commit" : "renew", path, (unsigned long long)st.bytes_copied,
		       st.elapsed_s, opts->commit_only ? "" : "; the overlay is fresh");
	if (!quiet && st.history_dir && !opts->commit_only)
		printf("history: %s: generation %ld%s%s\n", st.history_dir, st.generation,
		       *st.why ? ": " : "", st.why);
	rc = 0;
out:
	if (r.progress_timer)
		sched_cancel_timer(r.progress_timer);
	tapdisk_renew_forget(r.vbd);
	tapdisk_vbd_close(r.vbd);
	tapdisk_vbd_free(r.vbd);
	td_aio_fini();
	sched_fini();
	free(params);
	return rc;
}

/* commit|renew [--force] [--keep-going] [--quiet] [--rate MB/s] [--history DIR] CHILD... */
static int cmd_renew_common(int argc, char **argv, int commit_only)
{
	struct renew_opts opts = { .commit_only = commit_only };
	int keep_going = 0, quiet = 0, failed = 0, nfiles = 0;
	char **files = calloc((size_t)argc, sizeof(char *));

	if (!files)
		return img_fail("out of memory");
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];

		if (!strcmp(a, "--force")) {
			opts.force = 1;
		} else if (!strcmp(a, "--keep-going")) {
			keep_going = 1;
		} else if (!strcmp(a, "--quiet") || !strcmp(a, "-q")) {
			quiet = 1;
		} else if (!strcmp(a, "--rate") && i + 1 < argc) {
			char *end;
			double mb = strtod(argv[++i], &end);

			if (*end || mb <= 0) {
				free(files);
				fprintf(stderr, "renew-img: %s: --rate wants MB/s > 0, not '%s'\n", argv[0], argv[i]);
				return img_usage(argv[0]);
			}
			opts.rate_bps = (uint64_t)(mb * 1048576.0);
		} else if (!strcmp(a, "--history") && i + 1 < argc) {
			opts.history_dir = argv[++i];
		} else if (a[0] == '-' && a[1]) {
			free(files);
			fprintf(stderr, "renew-img: %s: unknown option '%s'\n", argv[0], a);
			return img_usage(argv[0]);
		} else {
			files[nfiles++] = argv[i];
		}
	}
	if (!nfiles) {
		free(files);
		return img_usage(argv[0]);
	}
	for (int i = 0; i < nfiles; i++) {
		if (run_one(files[i], &opts, quiet)) {
			failed++;
			if (!keep_going)
				break;
		}
	}
	free(files);
	return failed ? IMG_EXIT_FAIL : 0;
}

int img_cmd_commit(int argc, char **argv)
{
	return cmd_renew_common(argc, argv, 1);
}

int img_cmd_renew(int argc, char **argv)
{
	return cmd_renew_common(argc, argv, 0);
}
