/* The NBD export of a vbd: a listening unix socket, and per connection a
 * non-blocking state machine (fixed newstyle handshake, then transmission)
 * with deep queues and out-of-order replies. Parsing and checking live in
 * nbd-parse.c; this file moves bytes and requests. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>
#include "iobuf.h"
#include "nbd-proto.h"
#include "nbd-server.h"
#include "scheduler.h"

#define IN_BUF_SIZE     (NBD_MAX_OPTION + 64 * 1024) /* an option's data always fits */
#define MAX_INFLIGHT    256            /* requests per connection before we stop reading */
#define MAX_BUFFERED    (128u << 20)   /* bytes of buffers per connection, likewise */
#define MAX_CONNS       1024           /* per export */
#define POOL_BUF_MAX    (2u << 20)     /* buffers kept for reuse up to this size */
#define POOL_BYTES_MAX  (32u << 20)    /* and up to this much per connection */
#define READ_BUDGET     (4u << 20)     /* bytes read per wakeup: fairness between clients */
#define HANDSHAKE_MS    60000          /* a handshake must finish in this time */
#define MAX_IOV         128

enum conn_state {
	CS_CLIENT_FLAGS,   /* waiting for the client's 4 flag bytes */
	CS_OPT_HEADER,     /* waiting for an option header */
	CS_OPT_DATA,       /* waiting for an option's data */
	CS_OPT_DISCARD,    /* skipping an oversized option's data */
	CS_TRANSMISSION,
};

struct nbd_export {
	td_vbd_t *vbd;
	char *path;
	int lfd;
	int lid;
	int accept_timer;
	struct list_head conns;
	struct list_head entry;
};

struct nbd_conn;

/* One request, from its header to its reply having left. */
struct nbd_req {
	td_vbd_request_t vreq;
	struct nbd_conn *conn;
	struct nbd_request hdr;
	char *buf;
	size_t cap;
	uint32_t error;
	uint8_t reply[48];
	size_t reply_len;
	size_t data_len;        /* bytes of buf sent after the reply header */
	struct list_head entry; /* the connection's output queue */
	struct nbd_req *next_free;
};

struct nbd_conn {
	struct nbd_export *exp; /* NULL once the export is gone */
	td_vbd_t *vbd;
	int fd;
	int id;
	int state;
	int dead;               /* socket closed; freed once nothing is at the vbd */
	int closing;            /* read no more; close once every reply is out */
	int structured;
	int meta_ba;
	int no_zeroes;
	int want_write;
	int events;
	int timer;
	int last_short;         /* the last recv got less than it asked for */
	uint8_t *in;
	size_t in_len, in_off;
	struct nbd_option opt;
	uint64_t discard_left;  /* option or payload bytes to skip */
	struct nbd_req *rx;     /* a write whose payload is being read */
	uint32_t rx_done;
	uint8_t *hs_out;        /* handshake replies not yet sent */
	size_t hs_len, hs_cap, hs_off;
	struct list_head outq;  /* replies ready to send, in completion order */
	size_t out_off;         /* bytes of the first reply already sent */
	int inflight;           /* requests parsed and not yet replied */
	int submitted;          /* requests at the vbd */
	size_t buffered;        /* bytes of request buffers in use */
	struct nbd_req *pool;
	size_t pool_bytes;
	int dirty;
	struct list_head dirty_entry;
	struct list_head entry; /* the export's connections */
};

static struct list_head exports = LIST_HEAD_INIT(exports);
static struct list_head dirty = LIST_HEAD_INIT(dirty);
static struct list_head zombies = LIST_HEAD_INIT(zombies); /* closed, requests at the vbd */
static int flush_hook;

static void conn_close(struct nbd_conn *c);
static void conn_process(struct nbd_conn *c);
static void conn_update_events(struct nbd_conn *c);

/* The export info the request checker needs. */
static void export_info(struct nbd_conn *c, struct nbd_export_info *ex)
{
	ex->size = c->vbd->size << 9;
	ex->read_only = !!(c->vbd->flags & TD_OPEN_RDONLY);
	ex->structured = c->structured;
	ex->meta_base_allocation = c->meta_ba;
}

/* Ask the flush hook to send this connection's output. */
static void conn_mark_dirty(struct nbd_conn *c)
{
	if (c->dirty || c->dead)
		return;
	c->dirty = 1;
	list_add_tail(&c->dirty_entry, &dirty);
	sched_kick();
}

/* Append handshake bytes to the output. */
static int hs_put(struct nbd_conn *c, const void *data, size_t len)
{
	if (c->hs_len + len > c->hs_cap) {
		size_t cap = c->hs_cap ? c->hs_cap * 2 : 1024;
		uint8_t *n;

		while (cap < c->hs_len + len)
			cap *= 2;
		n = realloc(c->hs_out, cap);
		if (!n)
			return -ENOMEM;
		c->hs_out = n;
		c->hs_cap = cap;
	}
	memcpy(c->hs_out + c->hs_len, data, len);
	c->hs_len += len;
	conn_mark_dirty(c);
	return 0;
}

