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

/* The pid /proc/locks gives for a flock on `fd`'s file, or -1. */
static int lock_holder(int fd)
{
	char line[256], type[16];
	unsigned maj, min;
	unsigned long long ino;
	struct stat st;
	int pid, found = -1;
	FILE *f;

	if (fstat(fd, &st) < 0 || !(f = fopen("/proc/locks", "re")))
		return -1;
	while (found < 0 && fgets(line, sizeof(line), f)) {
		if (strstr(line, "->")) /* a waiter, not a holder */
			continue;
		if (sscanf(line, "%*d: %15s %*s %*s %d %x:%x:%llu", type, &pid, &maj, &min, &ino) == 5 &&
		    !strcmp(type, "FLOCK") && maj == major(st.st_dev) && min == minor(st.st_dev) &&
		    ino == (unsigned long long)st.st_ino && pid != getpid())
			found = pid;
	}
	fclose(f);
	return found;
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
	char path[64], comm[64] = "";
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/comm", pid);
	if ((f = fopen(path, "re"))) {
		if (fgets(comm, sizeof(comm), f))
			comm[strcspn(comm, "\n")] = '\0';
		fclose(f);
	}
	if (comm[0])
		snprintf(out, len, "pid %d (%s)", pid, comm);
	else
		snprintf(out, len, "pid %d", pid);
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
