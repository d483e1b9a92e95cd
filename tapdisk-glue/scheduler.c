/* The event loop: one epoll set, level-triggered fd callbacks, one-shot
 * timers (the epoll timeout is the nearest deadline) and hooks run at the
 * end of every iteration. Registrations are freed only between iterations
 * so a callback may unregister anything, itself included. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>
#include "scheduler.h"
#include "tapdisk.h"

struct sched_fd {
	int id;
	int fd;
	int events;
	int dead;
	sched_fd_cb_t cb;
	void *arg;
};

struct sched_timer {
	int id;
	uint64_t deadline;
	sched_timer_cb_t cb;
	void *arg;
};

struct sched_hook {
	int id;
	sched_hook_cb_t cb;
	void *arg;
};

static int epfd = -1;
static int stopping;
static int kicked;
static int in_hooks;
static int running;
static int next_id = 1;
static struct sched_fd **fds;      /* live registrations */
static int nfds, capfds;
static struct sched_fd **graveyard; /* unregistered during this iteration */
static int ngrave, capgrave;
static struct sched_timer *timers;
static int ntimers, captimers;
static struct sched_hook *hooks;
static int nhooks, caphooks;

/* Grow an array of `size`-byte items to hold at least `need`. */
static int grow(void **arr, int *cap, int need, size_t size)
{
	void *n;
	int c;

	if (need <= *cap)
		return 0;
	c = *cap ? *cap * 2 : 16;
	while (c < need)
		c *= 2;
	n = realloc(*arr, (size_t)c * size);
	if (!n)
		return -ENOMEM;
	*arr = n;
	*cap = c;
	return 0;
}

/* A fresh id; ids are never reused while the daemon lives (2^31 is plenty). */
static int new_id(void)
{
	if (next_id == 0x7fffffff)
		next_id = 1;
	return next_id++;
}

uint64_t sched_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int sched_init(void)
{
	if (epfd >= 0)
		return 0;
	epfd = epoll_create1(EPOLL_CLOEXEC);
	if (epfd < 0) {
		EPRINTF("epoll_create1: %m");
		return -errno;
	}
	stopping = 0;
	return 0;
}

/* Free the registrations unregistered during the last iteration. */
static void bury(void)
{
	for (int i = 0; i < ngrave; i++)
		free(graveyard[i]);
	ngrave = 0;
}

void sched_fini(void)
{
	for (int i = 0; i < nfds; i++)
		free(fds[i]);
	bury();
	free(fds);
	free(graveyard);
	free(timers);
	free(hooks);
	fds = NULL;
	graveyard = NULL;
	timers = NULL;
	hooks = NULL;
	nfds = capfds = ngrave = capgrave = ntimers = captimers = nhooks = caphooks = 0;
	if (epfd >= 0)
		close(epfd);
	epfd = -1;
}

/* Our event bits as epoll's. */
static uint32_t to_epoll(int events)
{
	return (events & SCHED_READ ? EPOLLIN | EPOLLRDHUP : 0) | (events & SCHED_WRITE ? EPOLLOUT : 0) |
	       (events & SCHED_EDGE ? EPOLLET : 0);
}

int sched_register_fd(int fd, int events, sched_fd_cb_t cb, void *arg)
{
	struct epoll_event ev = { 0 };
	struct sched_fd *s;

	if (epfd < 0 && sched_init() < 0)
		return -EBADF;
	if (grow((void **)&fds, &capfds, nfds + 1, sizeof(*fds)) < 0)
		return -ENOMEM;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->id = new_id();
	s->fd = fd;
	s->events = events;
	s->cb = cb;
	s->arg = arg;
	ev.events = to_epoll(events);
	ev.data.ptr = s;
	if (events && epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		int e = errno;

		EPRINTF("epoll_ctl add fd %d: %m", fd);
		free(s);
		return -e;
	}
	fds[nfds++] = s;
	return s->id;
}

/* The live registration with `id`, and its index. */
static struct sched_fd *find_fd(int id, int *index)
{
	for (int i = 0; i < nfds; i++)
		if (fds[i]->id == id) {
			if (index)
				*index = i;
			return fds[i];
		}
	return NULL;
}

/* Watch other events; with none, the fd leaves the epoll set (a hung-up
 * peer would otherwise wake the loop forever) but stays registered. */
