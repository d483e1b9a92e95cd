/* The tapdisk driver API, after xapi-project/blktap's tapdisk3, so that a
 * driver in drivers/ reads like a tapdisk driver.
 *
 * A disk is a chain of images (top first). A request enters at the top
 * image's driver; a driver completes what it holds itself with
 * td_complete_request() and hands what it does not hold to the next image
 * with td_forward_request(). A driver may split a request into pieces
 * (copies of the td_request_t with other sec/secs/buf) and complete or
 * forward each piece on its own; the vbd completes the client's request
 * when every sector of it is accounted for.
 *
 * Drivers do I/O through tiocbs: td_prep_read/td_prep_write fill one,
 * td_queue_tiocb queues it, the runtime submits queued tiocbs once per
 * event loop iteration and calls the tiocb's callback on completion.
 */
#ifndef RENEW_TAPDISK_H
#define RENEW_TAPDISK_H

#include <stdint.h>
#include <stddef.h>
#include <libaio.h>

typedef uint64_t td_sector_t;
typedef uint32_t td_flag_t;

typedef struct td_driver_handle td_driver_t;
typedef struct td_image_handle td_image_t;
typedef struct td_vbd_request td_vbd_request_t;
typedef struct td_request td_request_t;
struct tiocb;
struct td_renew_job;

#define TD_OP_READ   0
#define TD_OP_WRITE  1
#define TD_OP_FLUSH  2   /* the request passed to td_queue_flush (secs = 0) */

/* Open flags. */
#define TD_OPEN_RDONLY      0x0001
#define TD_OPEN_QUIET       0x0002
#define TD_OPEN_NO_O_DIRECT 0x0004
#define TD_OPEN_SHAREABLE   0x0008 /* parent open: shared lock */
#define TD_OPEN_LOCAL_CACHE 0x0010 /* unused; blktap compatibility */
#define TD_OPEN_STRICT      0x0020 /* refuse what is merely doubtful */
#define TD_OPEN_NOLOCK      0x0040 /* the caller holds the image's lock */

#define TD_NO_PARENT 1

typedef void (*td_callback_t)(td_request_t treq, int err);

struct td_request {
	int op;
	char *buf;
	int status;
	td_sector_t sec;
	int secs;
	td_image_t *image;   /* the image this piece is queued on */
	td_callback_t cb;    /* set by the vbd; drivers do not touch it */
	void *cb_data;
	int sidx;
	td_vbd_request_t *vreq;
};

struct td_disk_info {
	td_sector_t size;       /* virtual size in sectors */
	long sector_size;       /* 512 */
	uint32_t info;
};

typedef struct td_disk_id {
	char *name;             /* malloc'd; the parent's path */
	int type;               /* a DISK_TYPE_* */
	int flags;
} td_disk_id_t;

/* What a driver reports for `tap-ctl-renew stats` (filled by td_stats). */
typedef struct td_stats {
	uint64_t allocated_bytes; /* bytes of data the image itself holds */
	uint64_t blocks_allocated;
	uint64_t bitmap_cache_hits;
	uint64_t bitmap_cache_misses;
	char extra[512];          /* a JSON fragment (`"k":v,...`) or empty */
} td_stats_t;

typedef struct td_driver_handle td_driver_handle_t;

struct tap_disk {
	const char *disk_type;
	td_flag_t flags;
	int private_data_size;
	int (*td_open)(td_driver_t *drv, const char *name, td_flag_t flags);
	int (*td_close)(td_driver_t *drv);
	int (*td_get_parent_id)(td_driver_t *drv, td_disk_id_t *id);
	int (*td_validate_parent)(td_driver_t *child, td_driver_t *parent, td_flag_t flags);
	void (*td_queue_read)(td_driver_t *drv, td_request_t treq);
	void (*td_queue_write)(td_driver_t *drv, td_request_t treq);
	/* Make completed writes durable; complete `treq` (secs = 0) when done. */
	void (*td_queue_flush)(td_driver_t *drv, td_request_t treq);
	void (*td_debug)(td_driver_t *drv);
	void (*td_stats)(td_driver_t *drv, td_stats_t *st);
	/* Convert the image's lock (LOCK_SH / LOCK_EX, with LOCK_NB): renew
	 * takes its parent exclusively for the commit. */
	int (*td_lock)(td_driver_t *drv, int op);
	/* Renew (overlays only; see renew-job.h). Called while the guest
	 * runs: check the parent and open it for writing, so the pause that
	 * follows does not wait for the checks. Optional. */
	int (*td_renew_prepare)(td_driver_t *drv, struct td_renew_job *job);
	/* Called with the vbd paused: (prepare if not done,) start the commit
	 * copy and send guest writes to the parent too until td_renew_end. */
	int (*td_renew_begin)(td_driver_t *drv, struct td_renew_job *job);
	/* Called paused, once the copy is over: make the parent durable and
	 * rename the fresh overlay over the image (the commit point). */
	void (*td_renew_swap)(td_driver_t *drv, struct td_renew_job *job);
	/* Called paused: stop writing through, release the parent. */
	void (*td_renew_end)(td_driver_t *drv, struct td_renew_job *job);
};

enum td_driver_state { TD_DRIVER_CLOSED = 0, TD_DRIVER_OPEN = 1 };

struct td_driver_handle {
	int type;
	char *name;             /* the image's path */
	int refcnt;
	int state;
	td_flag_t flags;
	struct td_disk_info info;
	void *data;             /* private_data_size bytes, zeroed */
	const struct tap_disk *ops;
	td_image_t *image;      /* back-pointer */
};