/* An option reply: header and `len` bytes of data. */
static int opt_reply(struct nbd_conn *c, uint32_t type, const void *data, uint32_t len)
{
	uint8_t h[20];

	nbd_put64(h, NBD_REP_MAGIC);
	nbd_put32(h + 8, c->opt.option);
	nbd_put32(h + 12, type);
	nbd_put32(h + 16, len);
	if (hs_put(c, h, sizeof(h)) < 0 || (len && hs_put(c, data, len) < 0))
		return -ENOMEM;
	return 0;
}

/* The transmission flags we offer on this connection. */
static uint16_t transmission_flags(struct nbd_conn *c)
{
	uint16_t f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM |
		     NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_CAN_MULTI_CONN;

	if (c->structured)
		f |= NBD_FLAG_SEND_DF;
	if (c->vbd->flags & TD_OPEN_RDONLY)
		f |= NBD_FLAG_READ_ONLY;
	return f;
}

/* The handshake is over: requests follow. */
static void enter_transmission(struct nbd_conn *c)
{
	c->state = CS_TRANSMISSION;
	if (c->timer) {
		sched_cancel_timer(c->timer);
		c->timer = 0;
	}
	DPRINTF("nbd %s: connection %d in transmission (%s replies)", c->exp ? c->exp->path : "",
		c->fd, c->structured ? "structured" : "simple");
}

/* NBD_OPT_EXPORT_NAME: no reply but the export's size and flags. */
static void opt_export_name(struct nbd_conn *c)
{
	uint8_t r[10 + 124];
	size_t n = c->no_zeroes ? 10 : sizeof(r);

	memset(r, 0, sizeof(r));
	nbd_put64(r, c->vbd->size << 9);
	nbd_put16(r + 8, transmission_flags(c));
	hs_put(c, r, n);
	enter_transmission(c);
}

/* NBD_OPT_INFO / NBD_OPT_GO: describe the export; GO also starts it. */
static void opt_info_go(struct nbd_conn *c, const uint8_t *data)
{
	struct nbd_go go;
	uint8_t r[14];
	uint32_t e = nbd_parse_go(data, c->opt.length, &go);

	if (e) {
		opt_reply(c, e, NULL, 0);
		return;
	}
	nbd_put16(r, NBD_INFO_EXPORT);
	nbd_put64(r + 2, c->vbd->size << 9);
	nbd_put16(r + 10, transmission_flags(c));
	opt_reply(c, NBD_REP_INFO, r, 12);
	nbd_put16(r, NBD_INFO_BLOCK_SIZE);
	nbd_put32(r + 2, NBD_MIN_BLOCK);
	nbd_put32(r + 6, NBD_PREF_BLOCK);
	nbd_put32(r + 10, NBD_MAX_PAYLOAD);
	opt_reply(c, NBD_REP_INFO, r, 14);
	for (int i = 0; i < go.nrequests; i++) {
		uint16_t type = nbd_get16(go.requests + 2 * i);
		const char *desc = c->vbd->params ? c->vbd->params : "";
		uint8_t d[2 + 256];
		size_t n = strlen(desc) < 256 ? strlen(desc) : 256;

		if (type == NBD_INFO_NAME && go.name_len <= 256) {
			nbd_put16(d, NBD_INFO_NAME);
			memcpy(d + 2, go.name, go.name_len);
			opt_reply(c, NBD_REP_INFO, d, 2 + go.name_len);
		} else if (type == NBD_INFO_DESCRIPTION) {
			nbd_put16(d, NBD_INFO_DESCRIPTION);
			memcpy(d + 2, desc, n);
			opt_reply(c, NBD_REP_INFO, d, (uint32_t)(2 + n));
		}
	}
	opt_reply(c, NBD_REP_ACK, NULL, 0);
	if (c->opt.option == NBD_OPT_GO)
		enter_transmission(c);
}

struct meta_walk {
	struct nbd_conn *c;
	int listing;
	int matched;
};

/* One meta context query: answer base:allocation once. */
static void meta_query(void *arg, const char *q, uint32_t qlen)
{
	struct meta_walk *w = arg;

	if (!w->matched && nbd_meta_matches(q, qlen, w->listing))
		w->matched = 1;
}

/* Reply NBD_REP_META_CONTEXT for base:allocation. */
static void meta_reply(struct nbd_conn *c)
{
	static const char name[] = NBD_META_BASE_ALLOCATION;
	uint8_t r[4 + sizeof(name)];

	nbd_put32(r, NBD_META_ID_BASE_ALLOCATION);
	memcpy(r + 4, name, sizeof(name) - 1);
	opt_reply(c, NBD_REP_META_CONTEXT, r, (uint32_t)(4 + sizeof(name) - 1));
}