int sched_modify_fd(int id, int events)
{
	struct epoll_event ev = { 0 };
	struct sched_fd *s = find_fd(id, NULL);
	int op;

	if (!s)
		return -ENOENT;
	if (s->events == events)
		return 0;
	ev.events = to_epoll(events);
	ev.data.ptr = s;
	op = !events ? EPOLL_CTL_DEL : !s->events ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;
	if (epoll_ctl(epfd, op, s->fd, &ev) < 0) {
		EPRINTF("epoll_ctl fd %d: %m", s->fd);
		return -errno;
	}
	s->events = events;
	return 0;
}

void sched_unregister(int id)
{
	int i;
	struct sched_fd *s = find_fd(id, &i);

	if (!s)
		return;
	if (s->events)
		epoll_ctl(epfd, EPOLL_CTL_DEL, s->fd, NULL);
	s->dead = 1;
	fds[i] = fds[--nfds];
	if (grow((void **)&graveyard, &capgrave, ngrave + 1, sizeof(*graveyard)) < 0) {
		/* cannot defer: leak it rather than risk a stale event using it */
		return;
	}
	graveyard[ngrave++] = s;
}

int sched_timer(uint64_t ms, sched_timer_cb_t cb, void *arg)
{
	if (grow((void **)&timers, &captimers, ntimers + 1, sizeof(*timers)) < 0)
		return -ENOMEM;
	timers[ntimers] = (struct sched_timer){ new_id(), sched_now_ns() + ms * 1000000ull, cb, arg };
	return timers[ntimers++].id;
}

void sched_cancel_timer(int id)
{
	for (int i = 0; i < ntimers; i++)
		if (timers[i].id == id) {
			memmove(&timers[i], &timers[i + 1], (size_t)(ntimers - i - 1) * sizeof(*timers));
			ntimers--;
			return;
		}
}

int sched_add_hook(sched_hook_cb_t cb, void *arg)
{
	if (grow((void **)&hooks, &caphooks, nhooks + 1, sizeof(*hooks)) < 0)
		return -ENOMEM;
	hooks[nhooks] = (struct sched_hook){ new_id(), cb, arg };
	return hooks[nhooks++].id;
}

void sched_remove_hook(int id)
{
	for (int i = 0; i < nhooks; i++)
		if (hooks[i].id == id) {
			memmove(&hooks[i], &hooks[i + 1], (size_t)(nhooks - i - 1) * sizeof(*hooks));
			nhooks--;
			return;
		}
}

void sched_stop(void)
{
	stopping = 1;
}

/* Work queued by an fd callback or a timer is picked up by this
 * iteration's hooks anyway: only work queued from a hook needs a kick. */
void sched_kick(void)
{
	if (in_hooks || !running)
		kicked = 1;
}

/* The nearest timer's deadline, or UINT64_MAX for none. */
static uint64_t nearest_deadline(void)
{
	uint64_t first = UINT64_MAX;

	for (int i = 0; i < ntimers; i++)
		if (timers[i].deadline < first)
			first = timers[i].deadline;
	return first;
}

/* Milliseconds from `now` until `deadline` (rounded up), or -1 for none. */
static int timeout_ms(uint64_t deadline, uint64_t now)
{
	if (kicked || stopping)
		return 0;
	if (deadline == UINT64_MAX)
		return -1;
	if (deadline <= now)
		return 0;
	deadline = (deadline - now + 999999) / 1000000;
	return deadline > 3600000 ? 3600000 : (int)deadline;
}

/* Fire expired timers; each is removed before its callback runs. */
static void run_timers(void)
{
	uint64_t now = sched_now_ns();
	int i = 0;

	while (i < ntimers) {
		if (timers[i].deadline <= now) {
			struct sched_timer t = timers[i];

			sched_cancel_timer(t.id);
			t.cb(t.arg);
			i = 0; /* the callback may have changed the table */
			continue;
		}
		i++;
	}
}

/* Run every hook once; a hook removed by another is skipped. */
static void run_hooks(void)
{
	for (int i = 0; i < nhooks; i++) {
		int id = hooks[i].id;

		hooks[i].cb(hooks[i].arg);
		if (i < nhooks && hooks[i].id != id)
			i--; /* this one was removed: the next moved into its slot */
	}
}

