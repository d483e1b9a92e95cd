/* History of renews: every overlay a renew replaced is kept, and the base
 * can be rebuilt as of any generation.
 *
 * A history is a directory on the filesystem of the disk (the old overlay
 * is kept by a hard link, so keeping it costs nothing at the swap):
 *   log                the records, one line each, append-only, crc32-checked
 *   lock               flock: one writer at a time (renew, prune, init)
 *   <g>.base           the saved base as of generation g (0 at first; the
 *                      generation a prune folded the older ones into)
 *   <g>.vhd            the overlay renew number g committed into the base
 *   <g>.vhd.pending    linked during renew g's swap, not yet hashed and logged
 *   .<name>.tmp        a copy in progress
 *
 * The base as of generation K = <b>.base with the sectors of the overlays
 * b+1..K written over it in order (b the current base's generation).
 *
 * Crash rules: a record is appended only once its file is durable; a
 * <g>.vhd always has its record; a .pending file is completed (hashed,
 * logged, renamed) when its renew passed the commit point, and removed
 * when it did not (the overlay is still the disk); .tmp files are removed;
 * files a finished prune superseded are removed. hist_recover() applies
 * them, and every writer runs it first.
 *
 * Errors: 0 or a negative errno, with a message naming the operation, the
 * path and the reason in `err` (every call takes its own buffer: the renew
 * job calls this library from a thread). */
#ifndef RENEW_HISTORY_H
#define RENEW_HISTORY_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define HIST_ERRLEN 1024

