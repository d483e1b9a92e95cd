/* libFuzzer target for the NBD parsing rules (tapdisk-glue/nbd-parse.c).
 * The input is what a client sends after the greeting: the client flags,
 * options (fed to the option parsers exactly as the server feeds them),
 * then, once an option has started transmission, request headers
 * checked as the server checks them, with their payloads skipped.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE \
 *       -Itapdisk-glue tests/fuzz/fuzz-nbd.c tapdisk-glue/nbd-parse.c -o build/fuzz-nbd
 *   build/fuzz-nbd -max_total_time=60 tests/tmp/fuzz-nbd-corpus
 *
 * Without libFuzzer (-DFUZZ_MAIN, any compiler) it runs each file named on
 * the command line once, for reproducing a crash under gdb or valgrind. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "nbd-proto.h"

/* A meta context query: look at every byte the parser hands out. */
static void query(void *arg, const char *q, uint32_t qlen)
{
	unsigned *sum = arg;

	for (uint32_t i = 0; i < qlen; i++)
		*sum += (unsigned char)q[i];
	*sum += (unsigned)nbd_meta_matches(q, qlen, 1) + (unsigned)nbd_meta_matches(q, qlen, 0);
}

/* The option phase; returns the bytes consumed, or 0 to stop. */
static size_t options(const uint8_t *d, size_t n, int *transmission, int *structured, int *meta)
{
	size_t pos = 0;

	while (n - pos >= 16) {
		struct nbd_option opt;
		const uint8_t *data;

		if (nbd_parse_option_header(d + pos, &opt) < 0)
			return 0; /* the server hangs up */
		pos += 16;
		if (opt.length > NBD_MAX_OPTION) {
			if (n - pos < opt.length)
				return 0;
			pos += opt.length; /* skipped after ERR_TOO_BIG */
			continue;
		}
		if (n - pos < opt.length)
			return 0;
		data = d + pos;
		pos += opt.length;
		switch (opt.option) {
		case NBD_OPT_EXPORT_NAME:
			*transmission = 1;
			return pos;
		case NBD_OPT_GO:
		case NBD_OPT_INFO: {
			struct nbd_go go;

			if (nbd_parse_go(data, opt.length, &go) == 0) {
				/* the name and requests must lie inside the data */
				if ((const uint8_t *)go.name < data || go.requests + 2 * go.nrequests > data + opt.length)
					abort();
				for (int i = 0; i < go.nrequests; i++)
					(void)nbd_get16(go.requests + 2 * i);
				if (opt.option == NBD_OPT_GO) {
					*transmission = 1;
					return pos;
				}
			}
			break;
		}
		case NBD_OPT_STRUCTURED_REPLY:
			*structured = 1;
			break;
		case NBD_OPT_SET_META_CONTEXT:
		case NBD_OPT_LIST_META_CONTEXT: {
			struct nbd_meta m;
			unsigned sum = 0;

			if (nbd_parse_meta(data, opt.length, &m, query, &sum) == 0 &&
			    opt.option == NBD_OPT_SET_META_CONTEXT)
				*meta = 1;
			break;
		}
		case NBD_OPT_ABORT:
			return 0;
		default:
			break;
		}
	}
	return 0;
}

/* The transmission phase: headers, verdicts, payloads skipped. */
static void requests(const uint8_t *d, size_t n, const struct nbd_export_info *ex)
{
	size_t pos = 0;

	while (n - pos >= NBD_REQUEST_SIZE) {
		struct nbd_request req;
		struct nbd_verdict v;
		uint32_t ext[3][2];

		if (nbd_parse_request(d + pos, &req) < 0)
			return;
		pos += NBD_REQUEST_SIZE;
		nbd_check_request(&req, ex, &v);
		if (v.disc || v.close)
			return;
		if (!v.error) {
			/* what the server would execute must be inside the export */
			if (req.type == NBD_CMD_READ || req.type == NBD_CMD_WRITE || req.type == NBD_CMD_WRITE_ZEROES ||
			    req.type == NBD_CMD_TRIM || req.type == NBD_CMD_BLOCK_STATUS) {
				if (req.offset > ex->size || req.length > ex->size - req.offset ||
				    (req.offset | req.length) % 512)
					abort();
				if ((req.type == NBD_CMD_READ || req.type == NBD_CMD_WRITE) && req.length > NBD_MAX_PAYLOAD)
					abort();
				if (req.type != NBD_CMD_READ && req.type != NBD_CMD_BLOCK_STATUS && ex->read_only)
					abort();
			}
			if (req.type == NBD_CMD_BLOCK_STATUS) {
				int k = nbd_block_status(ex, req.offset, req.length, ext, 3);

				if (k < 0 || k > 3)
					abort();
			}
		}
		(void)nbd_errno(-(int)(req.handle & 0xff));
		(void)nbd_cmd_name(req.type);
		if (v.payload) {
			if (n - pos < v.payload)
				return;
			pos += v.payload;
		}
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct nbd_export_info ex = { 0 };
	int transmission = 0;
	size_t pos;

	if (size < 5)
		return 0;
	/* the first byte picks the export: size and read-only */
	ex.size = (uint64_t)(data[0] & 0x7f) << 20 | (data[0] & 0x80 ? 512 : 0);
	ex.read_only = data[0] & 1;
	/* then the client flags */
	if (!(nbd_get32(data + 1) & NBD_FLAG_C_FIXED_NEWSTYLE))
		return 0;
	pos = options(data + 5, size - 5, &transmission, &ex.structured, &ex.meta_base_allocation);
	if (transmission)
		requests(data + 5 + pos, size - 5 - pos, &ex);
	return 0;
}

#ifdef FUZZ_MAIN
/* Run files given on the command line through the target once each. */
int main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		FILE *f = fopen(argv[i], "rb");
		uint8_t *buf;
		long n;

		if (!f) {
			perror(argv[i]);
			return 1;
		}
		fseek(f, 0, SEEK_END);
		n = ftell(f);
		rewind(f);
		buf = malloc(n > 0 ? (size_t)n : 1);
		if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {
			fprintf(stderr, "%s: read failed\n", argv[i]);
			return 1;
		}
		fclose(f);
		LLVMFuzzerTestOneInput(buf, (size_t)n);
		free(buf);
	}
	return 0;
}
#endif