/* Dispatch one batch of events to their callbacks. */
static void dispatch(struct epoll_event *evs, int n)
{
	for (int i = 0; i < n; i++) {
		struct sched_fd *s = evs[i].data.ptr;
		int events = 0;

		if (s->dead)
			continue;
		if (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
			events |= SCHED_READ;
		if (evs[i].events & (EPOLLOUT | EPOLLHUP | EPOLLERR))
			events |= SCHED_WRITE;
		events &= s->events & (SCHED_READ | SCHED_WRITE);
		if (!events && (evs[i].events & (EPOLLHUP | EPOLLERR)))
			events = s->events & (SCHED_READ | SCHED_WRITE); /* a hangup: to whatever is watched */
		if (events)
			s->cb(s->fd, events, s->arg);
	}
}

/* The longest time the loop spent working between two waits: a long one
 * stalls every request of every disk, whatever the disks do. */
static uint64_t busy_max_ns;

uint64_t sched_busy_max_ns(void)
{
	return busy_max_ns;
}

/* Adaptive polling (as QEMU's iothreads do): before sleeping, look for
 * events without sleeping for up to poll_ns. On a VM, the wakeup that ends
 * a sleep (the device's interrupt, then an IPI to the idle vCPU) costs tens
 * of microseconds per request, and at a client's queue depth of 32 that
 * latency is what the disk loses most IOPS to. The window doubles while the
 * waits are shorter than poll_max_ns and halves when one is longer, so an
 * idle or slow disk does not spin at all. */
static uint64_t poll_max_ns = SCHED_POLL_MAX_US_DEFAULT * 1000ull;
static uint64_t poll_ns;
static uint64_t poll_hits;

void sched_set_poll_max_us(unsigned int us)
{
	poll_max_ns = (uint64_t)us * 1000;
	if (poll_ns > poll_max_ns)
		poll_ns = poll_max_ns;
}

unsigned int sched_poll_max_us(void)
{
	return (unsigned int)(poll_max_ns / 1000);
}

uint64_t sched_poll_ns(void)
{
	return poll_ns;
}

uint64_t sched_poll_hits(void)
{
	return poll_hits;
}

/* Fit the polling window to how long the last wait lasted, in ns. */
static void poll_adapt(uint64_t waited)
{
	if (waited <= poll_ns)
		return; /* polling found the event: the window is right */
	if (waited > poll_max_ns)
		poll_ns = poll_ns / 2 < 4000 ? 0 : poll_ns / 2;
	else if (poll_ns < poll_max_ns)
		poll_ns = poll_ns ? (poll_ns * 2 > poll_max_ns ? poll_max_ns : poll_ns * 2) : 4000;
}

/* Wait for events: poll for up to the window (never past a timer's
 * deadline), then sleep until an event or the nearest timer. */
static int wait_events(struct epoll_event *evs, int max)
{
	uint64_t deadline = nearest_deadline(), start = sched_now_ns(), now;
	int tmo = timeout_ms(deadline, start), n;

	if (tmo == 0 || !poll_max_ns)
		return epoll_wait(epfd, evs, max, tmo);
	while (poll_ns) {
		n = epoll_wait(epfd, evs, max, 0);
		if (n != 0) {
			if (n > 0)
				poll_hits++;
			poll_adapt(sched_now_ns() - start);
			return n;
		}
		now = sched_now_ns();
		if (now >= deadline)
			return 0; /* a timer is due: run it */
		if (now - start >= poll_ns)
			break;
	}
	n = epoll_wait(epfd, evs, max, timeout_ms(deadline, sched_now_ns()));
	poll_adapt(sched_now_ns() - start);
	return n;
}

int sched_run(void)
{
	struct epoll_event evs[256];

	if (epfd < 0 && sched_init() < 0)
		return -EBADF;
	running = 1;
	while (!stopping) {
		int n = wait_events(evs, 256);

		kicked = 0;
		if (n < 0) {
			if (errno != EINTR) {
				int e = errno;

				EPRINTF("epoll_wait: %m");
				running = 0;
				return -e;
			}
			n = 0;
		}
		uint64_t t0 = sched_now_ns(), busy;

		dispatch(evs, n);
		run_timers();
		in_hooks = 1;
		run_hooks();
		in_hooks = 0;
		bury();
		busy = sched_now_ns() - t0;
		if (busy > busy_max_ns)
			busy_max_ns = busy;
	}
	running = 0;
	stopping = 0;
	return 0;
}