/* NBD_OPT_{LIST,SET}_META_CONTEXT. */
static void opt_meta(struct nbd_conn *c, const uint8_t *data)
{
	struct meta_walk w = { c, c->opt.option == NBD_OPT_LIST_META_CONTEXT, 0 };
	struct nbd_meta meta;
	uint32_t e;

	if (!w.listing && !c->structured) {
		opt_reply(c, NBD_REP_ERR_INVALID, NULL, 0);
		return;
	}
	e = nbd_parse_meta(data, c->opt.length, &meta, meta_query, &w);
	if (e) {
		opt_reply(c, e, NULL, 0);
		return;
	}
	if (w.listing && meta.nqueries == 0)
		w.matched = 1;
	if (!w.listing)
		c->meta_ba = w.matched;
	if (w.matched)
		meta_reply(c);
	opt_reply(c, NBD_REP_ACK, NULL, 0);
}

/* NBD_OPT_LIST: our one export, named "". */
static void opt_list(struct nbd_conn *c)
{
	uint8_t r[4] = { 0, 0, 0, 0 };

	if (c->opt.length) {
		opt_reply(c, NBD_REP_ERR_INVALID, NULL, 0);
		return;
	}
	opt_reply(c, NBD_REP_SERVER, r, 4);
	opt_reply(c, NBD_REP_ACK, NULL, 0);
}

/* Act on a complete option (header in c->opt, data at `data`). */
static void handle_option(struct nbd_conn *c, const uint8_t *data)
{
	DPRINTF("nbd: connection %d: option %u (%u bytes)", c->fd, c->opt.option, c->opt.length);
	switch (c->opt.option) {
	case NBD_OPT_EXPORT_NAME:
		opt_export_name(c);
		break;
	case NBD_OPT_ABORT:
		opt_reply(c, NBD_REP_ACK, NULL, 0);
		c->closing = 1;
		break;
	case NBD_OPT_LIST:
		opt_list(c);
		break;
	case NBD_OPT_INFO:
	case NBD_OPT_GO:
		opt_info_go(c, data);
		break;
	case NBD_OPT_STRUCTURED_REPLY:
		if (c->opt.length) {
			opt_reply(c, NBD_REP_ERR_INVALID, NULL, 0);
			break;
		}
		c->structured = 1;
		opt_reply(c, NBD_REP_ACK, NULL, 0);
		break;
	case NBD_OPT_LIST_META_CONTEXT:
	case NBD_OPT_SET_META_CONTEXT:
		opt_meta(c, data);
		break;
	default:
		opt_reply(c, NBD_REP_ERR_UNSUP, NULL, 0);
		break;
	}
}

/* Unread input bytes. */
static size_t in_avail(const struct nbd_conn *c)
{
	return c->in_len - c->in_off;
}

/* Consume input during the handshake; returns 0 when it needs more. */
static int handshake_step(struct nbd_conn *c)
{
	uint8_t *p = c->in + c->in_off;

	switch (c->state) {
	case CS_CLIENT_FLAGS: {
		uint32_t f;

		if (in_avail(c) < 4)
			return 0;
		f = nbd_get32(p);
		c->in_off += 4;
		if (!(f & NBD_FLAG_C_FIXED_NEWSTYLE) || (f & ~(uint32_t)(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES))) {
			tlog(TLOG_INFO, "nbd: connection %d: client flags 0x%x refused", c->fd, f);
			conn_close(c);
			return 0;
		}
		c->no_zeroes = !!(f & NBD_FLAG_C_NO_ZEROES);
		c->state = CS_OPT_HEADER;
		return 1;
	}
	case CS_OPT_HEADER:
		if (in_avail(c) < 16)
			return 0;
		if (nbd_parse_option_header(p, &c->opt) < 0) {
			tlog(TLOG_INFO, "nbd: connection %d: bad option magic", c->fd);
			conn_close(c);
			return 0;
		}
		c->in_off += 16;
		if (c->opt.length > NBD_MAX_OPTION) {
			if (c->opt.option == NBD_OPT_EXPORT_NAME) {
				conn_close(c); /* no way to say no */
				return 0;
			}
			opt_reply(c, NBD_REP_ERR_TOO_BIG, NULL, 0);
			c->discard_left = c->opt.length;
			c->state = CS_OPT_DISCARD;
			return 1;
		}
		c->state = CS_OPT_DATA;
		return 1;
	case CS_OPT_DATA:
		if (in_avail(c) < c->opt.length)
			return 0;
		c->in_off += c->opt.length;
		c->state = CS_OPT_HEADER;
		handle_option(c, p);
		return !c->closing;
	case CS_OPT_DISCARD: {
		size_t n = in_avail(c) < c->discard_left ? in_avail(c) : c->discard_left;

		c->in_off += n;
		c->discard_left -= n;
		if (c->discard_left)
			return 0;
		c->state = CS_OPT_HEADER;
		return 1;
	}
	}
	return 0;
}

