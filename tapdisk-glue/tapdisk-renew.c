/* tapdisk-renew: the daemon. It serves vbds over NBD and takes orders on
 * its control socket RUNDIR/ctl<pid>.
 *
 *   tapdisk-renew [-D] [--poll-max-us N]
 *                             wait for tap-ctl-renew (-D: detach, print the pid)
 *   tapdisk-renew --serve TYPE:PATH --socket SOCK [--read-only] [-D] [--poll-max-us N]
 *                             export one disk (minor 0) at SOCK
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>
#include "control.h"
#include "nbd-server.h"
#include "renew-job.h"
#include "scheduler.h"
#include "vbd.h"

#define DRAIN_MS 30000
#define POLL_MAX_US_LIMIT 10000

static int sig_id = -1, sig_fd = -1;
static int draining, drain_timer;

/* Print the usage on `out`. */
static void usage(FILE *out)
{
	fprintf(out,
		"usage: tapdisk-renew [-D]\n"
		"       tapdisk-renew --serve TYPE:PATH --socket SOCKET [--read-only] [-D]\n"
		"  -D, --detach     run in the background; print the daemon's pid once it listens\n"
		"  --serve T:PATH   open the disk (aio:, renew:, vhd:) as minor 0\n"
		"  --socket PATH    and serve it over NBD on this unix socket\n"
		"  --read-only      open it read-only\n"
		"  --poll-max-us N  poll for events up to N us before sleeping, 0 never\n"
		"                   (default $RENEW_POLL_MAX_US, else %d; at most %d)\n"
		"The control socket is $RENEW_RUNDIR/ctl<pid> (default /run/blktap-control).\n",
		SCHED_POLL_MAX_US_DEFAULT, POLL_MAX_US_LIMIT);
}

/* Set the polling window from `text` (where it came from is `what`). */
static int set_poll_max(const char *what, const char *text)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(text, &end, 10);
	if (!*text || *end || errno || v > POLL_MAX_US_LIMIT || text[0] == '-') {
		fprintf(stderr, "tapdisk-renew: %s: '%s' is not a number of microseconds from 0 to %d\n",
			what, text, POLL_MAX_US_LIMIT);
		usage(stderr);
		return -1;
	}
	sched_set_poll_max_us((unsigned int)v);
	return 0;
}

/* Every vbd paused (or the drain took too long): leave the loop. */
static void drain_done(void *arg)
{
	drain_timer = 0;
	sched_stop();
}

/* One more vbd has quiesced; stop once all have. */
static void vbd_quiesced(td_vbd_t *vbd, void *arg)
{
	struct list_head *p;

	list_for_each(p, tapdisk_vbd_list()) {
		td_vbd_t *v = list_entry(p, td_vbd_t, entry);

		if (v->state == VBD_PAUSING)
			return;
	}
	/* a timer, so the replies of the last requests go out first */
	if (drain_timer)
		sched_cancel_timer(drain_timer);
	drain_timer = sched_timer(0, drain_done, NULL);
}

/* SIGTERM/SIGINT: finish what is in flight, then stop; twice: stop now. */
static void on_signal(int fd, int events, void *arg)
{
	struct signalfd_siginfo si;
	struct list_head *p, *n;

	if (read(fd, &si, sizeof(si)) != sizeof(si))
		return;
	if (draining++) {
		tlog(TLOG_INFO, "signal %u again: stopping now", si.ssi_signo);
		sched_stop();
		return;
	}
	tlog(TLOG_INFO, "signal %u: draining requests in flight, then exiting", si.ssi_signo);
	drain_timer = sched_timer(DRAIN_MS, drain_done, NULL);
	list_for_each_safe(p, n, tapdisk_vbd_list()) {
		td_vbd_t *vbd = list_entry(p, td_vbd_t, entry);

		if (vbd->state == VBD_RUNNING || vbd->state == VBD_PAUSING)
			tapdisk_vbd_hold(vbd, vbd_quiesced, NULL);
	}
	vbd_quiesced(NULL, NULL);
}

/* Route SIGTERM and SIGINT through the event loop; ignore SIGPIPE. */
static int setup_signals(void)
{
	sigset_t set;

	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	if (sigprocmask(SIG_BLOCK, &set, NULL) < 0) {
		EPRINTF("sigprocmask: %m");
		return -errno;
	}
	sig_fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	if (sig_fd < 0) {
		EPRINTF("signalfd: %m");
		return -errno;
	}
	sig_id = sched_register_fd(sig_fd, SCHED_READ, on_signal, NULL);
	return sig_id < 0 ? sig_id : 0;
}

/* Close every export and vbd, then the control socket and the loop. */
static void shutdown_all(void)
{
	struct list_head *p, *n;

	list_for_each_safe(p, n, tapdisk_vbd_list()) {
		td_vbd_t *vbd = list_entry(p, td_vbd_t, entry);
		struct renew_status st;

		/* say so: an admin who stops the daemon mid-renew must not take
		 * the silence for a finished renew */
		if (tapdisk_renew_running(vbd) && !tapdisk_renew_status(vbd, &st))
			tlog(TLOG_WARN, "minor %d (%s): %s", vbd->minor, vbd->params,
			     st.state == RENEW_RECORDING || st.state == RENEW_REOPENING ?
			     "renew stopped after its swap: the fresh overlay is the disk; a history "
			     "record left pending is completed by the next history operation" :
			     "renew abandoned before its swap: the old overlay is still the disk and "
			     "nothing is lost; run the renew again");
		tapdisk_nbd_unexport(vbd);
		tapdisk_vbd_close(vbd);
		tapdisk_vbd_free(vbd);
	}
	tapdisk_control_close();
	tapdisk_nbd_fini();
	if (sig_id > 0)
		sched_unregister(sig_id);
	if (sig_fd >= 0)
		close(sig_fd);
	td_aio_fini();
	sched_fini();
}

