/* One thread per piece of blocking work, joined on the loop (worker.h). */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include "scheduler.h"
#include "worker.h"

struct worker {
	int (*fn)(void *arg);
	void (*done)(void *arg, int rc);
	void *arg;
	int rc;
	int efd;
	int id;
	pthread_t thread;
};

/* The thread: do the work, then wake the loop. */
static void *worker_thread(void *p)
{
	struct worker *w = p;
	uint64_t one = 1;

	w->rc = w->fn(w->arg);
	while (write(w->efd, &one, sizeof(one)) < 0 && errno == EINTR)
		;
	return NULL;
}

/* Back on the loop: join, clean up, report. */
static void worker_finished(int fd, int events, void *p)
{
	struct worker *w = p;
	uint64_t n;

	(void)events;
	if (read(fd, &n, sizeof(n)) < 0 && errno == EAGAIN)
		return;
	pthread_join(w->thread, NULL);
	sched_unregister(w->id);
	close(w->efd);
	w->done(w->arg, w->rc);
	free(w);
}

int td_worker_run(int (*fn)(void *arg), void *arg, void (*done)(void *arg, int rc))
{
	struct worker *w = calloc(1, sizeof(*w));
	int r;

	if (!w)
		return -ENOMEM;
	w->fn = fn;
	w->done = done;
	w->arg = arg;
	w->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (w->efd < 0) {
		r = -errno;
		free(w);
		return r;
	}
	w->id = sched_register_fd(w->efd, SCHED_READ, worker_finished, w);
	if (w->id < 0) {
		r = w->id;
		close(w->efd);
		free(w);
		return r;
	}
	r = pthread_create(&w->thread, NULL, worker_thread, w);
	if (r) {
		sched_unregister(w->id);
		close(w->efd);
		free(w);
		return -r;
	}
	return 0;
}
