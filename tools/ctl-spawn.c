/* spawn: start `tapdisk-renew -D` and learn its pid from the line it prints
 * once its control socket listens. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "ctl-tool.h"

#define DAEMON_NAME "tapdisk-renew"
#define SPAWN_TIMEOUT_MS 60000
#define MAX_WRAPPER_ARGS 32

/* Is `path` an executable regular file? */
static int executable(const char *path)
{
	struct stat st;
	return !stat(path, &st) && S_ISREG(st.st_mode) && !access(path, X_OK);
}

int find_daemon(char *path, size_t len)
{
	const char *env = getenv("RENEW_TAPDISK");
	char self[PATH_MAX], *slash, *paths, *dir, *save = NULL;
	ssize_t n;

	if (env && *env) {
		snprintf(path, len, "%s", env);
		return executable(path) ? 0 : -1;
	}
	n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n > 0) {
		self[n] = '\0';
		slash = strrchr(self, '/');
		if (slash) {
			*slash = '\0';
			if ((size_t)snprintf(path, len, "%s/" DAEMON_NAME, self) < len && executable(path))
				return 0;
		}
	}
	paths = strdup(getenv("PATH") ? getenv("PATH") : "/usr/sbin:/usr/bin:/sbin:/bin");
	for (dir = strtok_r(paths, ":", &save); dir; dir = strtok_r(NULL, ":", &save))
		if ((size_t)snprintf(path, len, "%s/" DAEMON_NAME, dir) < len && executable(path)) {
			free(paths);
			return 0;
		}
	free(paths);
	return -1;
}

/* In the child: stdout to the pipe, stdin from /dev/null, exec. Any
 * wrapper words in $RENEW_TAPDISK_WRAPPER (e.g. valgrind) come first. */
static void exec_daemon(const char *path, int wfd)
{
	char *argv[MAX_WRAPPER_ARGS + 3], *wrap = getenv("RENEW_TAPDISK_WRAPPER");
	char *save = NULL, *w;
	int argc = 0, null = open("/dev/null", O_RDONLY);

	if (null >= 0)
		dup2(null, STDIN_FILENO);
	dup2(wfd, STDOUT_FILENO);
	if (wrap && *wrap)
		for (w = strtok_r(wrap, " ", &save); w && argc < MAX_WRAPPER_ARGS;
		     w = strtok_r(NULL, " ", &save))
			argv[argc++] = w;
	argv[argc++] = (char *)path;
	argv[argc++] = "-D";
	argv[argc] = NULL;
	execvp(argv[0], argv);
	fprintf(stderr, PROG ": spawn: exec %s: %s\n", argv[0], strerror(errno));
	_exit(127);
}

/* Read the daemon's first line (its pid), bounded in time. */
static int read_pid_line(int rfd, char *line, size_t len)
{
	size_t got = 0;

	while (got < len - 1) {
		struct pollfd p = { .fd = rfd, .events = POLLIN };
		ssize_t n;
		int r = poll(&p, 1, SPAWN_TIMEOUT_MS);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -ETIMEDOUT;
		n = read(rfd, line + got, len - 1 - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
		line[got] = '\0';
		if (strchr(line, '\n'))
			break;
	}
	line[got] = '\0';
	return got ? 0 : -EPIPE;
}

/* Explain why the daemon gave no pid: its exit status if it ended. */
static void spawn_failed(const struct opts *o, const char *path, pid_t child, int rc)
{
	int status;

	if (rc == -ETIMEDOUT) {
		warnx_(o, "%s did not report its pid within %d s", path, SPAWN_TIMEOUT_MS / 1000);
		return;
	}
	if (waitpid(child, &status, 0) == child && WIFEXITED(status))
		warnx_(o, "%s exited with status %d before listening (see its messages above)", path,
		       WEXITSTATUS(status));
	else
		warnx_(o, "%s ended before reporting its pid", path);
}

int spawn_daemon(const struct opts *o)
{
	char path[PATH_MAX], line[64], err[CTL_ERRLEN], *end;
	int fds[2], rc;
	pid_t child;
	long pid;

	if (find_daemon(path, sizeof(path))) {
		warnx_(o, "cannot find " DAEMON_NAME " next to " PROG " or on PATH");
		return -1;
	}
	if (ctl_rundir_ensure(err, sizeof(err))) {
		warnx_(o, "%s", err);
		return -1;
	}
	if (pipe2(fds, O_CLOEXEC)) {
		warnx_(o, "pipe: %s", strerror(errno));
		return -1;
	}
	fflush(NULL);
	child = fork();
	if (child < 0) {
		warnx_(o, "fork: %s", strerror(errno));
		close(fds[0]);
		close(fds[1]);
		return -1;
	}
	if (child == 0)
		exec_daemon(path, fds[1]);
	close(fds[1]);
	rc = read_pid_line(fds[0], line, sizeof(line));
	close(fds[0]);
	if (rc) {
		spawn_failed(o, path, child, rc);
		return -1;
	}
	pid = strtol(line, &end, 10);
	if (end == line || (*end && *end != '\n') || pid <= 0) {
		warnx_(o, "%s printed '%.40s' instead of its pid", path, line);
		return -1;
	}
	return (int)pid;
}
