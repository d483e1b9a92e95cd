/* The kernel NBD client for `create` without --socket-only: load the nbd
 * module, pick a free /dev/nbdN, connect it with nbd-client. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "ctl-tool.h"

/* The block size of the kernel device: 512 like the VHD sector, so a guest
 * sees the logical sector size its partition table was written with. */
#define NBD_BLOCK_SIZE "512"
#define NBD_MAX_DEVICES 1024

/* Run argv with stdout+stderr captured in `out` (first line kept);
 * returns the exit status, 127 when it could not be run. */
static int run(char *const argv[], char *out, size_t outlen)
{
	int fds[2], status;
	size_t got = 0;
	pid_t pid;
	ssize_t n;

	out[0] = '\0';
	if (pipe2(fds, O_CLOEXEC))
		return snprintf(out, outlen, "pipe: %s", strerror(errno)), 127;
	fflush(NULL);
	pid = fork();
	if (pid < 0) {
		snprintf(out, outlen, "fork: %s", strerror(errno));
		close(fds[0]);
		close(fds[1]);
		return 127;
	}
	if (pid == 0) {
		dup2(fds[1], STDOUT_FILENO);
		dup2(fds[1], STDERR_FILENO);
		execvp(argv[0], argv);
		printf("cannot run %s: %s\n", argv[0], strerror(errno));
		fflush(stdout);
		_exit(127);
	}
	close(fds[1]);
	for (;;) {
		char tmp[256];
		size_t k;

		n = read(fds[0], tmp, sizeof(tmp));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		k = (size_t)n < outlen - 1 - got ? (size_t)n : outlen - 1 - got;
		memcpy(out + got, tmp, k);
		got += k;
	}
	out[got] = '\0';
	close(fds[0]);
	out[strcspn(out, "\n")] = '\0';
	if (waitpid(pid, &status, 0) != pid)
		return 127;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

/* Does a path exist? */
static int exists(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0;
}

int nbd_available(char *why, size_t whylen)
{
	char out[256];

	if (exists("/dev/nbd0")) {
		snprintf(why, whylen, "nbd devices present (/dev/nbd0)");
		return 1;
	}
	if (exists("/sys/module/nbd")) {
		snprintf(why, whylen, "nbd module loaded but /dev/nbd0 is missing");
		return 0;
	}
	if (run((char *[]){ "modprobe", "-n", "nbd", NULL }, out, sizeof(out)) == 0) {
		snprintf(why, whylen, "nbd module available (not loaded)");
		return 1;
	}
	snprintf(why, whylen, "nbd kernel module not available: modprobe -n nbd: %s",
		 out[0] ? out : "failed");
	return 0;
}

/* Load the nbd module when no /dev/nbd0 exists yet. */
static int load_module(char *err, size_t errlen)
{
	struct timespec ts = { 0, 20 * 1000000 };
	char out[256];
	int rc;

	if (exists("/dev/nbd0"))
		return 0;
	rc = run((char *[]){ "modprobe", "nbd", NULL }, out, sizeof(out));
	if (rc) {
		snprintf(err, errlen, "nbd kernel module not available: modprobe nbd: %s",
			 out[0] ? out : "failed");
		return -1;
	}
	for (int i = 0; i < 100 && !exists("/dev/nbd0"); i++)
		nanosleep(&ts, NULL);
	if (!exists("/dev/nbd0")) {
		snprintf(err, errlen, "nbd kernel module loaded but /dev/nbd0 did not appear");
		return -1;
	}
	return 0;
}

/* The first /dev/nbdN that no client holds (no /sys/block/nbdN/pid). */
static int free_device(char *dev, size_t devlen, char *err, size_t errlen)
{
	char pidfile[64];

	for (int n = 0; n < NBD_MAX_DEVICES; n++) {
		snprintf(dev, devlen, "/dev/nbd%d", n);
		if (!exists(dev))
			break;
		snprintf(pidfile, sizeof(pidfile), "/sys/block/nbd%d/pid", n);
		if (!exists(pidfile))
			return 0;
	}
	snprintf(err, errlen, "no free /dev/nbdN device (every one is connected)");
	return -1;
}

int nbd_connect(const char *sock, int connections, char *dev, size_t devlen, char *err,
		size_t errlen)
{
	char out[512], conns[16];
	int rc;

	if (load_module(err, errlen) || free_device(dev, devlen, err, errlen))
		return -1;
	snprintf(conns, sizeof(conns), "%d", connections);
	rc = run((char *[]){ "nbd-client", "-unix", (char *)sock, dev, "-b", NBD_BLOCK_SIZE,
			     "-connections", conns, NULL },
		 out, sizeof(out));
	if (rc == 127) {
		snprintf(err, errlen, "nbd-client -unix %s %s: %s", sock, dev,
			 out[0] ? out : "cannot run nbd-client (is it installed?)");
		return -1;
	}
	if (rc) {
		snprintf(err, errlen, "nbd-client -unix %s %s -connections %d failed (exit %d): %s", sock,
			 dev, connections, rc, out[0] ? out : "no message");
		return -1;
	}
	return 0;
}

int nbd_disconnect(const char *dev, char *err, size_t errlen)
{
	char out[512];
	int rc = run((char *[]){ "nbd-client", "-d", (char *)dev, NULL }, out, sizeof(out));

	if (rc) {
		snprintf(err, errlen, "nbd-client -d %s failed (exit %d): %s", dev, rc,
			 out[0] ? out : "no message");
		return -1;
	}
	return 0;
}
