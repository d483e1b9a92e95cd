/* The NBD parsing and checking rules, as pure functions over bytes: the
 * server calls them and tests/fuzz/fuzz-nbd.c fuzzes them. */
#include <errno.h>
#include <string.h>
#include "nbd-proto.h"

int nbd_parse_option_header(const uint8_t *buf, struct nbd_option *opt)
{
	if (nbd_get64(buf) != NBD_IHAVEOPT)
		return -1;
	opt->option = nbd_get32(buf + 8);
	opt->length = nbd_get32(buf + 12);
	return 0;
}

uint32_t nbd_parse_go(const uint8_t *data, uint32_t len, struct nbd_go *go)
{
	uint32_t n;

	memset(go, 0, sizeof(*go));
	if (len < 4 + 2)
		return NBD_REP_ERR_INVALID;
	n = nbd_get32(data);
	if (n > NBD_MAX_NAME || n > len - 6)
		return NBD_REP_ERR_INVALID;
	go->name = (const char *)data + 4;
	go->name_len = n;
	go->nrequests = nbd_get16(data + 4 + n);
	if ((uint32_t)go->nrequests * 2 != len - 6 - n)
		return NBD_REP_ERR_INVALID;
	go->requests = data + 6 + n;
	return 0;
}

uint32_t nbd_parse_meta(const uint8_t *data, uint32_t len, struct nbd_meta *meta,
			void (*cb)(void *arg, const char *query, uint32_t qlen), void *arg)
{
	uint32_t n, pos, i;

	memset(meta, 0, sizeof(*meta));
	if (len < 8)
		return NBD_REP_ERR_INVALID;
	n = nbd_get32(data);
	if (n > NBD_MAX_NAME || n > len - 8)
		return NBD_REP_ERR_INVALID;
	meta->export_name = (const char *)data + 4;
	meta->export_len = n;
	pos = 4 + n;
	meta->nqueries = nbd_get32(data + pos);
	pos += 4;
	/* check every length first, so a malformed option reports nothing */
	for (i = 0, n = pos; i < meta->nqueries; i++) {
		uint32_t q;

		if (len - n < 4)
			return NBD_REP_ERR_INVALID;
		q = nbd_get32(data + n);
		if (q > NBD_MAX_NAME || q > len - n - 4)
			return NBD_REP_ERR_INVALID;
		n += 4 + q;
	}
	if (n != len)
		return NBD_REP_ERR_INVALID;
	for (i = 0; i < meta->nqueries; i++) {
		uint32_t q = nbd_get32(data + pos);

		if (cb)
			cb(arg, (const char *)data + pos + 4, q);
		pos += 4 + q;
	}
	return 0;
}

int nbd_meta_matches(const char *query, uint32_t qlen, int listing)
{
	static const char ba[] = NBD_META_BASE_ALLOCATION;

	if (qlen == sizeof(ba) - 1 && !memcmp(query, ba, qlen))
		return 1;
	return listing && qlen == 5 && !memcmp(query, "base:", 5);
}

int nbd_parse_request(const uint8_t *buf, struct nbd_request *req)
{
	if (nbd_get32(buf) != NBD_REQUEST_MAGIC)
		return -1;
	req->flags = nbd_get16(buf + 4);
	req->type = nbd_get16(buf + 6);
	req->handle = nbd_get64(buf + 8);
	req->offset = nbd_get64(buf + 16);
	req->length = nbd_get32(buf + 24);
	return 0;
}

/* Is [offset, offset+length) inside the export and 512-aligned? */
static uint32_t check_range(const struct nbd_request *req, const struct nbd_export_info *ex)
{
	if (req->offset > ex->size || req->length > ex->size - req->offset)
		return NBD_EINVAL;
	if ((req->offset | req->length) & (NBD_MIN_BLOCK - 1))
		return NBD_EINVAL;
	return 0;
}

void nbd_check_request(const struct nbd_request *req, const struct nbd_export_info *ex,
		       struct nbd_verdict *v)
{
	uint16_t known = NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_DF |
			 NBD_CMD_FLAG_REQ_ONE | NBD_CMD_FLAG_FAST_ZERO;

	memset(v, 0, sizeof(*v));
	if (req->type == NBD_CMD_WRITE) {
		if (req->length > NBD_MAX_PAYLOAD) {
			/* the payload cannot be skipped safely: refuse and hang up */
			v->error = NBD_EOVERFLOW;
			v->close = 1;
			return;
		}
		v->payload = req->length;
	}
	if (req->flags & ~known) {
		v->error = NBD_EINVAL;
		return;
	}
	switch (req->type) {
	case NBD_CMD_DISC:
		v->disc = 1;
		return;
	case NBD_CMD_READ:
		if (req->length > NBD_MAX_PAYLOAD)
			v->error = NBD_EOVERFLOW;
		else if ((req->flags & NBD_CMD_FLAG_DF) && !ex->structured)
			v->error = NBD_EINVAL;
		else
			v->error = check_range(req, ex);
		return;
	case NBD_CMD_WRITE:
		v->error = check_range(req, ex);
		if (!v->error && ex->read_only)
			v->error = NBD_EPERM;
		return;
	case NBD_CMD_FLUSH:
		return;
	case NBD_CMD_TRIM:
	case NBD_CMD_WRITE_ZEROES:
		v->error = check_range(req, ex);
		if (!v->error && ex->read_only)
			v->error = NBD_EPERM;
		if (!v->error && req->type == NBD_CMD_WRITE_ZEROES && (req->flags & NBD_CMD_FLAG_FAST_ZERO))
			v->error = NBD_ENOTSUP; /* zeroing here writes: not fast */
		return;
	case NBD_CMD_CACHE:
		v->error = check_range(req, ex);
		return;
	case NBD_CMD_BLOCK_STATUS:
		if (!ex->structured || !ex->meta_base_allocation || !req->length)
			v->error = NBD_EINVAL;
		else
			v->error = check_range(req, ex);
		return;
	default:
		v->error = NBD_EINVAL;
		return;
	}
}

int nbd_block_status(const struct nbd_export_info *ex, uint64_t offset, uint32_t length,
		     uint32_t (*extents)[2], int max)
{
	if (max < 1 || !length)
		return 0;
	extents[0][0] = length;
	extents[0][1] = 0; /* allocated data */
	return 1;
}

uint32_t nbd_errno(int err)
{
	switch (-err) {
	case 0: return 0;
	case EPERM: case EROFS: case EACCES: return NBD_EPERM;
	case ENOMEM: return NBD_ENOMEM;
	case EINVAL: return NBD_EINVAL;
	case ENOSPC: case EDQUOT: case EFBIG: return NBD_ENOSPC;
	case EOVERFLOW: return NBD_EOVERFLOW;
	case ENOTSUP: return NBD_ENOTSUP;
	case ESHUTDOWN: return NBD_ESHUTDOWN;
	default: return NBD_EIO;
	}
}

const char *nbd_cmd_name(uint16_t type)
{
	static const char *names[] = { "READ", "WRITE", "DISC", "FLUSH", "TRIM", "CACHE",
				       "WRITE_ZEROES", "BLOCK_STATUS" };

	return type < sizeof(names) / sizeof(names[0]) ? names[type] : "UNKNOWN";
}