/* A request buffer of at least `len` bytes, 4 KiB-aligned, from the pool. */
static struct nbd_req *req_get(struct nbd_conn *c, size_t len)
{
	struct nbd_req *r = c->pool;

	if (r) {
		c->pool = r->next_free;
		if (r->cap)
			c->pool_bytes -= r->cap;
	} else if (!(r = calloc(1, sizeof(*r)))) {
		return NULL;
	}
	if (len > r->cap) {
		iobuf_free(r->buf, r->cap);
		r->cap = 0;
		if (!(r->buf = iobuf_alloc(len, &r->cap))) {
			free(r);
			return NULL;
		}
	}
	r->conn = c;
	r->error = 0;
	r->reply_len = r->data_len = 0;
	r->next_free = NULL;
	INIT_LIST_HEAD(&r->entry);
	c->inflight++;
	c->buffered += r->cap;
	return r;
}

/* Give a request back to the pool (its buffer too, if not too big). */
static void req_put(struct nbd_conn *c, struct nbd_req *r)
{
	c->inflight--;
	c->buffered -= r->cap;
	if (c->dead || r->cap > POOL_BUF_MAX || c->pool_bytes + r->cap > POOL_BYTES_MAX) {
		iobuf_free(r->buf, r->cap);
		r->buf = NULL;
		r->cap = 0;
	}
	if (c->dead) {
		free(r);
		return;
	}
	c->pool_bytes += r->cap;
	r->next_free = c->pool;
	c->pool = r;
}

/* Build the reply header of a finished request and queue it. */
static void req_reply(struct nbd_conn *c, struct nbd_req *r)
{
	uint8_t *h = r->reply;
	uint16_t type = r->hdr.type;

	r->data_len = 0;
	if (!c->structured) {
		nbd_put32(h, NBD_SIMPLE_REPLY_MAGIC);
		nbd_put32(h + 4, r->error);
		nbd_put64(h + 8, r->hdr.handle);
		r->reply_len = NBD_SIMPLE_REPLY_SIZE;
		if (type == NBD_CMD_READ && !r->error)
			r->data_len = r->hdr.length;
	} else {
		uint16_t ctype = NBD_REPLY_TYPE_NONE;
		uint32_t len = 0;

		if (r->error) {
			ctype = NBD_REPLY_TYPE_ERROR;
			len = 6;
			nbd_put32(h + 20, r->error);
			nbd_put16(h + 24, 0);
		} else if (type == NBD_CMD_READ && r->hdr.length) {
			ctype = NBD_REPLY_TYPE_OFFSET_DATA;
			len = 8 + r->hdr.length;
			nbd_put64(h + 20, r->hdr.offset);
			r->data_len = r->hdr.length;
		} else if (type == NBD_CMD_BLOCK_STATUS) {
			struct nbd_export_info ex;
			uint32_t ext[3][2];
			int n;

			export_info(c, &ex);
			n = nbd_block_status(&ex, r->hdr.offset, r->hdr.length, ext, 3);
			ctype = NBD_REPLY_TYPE_BLOCK_STATUS;
			len = 4 + 8 * (uint32_t)n;
			nbd_put32(h + 20, NBD_META_ID_BASE_ALLOCATION);
			for (int i = 0; i < n; i++) {
				nbd_put32(h + 24 + 8 * i, ext[i][0]);
				nbd_put32(h + 28 + 8 * i, ext[i][1]);
			}
		}
		nbd_put32(h, NBD_STRUCTURED_REPLY_MAGIC);
		nbd_put16(h + 4, NBD_REPLY_FLAG_DONE);
		nbd_put16(h + 6, ctype);
		nbd_put64(h + 8, r->hdr.handle);
		nbd_put32(h + 16, len);
		r->reply_len = NBD_CHUNK_HEADER_SIZE + (len - r->data_len);
	}
	list_add_tail(&r->entry, &c->outq);
	conn_mark_dirty(c);
}

/* The vbd finished a request: reply, or drop it if the client is gone. */
static void req_done(td_vbd_request_t *vreq, int err, void *arg)
{
	struct nbd_req *r = arg;
	struct nbd_conn *c = r->conn;

	c->submitted--;
	if (c->dead) {
		req_put(c, r); /* the flush hook frees the connection later */
		sched_kick();
		return;
	}
	r->error = nbd_errno(err);
	req_reply(c, r);
}