/* Open the disk as minor 0 and export it at `sock`. */
static int serve_one(const char *params, const char *sock, int ro, char *err, size_t errlen)
{
	td_vbd_t *vbd = tapdisk_vbd_create(0);
	int r;

	if (!vbd) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	r = tapdisk_vbd_open(vbd, params, ro ? TD_OPEN_RDONLY : 0, err, errlen);
	if (r == 0)
		r = tapdisk_nbd_export(vbd, sock, err, errlen);
	return r;
}

/* Fork: the parent waits on `pipefd` for the child's word, prints the
 * child's pid (or its error) and exits. Returns in the child only. */
static int detach(int pipefd[2])
{
	pid_t pid;

	if (pipe2(pipefd, O_CLOEXEC) < 0) {
		perror("tapdisk-renew: pipe");
		return -1;
	}
	fflush(stdout);
	pid = fork();
	if (pid < 0) {
		perror("tapdisk-renew: fork");
		return -1;
	}
	if (pid > 0) {
		char msg[1024];
		ssize_t n;

		close(pipefd[1]);
		n = read(pipefd[0], msg, sizeof(msg) - 1);
		if (n == 1 && msg[0] == '\n') {
			printf("%d\n", (int)pid);
			exit(0);
		}
		if (n > 0) {
			msg[n] = '\0';
			fprintf(stderr, "tapdisk-renew: %s\n", msg);
		} else {
			fprintf(stderr, "tapdisk-renew: the daemon died while starting\n");
		}
		exit(1);
	}
	close(pipefd[0]);
	setsid();
	return 0;
}

/* The detached daemon is ready: release the parent and drop stdio. */
static void detach_done(int fd, const char *err)
{
	int null = open("/dev/null", O_RDWR | O_CLOEXEC);

	ssize_t n;

	/* if the parent is gone there is nobody to tell: ignore the result */
	n = err ? write(fd, err, strlen(err)) : write(fd, "\n", 1);
	(void)n;
	close(fd);
	if (null >= 0) {
		dup2(null, 0);
		dup2(null, 1);
		dup2(null, 2);
		close(null);
	}
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "detach", no_argument, NULL, 'D' },
		{ "serve", required_argument, NULL, 's' },
		{ "socket", required_argument, NULL, 'S' },
		{ "read-only", no_argument, NULL, 'r' },
		{ "poll-max-us", required_argument, NULL, 'P' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *serve = NULL, *sock = NULL;
	int daemonize = 0, ro = 0, c, pipefd[2] = { -1, -1 };
	char err[512] = "";
	const char *env = getenv("RENEW_POLL_MAX_US");

	if (env && set_poll_max("RENEW_POLL_MAX_US", env) < 0)
		return 2;
	env = getenv("RENEW_WRITE_BEHIND");
	if (env && strcmp(env, "0") && strcmp(env, "1")) {
		fprintf(stderr, "tapdisk-renew: RENEW_WRITE_BEHIND=%s: want 0 (off) or 1 (on)\n", env);
		return 2;
	}
	while ((c = getopt_long(argc, argv, "Dh", opts, NULL)) != -1) {
		switch (c) {
		case 'D': daemonize = 1; break;
		case 's': serve = optarg; break;
		case 'S': sock = optarg; break;
		case 'r': ro = 1; break;
		case 'P':
			if (set_poll_max("--poll-max-us", optarg) < 0)
				return 2;
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind < argc || (!serve != !sock)) {
		usage(stderr);
		return 2;
	}
	if (daemonize && detach(pipefd) < 0)
		return 1;
	if (daemonize)
		tlog_to_syslog("tapdisk-renew");
	umask(022);
	if (sched_init() < 0 || setup_signals() < 0) {
		snprintf(err, sizeof(err), "cannot set up the event loop: %s", tlog_last_error());
		goto fail;
	}
	if (tapdisk_control_open(err, sizeof(err)) < 0) {
		if (!serve)
			goto fail;
		tlog(TLOG_WARN, "no control socket (%s); serving anyway", err);
		err[0] = '\0';
	}
	if (serve && serve_one(serve, sock, ro, err, sizeof(err)) < 0)
		goto fail;
	if (daemonize)
		detach_done(pipefd[1], NULL);
	{
		const char *ctl = tapdisk_control_path();
		int has = ctl && *ctl;

		tlog(TLOG_INFO, "pid %d ready%s%s", (int)getpid(), has ? ", control socket " : "", has ? ctl : "");
	}
	sched_run();
	shutdown_all();
	tlog(TLOG_INFO, "exiting");
	return 0;
fail:
	if (daemonize)
		detach_done(pipefd[1], err);
	else
		fprintf(stderr, "tapdisk-renew: %s\n", err);
	shutdown_all();
	return 1;
}
