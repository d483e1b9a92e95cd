/* The NBD wire protocol (the NBD project's doc/proto.md): constants and
 * the pure parsing functions of nbd-parse.c, which touch no socket and no
 * global state so a fuzzer can drive them on a byte buffer. */
#ifndef RENEW_NBD_PROTO_H
#define RENEW_NBD_PROTO_H

#include <stddef.h>
#include <stdint.h>

/* Handshake. */
#define NBD_MAGIC            0x4e42444d41474943ull /* "NBDMAGIC" */
#define NBD_IHAVEOPT         0x49484156454f5054ull /* "IHAVEOPT" */
#define NBD_REP_MAGIC        0x0003e889045565a9ull
#define NBD_FLAG_FIXED_NEWSTYLE 0x0001
#define NBD_FLAG_NO_ZEROES      0x0002
#define NBD_FLAG_C_FIXED_NEWSTYLE NBD_FLAG_FIXED_NEWSTYLE
#define NBD_FLAG_C_NO_ZEROES      NBD_FLAG_NO_ZEROES

/* Options. */
#define NBD_OPT_EXPORT_NAME       1
#define NBD_OPT_ABORT             2
#define NBD_OPT_LIST              3
#define NBD_OPT_STARTTLS          5
#define NBD_OPT_INFO              6
#define NBD_OPT_GO                7
#define NBD_OPT_STRUCTURED_REPLY  8
#define NBD_OPT_LIST_META_CONTEXT 9
#define NBD_OPT_SET_META_CONTEXT  10
#define NBD_OPT_EXTENDED_HEADERS  11

/* Option replies. */
#define NBD_REP_ACK          1
#define NBD_REP_SERVER       2
#define NBD_REP_INFO         3
#define NBD_REP_META_CONTEXT 4
#define NBD_REP_FLAG_ERROR   (1u << 31)
#define NBD_REP_ERR_UNSUP    (1u | NBD_REP_FLAG_ERROR)
#define NBD_REP_ERR_POLICY   (2u | NBD_REP_FLAG_ERROR)
#define NBD_REP_ERR_INVALID  (3u | NBD_REP_FLAG_ERROR)
#define NBD_REP_ERR_PLATFORM (4u | NBD_REP_FLAG_ERROR)
#define NBD_REP_ERR_TLS_REQD (5u | NBD_REP_FLAG_ERROR)
#define NBD_REP_ERR_UNKNOWN  (6u | NBD_REP_FLAG_ERROR)
#define NBD_REP_ERR_SHUTDOWN (7u | NBD_REP_FLAG_ERROR)
#define NBD_REP_ERR_BLOCK_SIZE_REQD (8u | NBD_REP_FLAG_ERROR)
#define NBD_REP_ERR_TOO_BIG  (9u | NBD_REP_FLAG_ERROR)

/* NBD_REP_INFO types. */
#define NBD_INFO_EXPORT      0
#define NBD_INFO_NAME        1
#define NBD_INFO_DESCRIPTION 2
#define NBD_INFO_BLOCK_SIZE  3

/* Transmission flags. */
#define NBD_FLAG_HAS_FLAGS         (1u << 0)
#define NBD_FLAG_READ_ONLY         (1u << 1)
#define NBD_FLAG_SEND_FLUSH        (1u << 2)
#define NBD_FLAG_SEND_FUA          (1u << 3)
#define NBD_FLAG_ROTATIONAL        (1u << 4)
#define NBD_FLAG_SEND_TRIM         (1u << 5)
#define NBD_FLAG_SEND_WRITE_ZEROES (1u << 6)
#define NBD_FLAG_SEND_DF           (1u << 7)
#define NBD_FLAG_CAN_MULTI_CONN    (1u << 8)
#define NBD_FLAG_SEND_RESIZE       (1u << 9)
#define NBD_FLAG_SEND_CACHE        (1u << 10)
#define NBD_FLAG_SEND_FAST_ZERO    (1u << 11)

/* Requests. */
#define NBD_REQUEST_MAGIC 0x25609513u
#define NBD_REQUEST_SIZE  28
#define NBD_CMD_READ         0
#define NBD_CMD_WRITE        1
#define NBD_CMD_DISC         2
#define NBD_CMD_FLUSH        3
#define NBD_CMD_TRIM         4
#define NBD_CMD_CACHE        5
#define NBD_CMD_WRITE_ZEROES 6
#define NBD_CMD_BLOCK_STATUS 7
#define NBD_CMD_FLAG_FUA       (1u << 0)
#define NBD_CMD_FLAG_NO_HOLE   (1u << 1)
#define NBD_CMD_FLAG_DF        (1u << 2)
#define NBD_CMD_FLAG_REQ_ONE   (1u << 3)
#define NBD_CMD_FLAG_FAST_ZERO (1u << 4)