/* Hand a checked request to the vbd. */
static void req_submit(struct nbd_conn *c, struct nbd_req *r)
{
	td_vbd_request_t *v = &r->vreq;

	memset(v, 0, sizeof(*v));
	v->buf = r->buf;
	v->sec = r->hdr.offset >> 9;
	v->secs = r->hdr.length >> 9;
	v->fua = !!(r->hdr.flags & NBD_CMD_FLAG_FUA);
	v->cb = req_done;
	v->cb_data = r;
	switch (r->hdr.type) {
	case NBD_CMD_READ: v->op = VBD_OP_READ; break;
	case NBD_CMD_WRITE: v->op = VBD_OP_WRITE; break;
	case NBD_CMD_FLUSH: v->op = VBD_OP_FLUSH; v->sec = v->secs = 0; break;
	case NBD_CMD_TRIM: v->op = VBD_OP_TRIM; break;
	case NBD_CMD_WRITE_ZEROES: v->op = VBD_OP_WRITE_ZEROES; break;
	default:
		/* CACHE and BLOCK_STATUS need no I/O */
		req_reply(c, r);
		return;
	}
	c->submitted++;
	tapdisk_vbd_queue(c->vbd, v);
}

/* The payload of a write has fully arrived: submit or refuse it. */
static void rx_complete(struct nbd_conn *c)
{
	struct nbd_req *r = c->rx;

	c->rx = NULL;
	c->rx_done = 0;
	if (r->error)
		req_reply(c, r);
	else
		req_submit(c, r);
}

/* Consume input during transmission; returns 0 when it needs more. */
static int transmission_step(struct nbd_conn *c)
{
	struct nbd_export_info ex;
	struct nbd_request hdr;
	struct nbd_verdict v;
	struct nbd_req *r;

	if (c->rx) {
		uint32_t want = c->rx->hdr.length - c->rx_done;
		size_t n = in_avail(c) < want ? in_avail(c) : want;

		memcpy(c->rx->buf + c->rx_done, c->in + c->in_off, n);
		c->in_off += n;
		c->rx_done += (uint32_t)n;
		if (c->rx_done < c->rx->hdr.length)
			return 0;
		rx_complete(c);
		return 1;
	}
	if (c->discard_left) {
		size_t n = in_avail(c) < c->discard_left ? in_avail(c) : c->discard_left;

		c->in_off += n;
		c->discard_left -= n;
		return !c->discard_left;
	}
	if (c->inflight >= MAX_INFLIGHT || c->buffered >= MAX_BUFFERED)
		return 0; /* throttled until replies drain */
	if (in_avail(c) < NBD_REQUEST_SIZE)
		return 0;
	if (nbd_parse_request(c->in + c->in_off, &hdr) < 0) {
		tlog(TLOG_INFO, "nbd: connection %d: bad request magic, closing", c->fd);
		conn_close(c);
		return 0;
	}
	c->in_off += NBD_REQUEST_SIZE;
	export_info(c, &ex);
	nbd_check_request(&hdr, &ex, &v);
	if (v.disc) {
		DPRINTF("nbd: connection %d: DISC", c->fd);
		c->closing = 1;
		conn_mark_dirty(c); /* closes once the replies in flight are out */
		return 0;
	}
	r = req_get(c, (!v.error && (hdr.type == NBD_CMD_READ || hdr.type == NBD_CMD_WRITE)) ? hdr.length : 0);
	if (!r) {
		EPRINTF("nbd: connection %d: out of memory for a %u-byte request", c->fd, hdr.length);
		conn_close(c);
		return 0;
	}
	r->hdr = hdr;
	r->error = v.error;
	if (v.error && v.error != NBD_EPERM)
		DPRINTF("nbd: connection %d: %s offset %llu length %u refused (error %u)", c->fd,
			nbd_cmd_name(hdr.type), (unsigned long long)hdr.offset, hdr.length, v.error);
	if (v.close) {
		tlog(TLOG_INFO, "nbd: connection %d: %s of %u bytes is above the %u-byte limit, closing",
		     c->fd, nbd_cmd_name(hdr.type), hdr.length, NBD_MAX_PAYLOAD);
		req_reply(c, r);
		c->closing = 1;
		return 0;
	}
	if (v.payload && v.error) {
		c->discard_left = v.payload; /* skip it to stay in step */
		req_reply(c, r);
		return 1;
	}
	if (v.payload) {
		c->rx = r;
		c->rx_done = 0;
		return 1;
	}
	if (v.error)
		req_reply(c, r);
	else
		req_submit(c, r);
	return 1;
}

/* Parse whatever complete input there is. */
static void conn_process(struct nbd_conn *c)
{
	while (!c->dead && !c->closing) {
		int more = c->state == CS_TRANSMISSION ? transmission_step(c) : handshake_step(c);

		if (!more)
			break;
	}
	if (!c->dead && c->in_off == c->in_len)
		c->in_off = c->in_len = 0;
}

/* Is this connection reading requests now? */
static int conn_wants_input(const struct nbd_conn *c)
{
	if (c->dead || c->closing)
		return 0;
	if (c->state == CS_TRANSMISSION && !c->rx && !c->discard_left &&
	    (c->inflight >= MAX_INFLIGHT || c->buffered >= MAX_BUFFERED))
		return 0;
	return 1;
}

