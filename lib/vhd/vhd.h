/* The VHD 1.0 format (dynamic and differencing disks) as blktap's libvhd
 * writes it: structures, checksums, BAT, sector bitmaps, parent locators,
 * create/open/validate and crash-ordered block allocation.
 *
 * This library knows bytes on disk only: no event loop, no I/O policy.
 * Every call is synchronous (pread/pwrite on a buffered descriptor) so
 * the offline tool, the fuzzers and the driver's metadata path share it.
 *
 * Errors: functions return 0 or a negative errno and leave a message that
 * names the operation, the file and the reason in vhd_errmsg().
 */
#ifndef RENEW_VHD_H
#define RENEW_VHD_H

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>

#define VHD_SECTOR_SIZE       512u
#define VHD_SECTOR_SHIFT      9
#define VHD_BLOCK_SIZE        (2u << 20)          /* 2 MiB, the only size written */
#define VHD_SECTORS_PER_BLOCK (VHD_BLOCK_SIZE >> VHD_SECTOR_SHIFT)
#define VHD_BITMAP_BYTES      (VHD_SECTORS_PER_BLOCK / 8) /* 512: one sector */
#define VHD_DATA_ALIGN        4096u   /* block data starts 4 KiB-aligned */
#define VHD_MAX_VIRTUAL_SIZE  (2040ull << 30)     /* the ecosystem's cap */
#define VHD_BAT_UNUSED        0xFFFFFFFFu
#define VHD_FOOTER_SIZE       512u
#define VHD_HEADER_SIZE       1024u
#define VHD_HEADER_OFFSET     512u
#define VHD_BAT_OFFSET        1536u
#define VHD_EPOCH_OFFSET      946684800u /* 2000-01-01T00:00:00Z in Unix time */

enum vhd_disk_type {
	VHD_TYPE_FIXED = 2,
	VHD_TYPE_DYNAMIC = 3,
	VHD_TYPE_DIFF = 4,
};

/* Parent locator platform codes. */
#define VHD_PLAT_NONE 0u
#define VHD_PLAT_MACX 0x4D616358u /* UTF-8 file URL */
#define VHD_PLAT_W2KU 0x57326B75u /* UTF-16LE absolute path */
#define VHD_PLAT_W2RU 0x57327275u /* UTF-16LE relative path */

/* Footer, host byte order. */
struct vhd_footer {
	char cookie[8];
	uint32_t features;
	uint32_t ff_version;
	uint64_t data_offset;
	uint32_t timestamp;
	char creator_app[4];
	uint32_t creator_ver;
	uint32_t creator_os;
	uint64_t orig_size;
	uint64_t curr_size;
	uint16_t cyls;
	uint8_t heads;
	uint8_t spt;
	uint32_t type;
	uint32_t checksum;
	uint8_t uuid[16];
	uint8_t saved;
	uint8_t hidden;
};

struct vhd_parent_locator {
	uint32_t code;
	uint32_t data_space;  /* as stored (sectors per the spec; bytes by some writers) */
	uint32_t data_len;    /* bytes */
	uint64_t data_offset; /* bytes */
};

/* Dynamic disk header, host byte order. */
struct vhd_header {
	char cookie[8];
	uint64_t data_offset;
	uint64_t table_offset;
	uint32_t hdr_version;
	uint32_t max_bat_size;
	uint32_t block_size;
	uint32_t checksum;
	uint8_t prt_uuid[16];
	uint32_t prt_ts;
	uint16_t prt_name[256];  /* UTF-16 code units, host order */
	struct vhd_parent_locator loc[8];
};

/* An open dynamic or differencing VHD. */
struct vhd_image {
	int fd;                  /* buffered descriptor: metadata I/O */
	char *path;
	int rdonly;
	struct vhd_footer footer;
	struct vhd_header header;
	uint32_t *bat;           /* header.max_bat_size entries, host order */
	uint32_t bat_entries;    /* blocks covering the virtual size */
	uint32_t spb;            /* sectors per block */
	uint32_t bm_secs;        /* bitmap sectors per block (1 for 2 MiB) */
	uint64_t footer_off;     /* where the end footer lives (bytes) */
	uint64_t first_block;    /* lowest byte offset a block may use */
};