/* Replies. */
#define NBD_SIMPLE_REPLY_MAGIC     0x67446698u
#define NBD_STRUCTURED_REPLY_MAGIC 0x668e33efu
#define NBD_SIMPLE_REPLY_SIZE      16
#define NBD_CHUNK_HEADER_SIZE      20
#define NBD_REPLY_FLAG_DONE        (1u << 0)
#define NBD_REPLY_TYPE_NONE         0
#define NBD_REPLY_TYPE_OFFSET_DATA  1
#define NBD_REPLY_TYPE_OFFSET_HOLE  2
#define NBD_REPLY_TYPE_BLOCK_STATUS 5
#define NBD_REPLY_TYPE_ERROR        32769
#define NBD_REPLY_TYPE_ERROR_OFFSET 32770

/* Errors on the wire. */
#define NBD_EPERM     1
#define NBD_EIO       5
#define NBD_ENOMEM    12
#define NBD_EINVAL    22
#define NBD_ENOSPC    28
#define NBD_EOVERFLOW 75
#define NBD_ENOTSUP   95
#define NBD_ESHUTDOWN 108

/* Meta contexts. */
#define NBD_META_BASE_ALLOCATION "base:allocation"
#define NBD_META_ID_BASE_ALLOCATION 1
#define NBD_STATE_HOLE (1u << 0)
#define NBD_STATE_ZERO (1u << 1)

/* Our limits. */
#define NBD_MIN_BLOCK   512u
#define NBD_PREF_BLOCK  4096u
#define NBD_MAX_PAYLOAD (32u << 20)  /* largest READ/WRITE */
#define NBD_MAX_OPTION  (64u << 10)  /* largest option data we read */
#define NBD_MAX_NAME    4096u        /* NBD's limit on a name */

/* Big-endian accessors. */
static inline uint16_t nbd_get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t nbd_get32(const uint8_t *p)
{ return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }
static inline uint64_t nbd_get64(const uint8_t *p) { return (uint64_t)nbd_get32(p) << 32 | nbd_get32(p + 4); }
static inline void nbd_put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void nbd_put32(uint8_t *p, uint32_t v)
{ p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v; }
static inline void nbd_put64(uint8_t *p, uint64_t v) { nbd_put32(p, (uint32_t)(v >> 32)); nbd_put32(p + 4, (uint32_t)v); }

/* An option header (16 bytes: magic, option, length). */
struct nbd_option {
	uint32_t option;
	uint32_t length;
};
/* 0 and `opt` filled; -1 on a bad magic. `buf` holds 16 bytes. */
int nbd_parse_option_header(const uint8_t *buf, struct nbd_option *opt);

/* The data of NBD_OPT_GO / NBD_OPT_INFO: export name and info requests. */
struct nbd_go {
	const char *name;     /* points into the data; not terminated */
	uint32_t name_len;
	uint16_t nrequests;
	const uint8_t *requests; /* nrequests big-endian u16 */
};
/* 0, or an NBD_REP_ERR_* for malformed data. */
uint32_t nbd_parse_go(const uint8_t *data, uint32_t len, struct nbd_go *go);

/* The data of NBD_OPT_{SET,LIST}_META_CONTEXT: each query is reported
 * through `cb` (name, length); returns 0 or an NBD_REP_ERR_*. The name is
 * checked before any query is reported. */
struct nbd_meta {
	const char *export_name;
	uint32_t export_len;
	uint32_t nqueries;
};
uint32_t nbd_parse_meta(const uint8_t *data, uint32_t len, struct nbd_meta *meta,
			void (*cb)(void *arg, const char *query, uint32_t qlen), void *arg);
/* Does the meta context query select base:allocation? (LIST: "base:" too). */
int nbd_meta_matches(const char *query, uint32_t qlen, int listing);

/* A request header. */
struct nbd_request {
	uint16_t flags;
	uint16_t type;
	uint64_t handle;
	uint64_t offset;
	uint32_t length;
};
/* 0 and `req` filled; -1 on a bad magic. `buf` holds NBD_REQUEST_SIZE bytes. */
int nbd_parse_request(const uint8_t *buf, struct nbd_request *req);

/* What the server must do with a parsed request. */
struct nbd_verdict {
	uint32_t error;        /* an NBD_E* to reply with, or 0 to execute */
	uint32_t payload;      /* payload bytes following the header to read */
	int close;             /* close the connection after replying */
	int disc;              /* NBD_CMD_DISC: no reply, close once drained */
};
/* The export as the request checker sees it. */
struct nbd_export_info {
	uint64_t size;         /* bytes */
	int read_only;
	int structured;        /* structured replies negotiated */
	int meta_base_allocation;
};
/* Decide a request's fate: range, alignment, size, permissions. */
void nbd_check_request(const struct nbd_request *req, const struct nbd_export_info *ex,
		       struct nbd_verdict *v);

/* The extents of base:allocation over [offset, offset+length): one allocated
 * data extent for now (the driver may report holes later). Writes up to
 * `max` (length, flags) pairs; returns how many. */
int nbd_block_status(const struct nbd_export_info *ex, uint64_t offset, uint32_t length,
		     uint32_t (*extents)[2], int max);

/* Map a negative errno to an NBD error. */
uint32_t nbd_errno(int err);
const char *nbd_cmd_name(uint16_t type);

#endif