/* Watch for input when we want it and for room when output is stuck. */
static void conn_update_events(struct nbd_conn *c)
{
	int ev = (conn_wants_input(c) ? SCHED_READ : 0) | (c->want_write ? SCHED_WRITE : 0);

	if (c->dead || ev == c->events)
		return;
	if (sched_modify_fd(c->id, ev) == 0)
		c->events = ev;
}

/* Read into the input buffer, or straight into a write's payload. */
static ssize_t conn_recv(struct nbd_conn *c)
{
	ssize_t n;

	if (c->rx && in_avail(c) == 0) {
		struct nbd_req *r = c->rx;

		n = recv(c->fd, r->buf + c->rx_done, r->hdr.length - c->rx_done, 0);
		c->last_short = n < (ssize_t)(r->hdr.length - c->rx_done);
		if (n > 0) {
			c->rx_done += (uint32_t)n;
			if (c->rx_done == r->hdr.length)
				rx_complete(c);
		}
		return n;
	}
	if (c->in_off && c->in_off == c->in_len)
		c->in_off = c->in_len = 0;
	if (c->in_off && IN_BUF_SIZE - c->in_len < NBD_REQUEST_SIZE + 4096) {
		memmove(c->in, c->in + c->in_off, in_avail(c));
		c->in_len -= c->in_off;
		c->in_off = 0;
	}
	n = recv(c->fd, c->in + c->in_len, IN_BUF_SIZE - c->in_len, 0);
	c->last_short = n < (ssize_t)(IN_BUF_SIZE - c->in_len);
	if (n > 0) {
		c->in_len += (size_t)n;
		conn_process(c);
	}
	return n;
}

/* The socket is readable: read up to a budget, then let others run. */
static void conn_readable(struct nbd_conn *c)
{
	size_t budget = READ_BUDGET;

	while (conn_wants_input(c) && budget) {
		ssize_t n = conn_recv(c);

		if (n == 0) {
			DPRINTF("nbd: connection %d: client hung up", c->fd);
			conn_close(c);
			return;
		}
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				break;
			if (errno != ECONNRESET)
				tlog(TLOG_INFO, "nbd: connection %d: recv: %m", c->fd);
			conn_close(c);
			return;
		}
		budget = (size_t)n >= budget ? 0 : budget - (size_t)n;
		if (c->last_short)
			break; /* drained: epoll says when more comes */
	}
	if (!c->dead)
		conn_update_events(c);
}

/* Free replies sent in full; `sent` bytes left the socket. */
static void out_advance(struct nbd_conn *c, size_t sent)
{
	if (c->hs_off < c->hs_len) {
		size_t n = c->hs_len - c->hs_off < sent ? c->hs_len - c->hs_off : sent;

		c->hs_off += n;
		sent -= n;
		if (c->hs_off == c->hs_len)
			c->hs_off = c->hs_len = 0;
	}
	while (sent && !list_empty(&c->outq)) {
		struct nbd_req *r = list_first_entry(&c->outq, struct nbd_req, entry);
		size_t left = r->reply_len + r->data_len - c->out_off;

		if (sent < left) {
			c->out_off += sent;
			return;
		}
		sent -= left;
		c->out_off = 0;
		list_del(&r->entry);
		req_put(c, r);
	}
}

/* Send what the connection has queued, in one sendmsg per MAX_IOV pieces. */
static void conn_flush(struct nbd_conn *c)
{
	c->want_write = 0;
	for (;;) {
		struct iovec iov[MAX_IOV];
		struct msghdr msg = { 0 };
		struct list_head *p;
		size_t skip = c->out_off;
		int n = 0;
		ssize_t sent;

		if (c->hs_off < c->hs_len)
			iov[n++] = (struct iovec){ c->hs_out + c->hs_off, c->hs_len - c->hs_off };
		list_for_each(p, &c->outq) {
			struct nbd_req *r = list_entry(p, struct nbd_req, entry);

			if (n + 2 > MAX_IOV)
				break;
			if (skip < r->reply_len) {
				iov[n++] = (struct iovec){ r->reply + skip, r->reply_len - skip };
				skip = 0;
			} else {
				skip -= r->reply_len;
			}
			if (r->data_len) {
				iov[n++] = (struct iovec){ r->buf + skip, r->data_len - skip };
				skip = 0;
			}
		}
		if (!n)
			break;
		msg.msg_iov = iov;
		msg.msg_iovlen = (size_t)n;
		sent = sendmsg(c->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (sent < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				c->want_write = 1;
				break;
			}
			if (errno != EPIPE && errno != ECONNRESET)
				tlog(TLOG_INFO, "nbd: connection %d: send: %m", c->fd);
			conn_close(c);
			return;
		}
		out_advance(c, (size_t)sent);
	}
	if (c->closing && !c->inflight && c->hs_len == 0) {
		conn_close(c); /* DISC, ABORT or a fatal error: all answered */
		return;
	}
	/* replies left: there may be room for requests buffered meanwhile */
	if (c->state == CS_TRANSMISSION && in_avail(c) && conn_wants_input(c))
		conn_process(c);
	if (!c->dead)
		conn_update_events(c);
}

