/* Image locks: the overlay a disk writes is locked exclusively, a parent
 * shared (flock), so two daemons never write one file.
 *
 * A killed daemon holds its locks until its last thread is gone, and a
 * thread inside a long system call outlives the main thread: deleting a
 * renewed-away overlay can take seconds on a filesystem with online
 * discard. A disk restarted right after such a crash would be refused for
 * a lock that is about to go. So when the holder is exiting (its main
 * thread already a zombie), the open waits for it, up to LOCK_EXIT_WAIT_MS;
 * a lock held by a running process is refused at once, naming it.
 *
 * Waiting is also what makes the restart safe: the kernel lets go of a
 * dead process's locks only after every I/O it had in flight has ended,
 * so no write of the old daemon lands under the new one. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>
#include "tapdisk.h"

#define LOCK_EXIT_WAIT_MS 10000
#define LOCK_POLL_MS      10
#define LOCK_UNSEEN_MS    100

/* Call `fn` with each lock /proc/locks lists on the file `st` describes
 * (ours aside: flock or another kind), until it returns nonzero. */
static void each_holder(const struct stat *st, int (*fn)(int pid, int is_flock, void *arg), void *arg)
{
	char line[256], type[16];
	unsigned maj, min;
	unsigned long long ino;
	int pid;
	FILE *f = fopen("/proc/locks", "re");

	if (!f)
		return;
	while (fgets(line, sizeof(line), f))
		/* a waiter's line ("1: -> FLOCK ...") does not parse: skipped */
		if (sscanf(line, "%*d: %15s %*s %*s %d %x:%x:%llu", type, &pid, &maj, &min, &ino) == 5 &&
		    makedev(maj, min) == st->st_dev && ino == (unsigned long long)st->st_ino &&
		    pid != getpid() && fn(pid, !strcmp(type, "FLOCK"), arg))
			break;
	fclose(f);
}

/* Keep the first flock holder's pid. */
static int first_flock(int pid, int is_flock, void *arg)
{
	if (is_flock)
		*(int *)arg = pid;
	return is_flock;
}

/* The pid holding a flock on `fd`'s file, or -1. */
static int lock_holder(int fd)
{
	struct stat st;
	int pid = -1;

	if (fstat(fd, &st) == 0)
		each_holder(&st, first_flock, &pid);
	return pid;
}

/* Is `pid`'s main thread a zombie, so the process is on its way out? */
static int exiting(int pid)
{
	char path[64], buf[512], *p;
	int dying = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	if (!(f = fopen(path, "re")))
		return 0;
	if (fgets(buf, sizeof(buf), f) && (p = strrchr(buf, ')')) && p[1] == ' ')
		dying = p[2] == 'Z' || p[2] == 'X';
	fclose(f);
	return dying;
}

/* "pid N (command)" of a holder, for messages. */
static void describe(int pid, char *out, size_t len)
{
	char path[64], comm[64] = "?";
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/comm", pid);
	if ((f = fopen(path, "re"))) {
		if (fgets(comm, sizeof(comm), f))
			comm[strcspn(comm, "\n")] = '\0';
		fclose(f);
	}
	snprintf(out, len, "pid %d (%s)", pid, comm);
}

struct holder_list {
	char *out;
	size_t len, k;
};

/* Add a holder to the list, while there is room. */
static int list_holder(int pid, int is_flock, void *arg)
{
	struct holder_list *l = arg;
	char one[96];

	(void)is_flock;
	if (l->k + 64 >= l->len)
		return 1;
	describe(pid, one, sizeof(one));
	l->k += (size_t)snprintf(l->out + l->k, l->len - l->k, "%s%s", l->k ? ", " : "", one);
	return 0;
}

void td_lock_holders(const char *path, char *out, size_t len)
{
	struct holder_list l = { out, len, 0 };
	struct stat st;

	out[0] = '\0';
	if (stat(path, &st) == 0)
		each_holder(&st, list_holder, &l);
}

int td_lock_image(int fd, const char *path, int shared)
{
	const char *kind = shared ? "shared" : "exclusive";
	struct timespec step = { 0, LOCK_POLL_MS * 1000000L };
	char who[96] = "another disk or process";
	int pid = -1, told = 0;

	for (int waited = 0;; waited += LOCK_POLL_MS) {
		if (flock(fd, (shared ? LOCK_SH : LOCK_EX) | LOCK_NB) == 0) {
			if (told)
				tlog(TLOG_INFO, "open: %s: %s let go of its lock after %d ms", path, who, waited);
			return 0;
		}
		if (errno != EWOULDBLOCK) {
			int err = errno;

			EPRINTF("open: %s: lock: %s", path, strerror(err));
			return -err;
		}
		pid = lock_holder(fd);
		if (pid > 0)
			describe(pid, who, sizeof(who));
		/* no holder listed: it let go between the two looks (or is out
		 * of sight, in another pid namespace): look again, briefly */
		if (pid > 0 ? !exiting(pid) : waited >= LOCK_UNSEEN_MS)
			break;
		if (waited >= LOCK_EXIT_WAIT_MS) {
			EPRINTF("open: %s: in use by %s, still exiting after %d s (%s lock refused)",
				path, who, LOCK_EXIT_WAIT_MS / 1000, kind);
			return -EBUSY;
		}
		if (pid > 0 && !told++)
			tlog(TLOG_INFO, "open: %s: held by %s, which is exiting: waiting for it", path, who);
		nanosleep(&step, NULL);
	}
	EPRINTF("open: %s: in use by %s (%s lock refused)", path, who, kind);
	return -EBUSY;
}