/* Format a message into err and return rc (hist-fault.c). */
int hist_err(char *err, size_t errlen, int rc, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* --- sha256 (hist-sha256.c) --- */
/* The sha256 of a file's bytes (as `sha256sum` prints it); *done counts
 * the bytes read so far when non-NULL. */
int hist_sha256_file(const char *path, char hex[65], uint64_t *done, char *err, size_t errlen);

/* --- records and the log (hist-log.c) --- */
enum hist_kind { HIST_BASE = 1, HIST_OVERLAY = 2 };

struct hist_rec {
	int kind;
	uint32_t gen;
	int64_t time_us;     /* UTC, microseconds since 1970 */
	char file[64];       /* its name in the directory */
	char fmt[8];         /* raw | vhd */
	char uuid[37];       /* overlay: its uuid; base: the base's ("-" for raw) */
	char parent[37];     /* overlay: its parent's uuid ("-" for a raw parent) */
	char next[37];       /* the overlay the disk went on with ("-": unknown) */
	uint64_t alloc;      /* overlay: allocated bytes (blocks); base: bytes on disk */
	uint64_t data;       /* overlay: bytes of sectors present; base: file size */
	uint64_t size;       /* the file's size */
	char sha256[65];     /* of the file's bytes */
	char *disk;          /* the disk's path, relative to the history (malloc'd) */
	char *base;          /* the base's path, relative to the history (malloc'd) */
	int line;            /* where it is in the log (1-based) */
};

struct hist_log {
	struct hist_rec *r;
	size_t n, cap;
	uint64_t valid_end;  /* the end of the last good record */
	uint64_t file_end;
	int torn;            /* bytes after valid_end: a torn last record */
	int bad_lines;       /* corrupt records before valid_end (skipped) */
	int first_bad_line;
};

/* "2025-01-02T03:04:05.123456Z" from microseconds since 1970. */
void hist_time_format(int64_t us, char out[40]);
/* The reverse; also "@SECONDS[.FRACTION]". 0 or -EINVAL. */
int hist_time_parse(const char *s, int64_t *us);
int64_t hist_now_us(void);

/* Read every record of the log at `fd`; a torn tail is noted, not fatal. */
int hist_log_read(int fd, const char *path, struct hist_log *log, char *err, size_t errlen);
/* Append `r` durably (a torn tail is cut off first); `log` gets a copy. */
int hist_log_append(int fd, const char *path, struct hist_log *log, const struct hist_rec *r,
		    char *err, size_t errlen);
void hist_log_free(struct hist_log *log);
void hist_rec_free(struct hist_rec *r);

/* --- the directory (hist-dir.c) --- */
struct hist {
	char *dir;
	int dfd;             /* the directory, for fsync */
	int logfd;
	int lockfd;          /* -1: opened without the lock (read-only) */
	struct hist_log log;
};

#define HIST_CREATE 0x1  /* make the directory when missing */
#define HIST_WRITE  0x2  /* take the lock; fail naming its holder when taken */
#define HIST_TRY    0x4  /* with HIST_WRITE: when taken, open read-only instead */

int hist_open(struct hist *h, const char *dir, int flags, char *err, size_t errlen);
void hist_close(struct hist *h);
/* "DIR/name" into buf. */
void hist_path(const struct hist *h, const char *name, char *buf, size_t len);
/* The current saved base (the last base record), or NULL for a new history. */
const struct hist_rec *hist_base(const struct hist *h);
/* The overlay record of generation `gen`, or NULL. */
const struct hist_rec *hist_overlay(const struct hist *h, uint32_t gen);
/* The highest generation (0 for a new history) and its record (the base
 * record when a prune folded everything, NULL for a new history). */
uint32_t hist_last_gen(const struct hist *h);
const struct hist_rec *hist_last(const struct hist *h);
/* A path as the log records it: relative to the history directory, so a
 * disk, its base and its history can move together (malloc'd). */
char *hist_rel(const struct hist *h, const char *path);
/* A recorded path as a usable one ("" stays ""). */
void hist_resolve(const struct hist *h, const char *recorded, char *buf, size_t len);
/* Append a record to the history's log (durable on return). */
int hist_append(struct hist *h, const struct hist_rec *r, char *err, size_t errlen);
/* fsync the directory. */
int hist_sync_dir(const struct hist *h, char *err, size_t errlen);
/* Apply the crash rules (see above); `disk` (or NULL: the log's) tells a
 * .pending overlay still in use. Needs the lock. */
int hist_recover(struct hist *h, const char *disk, char *err, size_t errlen);

/* --- copies (hist-copy.c) --- */
/* Copy `src` to `dst` (created, must not exist): a reflink (FICLONE)
 * where the filesystem shares blocks, else a sparse copy (SEEK_DATA /
 * SEEK_HOLE); durable on return. *reflinked says which. */
int hist_copy_file(const char *src, const char *dst, int *reflinked, uint64_t *done,
		   char *err, size_t errlen);
/* Bytes the file takes on disk (st_blocks). */
uint64_t hist_disk_bytes(const char *path);

/* --- the renew's part (hist-renew.c) --- */
/* Progress of a long step, read by another thread. */
struct hist_progress {
	uint64_t done, total;
};
/* Before a renew (or a commit) of the overlay `disk` over `base` changes
 * the base: recover, save generation 0 when the history is new, check
 * the history is this disk's. Fills the next generation and, for a renew,
 * the .pending path the swap must link the overlay to. Needs the lock. */
int hist_prepare(struct hist *h, const char *disk, const char *base, uint32_t *gen,
		 char *pending, size_t plen, struct hist_progress *pr, char *err, size_t errlen);
/* Generation 0 from `base` (a new history only). */
int hist_init(struct hist *h, const char *base, const char *disk, struct hist_progress *pr,
	      char *err, size_t errlen);
/* After the swap (or in recovery): make <gen>.vhd.pending durable, hash
 * it, log it, give it its final name. `disk` holds the overlay that
 * replaced it; `time_us` 0 means the file's link time. */
int hist_record(struct hist *h, uint32_t gen, const char *disk, int64_t time_us,
		struct hist_progress *pr, char *err, size_t errlen);

/* --- rebuilding (hist-apply.c, hist-restore.c, hist-prune.c) --- */
/* Write the sectors the VHD `overlay` holds into `out` (raw, or a VHD
 * when is_vhd) at their offsets. */
int hist_apply(const char *overlay, const char *out, int is_vhd, char *err, size_t errlen);
/* Build the base as of `gen` into the new file `out` (durable), checking
 * every checksum on the way. */
int hist_build(struct hist *h, uint32_t gen, const char *out, char *err, size_t errlen);
/* The generation current at `time_us` (the last one at or before it). */
int hist_gen_at(const struct hist *h, int64_t time_us, uint32_t *gen, char *err, size_t errlen);
/* Build generation `gen` into OUT (a new file; never anything in the
 * history): refuses when OUT exists or its filesystem lacks the room. */
int hist_restore(struct hist *h, uint32_t gen, const char *out, char *err, size_t errlen);
/* Fold the generations before `before` into the saved base. *folded says
 * how many overlays went (0: nothing to do). Needs the lock. */
int hist_prune(struct hist *h, uint32_t before, int *folded, char *err, size_t errlen);

/* --- fault injection (hist-fault.c) --- */
/* The runtime's td_fault, when the caller links it: crash tests stop a
 * history step at a named point. Returns 0 or a negative errno. */
void hist_set_fault_hook(int (*hook)(const char *point));
int hist_fault(const char *point);

#endif