/* Once per loop iteration: send every connection's pending output, and
 * free closed connections the vbd is done with. */
static void flush_all(void *arg)
{
	struct list_head *p, *n;

	list_for_each_safe(p, n, &zombies) {
		struct nbd_conn *c = list_entry(p, struct nbd_conn, entry);

		if (!c->submitted) {
			list_del(&c->entry);
			free(c);
		}
	}
	while (!list_empty(&dirty)) {
		struct nbd_conn *c = list_first_entry(&dirty, struct nbd_conn, dirty_entry);

		list_del(&c->dirty_entry);
		c->dirty = 0;
		conn_flush(c);
	}
}

/* Socket events of a connection. */
static void conn_event(int fd, int events, void *arg)
{
	struct nbd_conn *c = arg;

	if (events & SCHED_WRITE)
		conn_flush(c);
	if (!c->dead && (events & SCHED_READ))
		conn_readable(c);
}

/* A handshake that does not finish in time ends the connection. */
static void handshake_timeout(void *arg)
{
	struct nbd_conn *c = arg;

	c->timer = 0;
	tlog(TLOG_INFO, "nbd: connection %d: no handshake after %d s, closing", c->fd, HANDSHAKE_MS / 1000);
	conn_close(c);
}

/* Close the socket; the connection is freed once the vbd is done with it. */
static void conn_close(struct nbd_conn *c)
{
	if (c->dead)
		return;
	DPRINTF("nbd: connection %d closed", c->fd);
	if (c->timer)
		sched_cancel_timer(c->timer);
	c->timer = 0;
	sched_unregister(c->id);
	close(c->fd);
	c->fd = -1;
	if (c->dirty)
		list_del(&c->dirty_entry);
	c->dirty = 0;
	if (c->exp) {
		list_del(&c->entry);
		c->exp->vbd->nbd_conns--;
		c->exp = NULL;
	}
	list_add_tail(&c->entry, &zombies);
	c->dead = 1;
	if (c->rx) {
		req_put(c, c->rx);
		c->rx = NULL;
	}
	while (!list_empty(&c->outq)) {
		struct nbd_req *r = list_first_entry(&c->outq, struct nbd_req, entry);

		list_del(&r->entry);
		req_put(c, r);
	}
	while (c->pool) {
		struct nbd_req *r = c->pool;

		c->pool = r->next_free;
		iobuf_free(r->buf, r->cap);
		free(r);
	}
	free(c->in);
	c->in = NULL;
	free(c->hs_out);
	c->hs_out = NULL;
	sched_kick();
}

/* A new client: send the greeting and wait for its flags. */
static void conn_new(struct nbd_export *exp, int fd)
{
	struct nbd_conn *c = calloc(1, sizeof(*c));
	uint8_t greet[18];

	if (!c || !(c->in = malloc(IN_BUF_SIZE))) {
		EPRINTF("nbd %s: out of memory for a connection", exp->path);
		if (c)
			free(c);
		close(fd);
		return;
	}
	c->exp = exp;
	c->vbd = exp->vbd;
	c->fd = fd;
	c->state = CS_CLIENT_FLAGS;
	INIT_LIST_HEAD(&c->outq);
	INIT_LIST_HEAD(&c->dirty_entry);
	c->id = sched_register_fd(fd, SCHED_READ, conn_event, c);
	if (c->id < 0) {
		free(c->in);
		free(c);
		close(fd);
		return;
	}
	c->events = SCHED_READ;
	list_add_tail(&c->entry, &exp->conns);
	exp->vbd->nbd_conns++;
	c->timer = sched_timer(HANDSHAKE_MS, handshake_timeout, c);
	if (c->timer < 0)
		c->timer = 0;
	nbd_put64(greet, NBD_MAGIC);
	nbd_put64(greet + 8, NBD_IHAVEOPT);
	nbd_put16(greet + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
	hs_put(c, greet, sizeof(greet));
	DPRINTF("nbd %s: connection %d", exp->path, fd);
}

/* Accepting again after running out of descriptors. */
static void accept_resume(void *arg)
{
	struct nbd_export *exp = arg;

	exp->accept_timer = 0;
	sched_modify_fd(exp->lid, SCHED_READ);
}

/* The listening socket is readable: accept every waiting client. */
static void export_accept(int fd, int events, void *arg)
{
	struct nbd_export *exp = arg;

	for (int i = 0; i < 64; i++) {
		int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (cfd < 0) {
			if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED)
				return;
			EPRINTF("nbd %s: accept: %m", exp->path);
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
				sched_modify_fd(exp->lid, 0);
				exp->accept_timer = sched_timer(100, accept_resume, exp);
			}
			return;
		}
		if (exp->vbd->nbd_conns >= MAX_CONNS) {
			tlog(TLOG_WARN, "nbd %s: %d connections already, refusing another", exp->path, MAX_CONNS);
			close(cfd);
			continue;
		}
		conn_new(exp, cfd);
	}
}