/* Last error message (names the operation, file and reason). */
const char *vhd_errmsg(void);
/* Set the last error message; returns -err for `return vhd_fail(...)`. */
int vhd_fail(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* --- pure encoding/decoding (no I/O; fuzzed) --- */
uint32_t vhd_checksum(const uint8_t *buf, size_t len, size_t csum_off);
void vhd_footer_encode(const struct vhd_footer *f, uint8_t out[512]);
/* Decode and validate cookie, checksum, type and sizes. */
int vhd_footer_decode(const uint8_t in[512], struct vhd_footer *f, const char *path);
void vhd_header_encode(const struct vhd_header *h, uint8_t out[1024]);
int vhd_header_decode(const uint8_t in[1024], struct vhd_header *h, const char *path);
void vhd_geometry(uint64_t size, uint16_t *cyls, uint8_t *heads, uint8_t *spt);
void vhd_uuid_generate(uint8_t uuid[16]);
void vhd_uuid_format(const uint8_t uuid[16], char out[37]);
int vhd_uuid_is_null(const uint8_t uuid[16]);

/* --- files --- */
/* Create a dynamic disk of `size` bytes (multiple of 512, <= 2040 GiB). */
int vhd_create(const char *path, uint64_t size);
/* Create a differencing disk over `parent` (raw or VHD, detected); the
 * locators record `parent` relative to the child's directory and absolute. */
int vhd_snapshot(const char *parent, const char *child);
/* Like vhd_snapshot but with an explicit virtual size and parent identity:
 * the building block of renew's fresh overlay. */
int vhd_snapshot_ex(const char *parent, const char *child, uint64_t size, int excl);

/* Flags for vhd_open. */
#define VHD_OPEN_RDONLY  0x1
#define VHD_OPEN_NOCHECK 0x2  /* skip BAT validation (check/repair use it) */
int vhd_open(struct vhd_image *img, const char *path, int flags);
void vhd_close(struct vhd_image *img);
/* Is this file a VHD (valid footer at the end or copy at 0)? 1, 0 or <0. */
int vhd_probe(const char *path);

/* Block state. */
static inline uint32_t vhd_block_of(uint64_t sec) { return (uint32_t)(sec / VHD_SECTORS_PER_BLOCK); }
static inline int vhd_block_allocated(const struct vhd_image *img, uint32_t blk)
{ return blk < img->bat_entries && img->bat[blk] != VHD_BAT_UNUSED; }
/* Byte offset of the first data sector of an allocated block. */
static inline uint64_t vhd_block_data_off(const struct vhd_image *img, uint32_t blk)
{ return ((uint64_t)img->bat[blk] + img->bm_secs) << VHD_SECTOR_SHIFT; }
static inline uint64_t vhd_block_bitmap_off(const struct vhd_image *img, uint32_t blk)
{ return (uint64_t)img->bat[blk] << VHD_SECTOR_SHIFT; }

/* Read / write a block's sector bitmap (VHD_BITMAP_BYTES, MSB first). */
int vhd_read_bitmap(struct vhd_image *img, uint32_t blk, uint8_t *bm);
int vhd_write_bitmap(struct vhd_image *img, uint32_t blk, const uint8_t *bm);
static inline int vhd_bitmap_test(const uint8_t *bm, uint32_t i)
{ return (bm[i >> 3] >> (7 - (i & 7))) & 1; }
static inline void vhd_bitmap_set(uint8_t *bm, uint32_t i)
{ bm[i >> 3] |= (uint8_t)(0x80 >> (i & 7)); }

/* Crash-ordered block allocation, in three steps the caller sequences:
 *  1. vhd_alloc_reserve: pick the block's place at the end of the file and
 *     write the footer past it (a crash now leaks the space, nothing more);
 *  2. the caller writes the block's data and its bitmap (vhd_write_bitmap
 *     needs the BAT entry, so use vhd_write_bitmap_at);
 *  3. vhd_alloc_commit: write the BAT entry; the block now exists.
 * Returns the sector offset of the block's bitmap via *bm_sec. */
int vhd_alloc_reserve(struct vhd_image *img, uint32_t blk, uint32_t *bm_sec);
int vhd_write_bitmap_at(struct vhd_image *img, uint32_t bm_sec, const uint8_t *bm);
int vhd_alloc_commit(struct vhd_image *img, uint32_t blk, uint32_t bm_sec);
/* Undo step 1 when step 2 failed (no room, an I/O error) and no block was
 * placed after this one since: the footer goes back to `prev_footer_off`
 * (footer_off before the reserve) and the file shrinks to it. Otherwise
 * the space stays reserved, a leak `check --repair` reclaims. */
int vhd_alloc_cancel(struct vhd_image *img, uint32_t bm_sec, uint64_t prev_footer_off);
/* All three at once with an empty-data bitmap `bm` (synchronous tools). */
int vhd_alloc_block(struct vhd_image *img, uint32_t blk, const uint8_t *bm);

/* Write all of `buf` at `off` through the metadata descriptor; the error
 * names the file and `what` was being written. */
int vhd_write_at(struct vhd_image *img, const void *buf, size_t len, uint64_t off, const char *what);
/* Tests fail or kill at a named metadata write (vhd.write.bitmap,
 * vhd.write.bat-sector, vhd.write.end-footer, ...): the library sits below
 * the runtime, so the runtime's fault check is handed in. */
void vhd_set_fault_hook(int (*hook)(const char *point));
/* Write the footer at footer_off and the copy at 0. */
int vhd_write_footers(struct vhd_image *img);
int vhd_write_header(struct vhd_image *img);

/* --- parents and chains --- */
/* Resolve the parent's path from the locators (relative to the child's
 * directory first, then absolute, then the header's parent name).
 * Returns 0 and a malloc'd path, -ENOENT naming what was tried, or
 * -EINVAL for a dynamic disk (no parent). */
int vhd_parent_path(const struct vhd_image *img, char **out);
/* Check that `parent` (a file path) is the parent `img` records:
 * VHD parents by UUID, raw parents by size >= virtual size. */
int vhd_validate_parent(const struct vhd_image *img, const char *parent);

enum vhd_layer_kind { LAYER_RAW, LAYER_VHD };
struct vhd_layer {
	enum vhd_layer_kind kind;
	char *path;
	int fd;                  /* raw: the data; vhd: img.fd */
	uint64_t size;           /* raw: file size; vhd: virtual size */
	struct vhd_image img;    /* vhd only */
};
/* An image and its ancestors, top first. */
struct vhd_bm_cache;
struct vhd_chain {
	int depth;
	struct vhd_layer *layers;
	struct vhd_bm_cache *bmc;  /* bitmaps of the layers (read-only view) */
};
/* Open `path` (VHD or raw) and every parent, read-only unless flags say
 * otherwise for the top; detects loops and missing or mismatched parents. */
int vhd_chain_open(struct vhd_chain *c, const char *path, int top_flags);
void vhd_chain_close(struct vhd_chain *c);
/* Read `secs` sectors at `sec` of the chain's view (sync). */
int vhd_chain_read(struct vhd_chain *c, void *buf, uint64_t sec, uint32_t secs);
/* Which layer provides sector `sec` and for how many sectors in a row
 * (up to `max`): returns the layer index or depth when no layer does
 * (reads as zeros). */
int vhd_chain_locate(struct vhd_chain *c, uint64_t sec, uint32_t max, uint32_t *run);

/* ------------------------------------------------------------------ */
/* Additions (after the original contract; nothing above changed meaning). */

#include <time.h>

/* Seconds since 2000-01-01 UTC, the format's clock. */
uint32_t vhd_time(time_t t);
/* Big-endian 32-bit load/store (BAT entries). */
uint32_t vhd_be32(const uint8_t *p);
void vhd_put_be32(uint8_t *p, uint32_t v);

static inline void vhd_bitmap_clear(uint8_t *bm, uint32_t i)
{ bm[i >> 3] &= (uint8_t)~(0x80 >> (i & 7)); }
/* Bytes of one block's bitmap as stored (bm_secs sectors). vhd_read_bitmap
 * and vhd_write_bitmap* move this many bytes: VHD_BITMAP_BYTES for the
 * 2 MiB blocks we write. Images made by others and opened read-only may
 * have other block sizes: use img->spb, not VHD_SECTORS_PER_BLOCK, there
 * (vhd_open refuses a non-2 MiB block size unless VHD_OPEN_RDONLY). */
static inline uint32_t vhd_bitmap_bytes(const struct vhd_image *img)
{ return img->bm_secs << VHD_SECTOR_SHIFT; }
/* Virtual size in bytes. */
static inline uint64_t vhd_size(const struct vhd_image *img)
{ return img->footer.curr_size; }

/* Size of the BAT area on disk: max_bat_size entries padded to 4 KiB. */
uint64_t vhd_bat_bytes(uint32_t max_bat_size);
/* Where a new block's bitmap goes when the file ends (footer) at footer_off:
 * the data that follows the bitmap starts VHD_DATA_ALIGN-aligned. */
uint64_t vhd_next_block_off(const struct vhd_image *img, uint64_t footer_off);
/* Write one BAT entry (the 512-byte BAT sector holding it) from img->bat. */
int vhd_write_bat_entry(struct vhd_image *img, uint32_t blk);

/* vhd_snapshot_ex: size 0 means the parent's virtual size (raw: its file
 * size); excl 0 creates or truncates `child` (a temporary name), 1 refuses
 * an existing file. A raw parent must cover `size`. vhd_alloc_* do not
 * fsync: callers order durability (flush before commit for power cuts). */

/* Flag for vhd_open: accept a corrupt end footer when the copy at 0 is
 * valid, and a corrupt copy at 0 when the end footer is (check/repair). */
#define VHD_OPEN_ANYFOOTER 0x4

/* The decoded text of parent locator `i` (a malloc'd path as recorded,
 * "file://" stripped, '\' turned into '/'); -ENOENT if it has none. */
int vhd_locator_read(const struct vhd_image *img, int i, char **out);
/* Bytes a locator's data_space stands for (sectors per the spec; values
 * >= 512 are taken as bytes, as blktap does). */
uint64_t vhd_locator_space(const struct vhd_parent_locator *l);
/* The header's parent name as UTF-8 (malloc'd; "" when empty). */
char *vhd_parent_name(const struct vhd_image *img);
/* UTF-8 <-> UTF-16 code units (host order). Return units/bytes or -EINVAL. */
int vhd_utf8_to_utf16(const char *s, uint16_t *out, size_t max_units);
int vhd_utf16_to_utf8(const uint16_t *in, size_t units, char *out, size_t max_bytes);

/* Check an image (and its parents) for every inconsistency, calling
 * report(arg, line) once per finding. Lines starting "leak:" are
 * space a crash left behind (not an error); "repaired:" lines say what
 * --repair did. Returns the number of errors (0 = clean), <0 when the
 * file cannot be read at all. With repair, rewrites a torn footer from
 * the valid copy and truncates leaked space at the end, nothing else. */
int vhd_check(const char *path, int repair,
	      void (*report)(void *arg, const char *line), void *arg);

/* Walk the file's layout (metadata extents and every used BAT entry) and
 * call problem(arg, msg) for each block past the end footer, overlapping
 * metadata or another block, and each locator past the end. *used_end
 * gets the end of the last metadata or block byte. Returns the count. */
int vhd_layout_scan(const struct vhd_image *img,
		    void (*problem)(void *arg, const char *msg), void *arg,
		    uint64_t *used_end);
/* End of the header, BAT and locators: where blocks may start. */
uint64_t vhd_metadata_end(const struct vhd_image *img);

/* Size of a file or block device (raw parents may be either). */
int vhd_file_size(const char *path, uint64_t *size);

/* Data sectors set in a bitmap of `bits` bits. */
uint32_t vhd_bitmap_count(const uint8_t *bm, uint32_t bits);

#endif