struct td_image_handle {
	int type;
	char *name;
	td_flag_t flags;
	td_driver_t *driver;
	td_image_t *next;       /* the parent, or NULL */
	struct td_vbd_handle *vbd;
};

/* Disk types: the string before the colon in `renew:/path`. */
enum {
	DISK_TYPE_AIO = 0,     /* raw file */
	DISK_TYPE_RENEW = 1,   /* VHD overlay (read-write) */
	DISK_TYPE_VHD = 2,     /* VHD parent (read-only) */
	DISK_TYPE_MAX
};
struct disk_info {
	int type;
	const char *name;
	const struct tap_disk *drv;
};
/* The type for a name ("aio", "renew", "vhd"), or -1. */
int tapdisk_disktype_find(const char *name);
const struct disk_info *tapdisk_disktype_get(int type);
/* Split "type:path"; returns the type or a negative errno. */
int tapdisk_parse_disk_type(const char *params, const char **path);

/* Requests. */
void td_complete_request(td_request_t treq, int res);
void td_forward_request(td_request_t treq);

/* Async I/O (libaio). */
typedef void (*td_queue_callback_t)(void *arg, struct tiocb *tiocb, int err);
struct tiocb {
	td_queue_callback_t cb;
	void *arg;
	struct iocb iocb;
	struct tiocb *next;     /* runtime's queue link */
	td_queue_callback_t submitted; /* optional: once the kernel has taken it */
};
void td_prep_read(td_driver_t *drv, struct tiocb *t, int fd, char *buf, size_t bytes,
		  long long offset, td_queue_callback_t cb, void *arg);
void td_prep_write(td_driver_t *drv, struct tiocb *t, int fd, char *buf, size_t bytes,
		   long long offset, td_queue_callback_t cb, void *arg);
/* fdatasync through the aio queue (IOCB_CMD_FDSYNC): never blocks the loop. */
void td_prep_fdsync(td_driver_t *drv, struct tiocb *t, int fd, td_queue_callback_t cb, void *arg);
void td_queue_tiocb(td_driver_t *drv, struct tiocb *t);
/* Call `cb(arg, t, 0)` once io_submit has accepted `t` (after td_prep_*):
 * the kernel will finish it even if the process dies. */
void td_tiocb_on_submit(struct tiocb *t, td_queue_callback_t cb);
/* The queue is set up on first use; tear it down at exit (nothing in flight). */
void td_aio_fini(void);
/* tiocbs queued or in flight (0 when the queue is idle). */
int td_aio_pending(void);
/* Outside the event loop: submit what is queued and wait up to `timeout_ms`
 * for completions, calling their callbacks. Returns how many completed. */
int td_aio_poll(int timeout_ms);

/* What a renew asks of a driver, and what the driver reports back. */
struct td_renew_job {
	int commit_only;        /* copy into the parent, keep the overlay */
	int force;              /* skip the guards on the parent */
	uint64_t rate_bps;      /* copy at most this fast (0 = no limit) */
	uint64_t bytes_total;   /* the driver's estimate of the copy */
	uint64_t bytes_done;     /* the overlay's blocks gone through (progress) */
	uint64_t bytes_copied;   /* sectors written into the parent */
	int old_fd;             /* set by the swap: the replaced overlay, still open */
	char *sync_dir;         /* set by the swap: the directory to make durable (malloc'd) */
	char *sync_parent;      /* set by the swap: the parent, to make durable (malloc'd) */
	const char *keep_path;  /* history: hard-link the overlay here (durably) before the rename */
	void *priv;             /* the runtime's */
};
/* The copy is over (err = 0: the parent holds every sector and is durable). */
void td_renew_copied(struct td_renew_job *job, int err);
/* The swap is over (err = 0: the fresh overlay is in place). */
void td_renew_swapped(struct td_renew_job *job, int err);
/* Open one image outside any chain (renew's writable parent). */
td_driver_t *td_driver_open(int type, const char *path, td_flag_t flags, char *err, size_t errlen);
void td_driver_close(td_driver_t *drv);

/* Lock an image a disk opens (flock: shared for a parent, else exclusive).
 * A holder that is exiting is waited for; any other holder is refused at
 * once, named in the message. Returns 0, -EBUSY or another -errno. */
int td_lock_image(int fd, const char *path, int shared);
/* Who holds locks on `path`, for a message: "pid 12 (tapdisk-renew), ..."
 * (empty when nobody else does). */
void td_lock_holders(const char *path, char *out, size_t len);

/* Fault injection for crash and error tests: RENEW_FAULT=POINT[:N[:ACTION]]
 * makes the N-th pass (default 1) through POINT kill the process
 * (ACTION kill, the default) or fail with EIO / ENOSPC (eio, enospc).
 * Returns 0 or the negative errno to fail with. */
int td_fault(const char *point);

/* Logging: to stderr (and syslog when the daemon is detached). */
void tlog(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define TLOG_ERR  3
#define TLOG_WARN 4
#define TLOG_INFO 6
#define TLOG_DBG  7
/* Send later messages to syslog (the detached daemon). */
void tlog_to_syslog(const char *ident);
/* A tool hosting the runtime: its own name on stderr lines, and the least
 * important level it shows (RENEW_DEBUG=1 still shows everything); with
 * `own_errors` errors are only kept for tlog_last_error(): the tool
 * reports them itself. */
void tlog_setup(const char *name, int level, int own_errors);
/* The last TLOG_ERR message ("" after tlog_clear_error()): the vbd copies a
 * driver's own open error into the control reply. */
const char *tlog_last_error(void);
void tlog_clear_error(void);
#define DPRINTF(...) tlog(TLOG_DBG, __VA_ARGS__)
#define EPRINTF(...) tlog(TLOG_ERR, __VA_ARGS__)

#endif