/* The export of `vbd`, if any. */
static struct nbd_export *export_of(td_vbd_t *vbd)
{
	return vbd ? vbd->nbd : NULL;
}

/* Bind and listen on `path` (mode 0600), replacing a stale socket. */
static int listen_unix(const char *path, char *err, size_t errlen)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct stat st;
	mode_t old;
	int fd, r;

	if (strlen(path) >= sizeof(sa.sun_path)) {
		snprintf(err, errlen, "nbd export: %s: path too long for a unix socket", path);
		return -ENAMETOOLONG;
	}
	strcpy(sa.sun_path, path);
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode)) {
			snprintf(err, errlen, "nbd export: %s: exists and is not a socket", path);
			return -EEXIST;
		}
		unlink(path);
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		r = -errno;
		snprintf(err, errlen, "nbd export: socket: %s", strerror(errno));
		return r;
	}
	old = umask(0177);
	r = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
	umask(old);
	if (r < 0 || chmod(path, 0600) < 0 || listen(fd, 128) < 0) {
		r = -errno;
		snprintf(err, errlen, "nbd export: bind/listen %s: %s", path, strerror(errno));
		close(fd);
		unlink(path);
		return r;
	}
	return fd;
}

int tapdisk_nbd_export(td_vbd_t *vbd, const char *path, char *err, size_t errlen)
{
	struct nbd_export *exp;
	char dummy[1];
	int fd;

	if (!err || !errlen) {
		err = dummy;
		errlen = sizeof(dummy);
	}
	if (vbd->nbd) {
		snprintf(err, errlen, "nbd export: minor %d is already exported at %s", vbd->minor,
			 tapdisk_nbd_path(vbd));
		return -EBUSY;
	}
	exp = calloc(1, sizeof(*exp));
	if (!exp || !(exp->path = strdup(path))) {
		free(exp);
		snprintf(err, errlen, "nbd export: out of memory");
		return -ENOMEM;
	}
	fd = listen_unix(path, err, errlen);
	if (fd < 0) {
		EPRINTF("%s", err);
		free(exp->path);
		free(exp);
		return fd;
	}
	exp->vbd = vbd;
	exp->lfd = fd;
	INIT_LIST_HEAD(&exp->conns);
	exp->lid = sched_register_fd(fd, SCHED_READ, export_accept, exp);
	if (exp->lid < 0 || (!flush_hook && (flush_hook = sched_add_hook(flush_all, NULL)) < 0)) {
		snprintf(err, errlen, "nbd export: %s: cannot register with the event loop", path);
		EPRINTF("%s", err);
		if (exp->lid > 0)
			sched_unregister(exp->lid);
		flush_hook = 0;
		close(fd);
		unlink(path);
		free(exp->path);
		free(exp);
		return -ENOMEM;
	}
	list_add_tail(&exp->entry, &exports);
	vbd->nbd = exp;
	tlog(TLOG_INFO, "nbd: minor %d (%s) exported at %s", vbd->minor, vbd->params ? vbd->params : "", path);
	return 0;
}

void tapdisk_nbd_unexport(td_vbd_t *vbd)
{
	struct nbd_export *exp = export_of(vbd);

	if (!exp)
		return;
	sched_unregister(exp->lid);
	if (exp->accept_timer)
		sched_cancel_timer(exp->accept_timer);
	close(exp->lfd);
	unlink(exp->path);
	while (!list_empty(&exp->conns))
		conn_close(list_first_entry(&exp->conns, struct nbd_conn, entry));
	list_del(&exp->entry);
	vbd->nbd = NULL;
	tlog(TLOG_INFO, "nbd: minor %d no longer exported at %s", vbd->minor, exp->path);
	free(exp->path);
	free(exp);
}

void tapdisk_nbd_fini(void)
{
	flush_all(NULL);
	if (list_empty(&zombies) && flush_hook) {
		sched_remove_hook(flush_hook);
		flush_hook = 0;
	}
}

const char *tapdisk_nbd_path(td_vbd_t *vbd)
{
	struct nbd_export *exp = export_of(vbd);

	return exp ? exp->path : NULL;
}

int tapdisk_nbd_socket_path(int minor, char *buf, size_t len)
{
	const char *dir = getenv("RENEW_RUNDIR");
	int n;

	if (!dir || !*dir)
		dir = "/run/blktap-control";
	n = snprintf(buf, len, "%s/nbd%d.%d", dir, (int)getpid(), minor);
	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}
