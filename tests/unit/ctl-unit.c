/* Unit tests of the control protocol codec (lib/ctl): round trips with
 * escapes, and every malformed payload refused with a reason. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ctl-proto.h"

static int failures;

#define CHECK(cond, ...) do { if (!(cond)) { failures++; printf("FAIL %s:%d: ", __FILE__, __LINE__); \
	printf(__VA_ARGS__); putchar('\n'); } } while (0)

/* Encode, check the header, decode: the message must come back equal. */
static void test_round_trip(void)
{
	struct ctl_msg m, d;
	char *buf, err[CTL_ERRLEN];
	size_t len;
	uint32_t plen;
	const char *tricky = "a\\b\nc\rd\te=f";

	ctl_msg_init(&m);
	CHECK(!ctl_msg_set(&m, "verb", "open"), "set verb");
	CHECK(!ctl_msg_set(&m, "params", tricky), "set params");
	CHECK(!ctl_msg_set_int(&m, "minor", 42), "set minor");
	CHECK(!ctl_msg_set(&m, "minor", "43"), "replace minor");
	CHECK(!ctl_msg_set(&m, "empty", ""), "empty value");
	CHECK(!ctl_msg_encode(&m, &buf, &len), "encode");
	CHECK(!memcmp(buf, CTL_MAGIC, 4), "magic");
	CHECK(!ctl_frame_header((unsigned char *)buf, &plen, err, sizeof(err)), "header: %s", err);
	CHECK(plen + CTL_HDR_SIZE == len, "length %u + 8 != %zu", plen, len);
	CHECK(!strncmp(buf + CTL_HDR_SIZE, "v=1\nverb=open\n", 14), "payload starts with v=1");
	CHECK(!ctl_msg_decode(&d, buf + CTL_HDR_SIZE, plen, err, sizeof(err)), "decode: %s", err);
	CHECK(d.version == CTL_PROTO_VERSION, "version %d", d.version);
	CHECK(!strcmp(ctl_msg_get(&d, "params"), tricky), "escapes survive");
	CHECK(!strcmp(ctl_msg_get(&d, "minor"), "43"), "replaced value");
	CHECK(!strcmp(ctl_msg_get(&d, "empty"), ""), "empty value survives");
	CHECK(d.n == 4, "4 keys, got %zu", d.n);
	free(buf);
	ctl_msg_free(&d);
	ctl_msg_free(&m);
}

/* Keys the line format cannot carry are refused when building. */
static void test_bad_keys(void)
{
	struct ctl_msg m;

	ctl_msg_init(&m);
	CHECK(ctl_msg_set(&m, "", "x") == -EINVAL, "empty key");
	CHECK(ctl_msg_set(&m, "a=b", "x") == -EINVAL, "key with '='");
	CHECK(ctl_msg_set(&m, "a b", "x") == -EINVAL, "key with a space");
	CHECK(ctl_msg_set(&m, "v", "2") == -EINVAL, "the version is not a key");
	CHECK(!ctl_msg_set(&m, "job.0_rate-x", "1"), "dots, dashes, underscores");
	ctl_msg_free(&m);
}

/* decode_fails(PAYLOAD, WORD): refused, and the reason mentions WORD. */
static void decode_fails(const char *payload, const char *word)
{
	struct ctl_msg d;
	char err[CTL_ERRLEN] = "";
	int rc = ctl_msg_decode(&d, payload, strlen(payload), err, sizeof(err));

	CHECK(rc == -EPROTO, "'%s' decoded (rc %d)", payload, rc);
	CHECK(strstr(err, word), "'%s': reason '%s' lacks '%s'", payload, err, word);
	if (!rc)
		ctl_msg_free(&d);
}

static void test_bad_payloads(void)
{
	struct ctl_msg d;
	char err[CTL_ERRLEN];

	decode_fails("", "newline");
	decode_fails("v=1\nverb=list", "newline");
	decode_fails("verb=list\n", "version");
	decode_fails("v=x\nverb=list\n", "bad version");
	decode_fails("v=0\n", "bad version");
	decode_fails("v=1\nnoequals\n", "without '='");
	decode_fails("v=1\nverb=a\nverb=b\n", "repeats");
	decode_fails("v=1\nverb=a\\q\n", "escape");
	decode_fails("v=1\nbad key=1\n", "bad key");
	CHECK(ctl_msg_decode(&d, "v=1\nverb=a\0b\n", 13, err, sizeof(err)) == -EPROTO, "NUL byte");
	/* another version decodes, then is refused naming both */
	CHECK(!ctl_msg_decode(&d, "v=7\nverb=x\n", 11, err, sizeof(err)), "v=7 decodes");
	CHECK(ctl_msg_check_version(&d, err, sizeof(err)) == -EPROTONOSUPPORT, "v=7 refused");
	CHECK(strstr(err, "version 7") && strstr(err, "version 1"), "version message: %s", err);
	ctl_msg_free(&d);
}

static void test_headers(void)
{
	unsigned char h[8] = { 'R', 'N', 'W', 'C', 0, 0x10, 0, 1 };
	char err[CTL_ERRLEN];
	uint32_t len;

	CHECK(ctl_frame_header(h, &len, err, sizeof(err)) == -EPROTO, "oversized frame");
	CHECK(strstr(err, "exceeds"), "oversize reason: %s", err);
	h[5] = 0;
	CHECK(!ctl_frame_header(h, &len, err, sizeof(err)) && len == 1, "1-byte frame");
	h[0] = 1;
	CHECK(ctl_frame_header(h, &len, err, sizeof(err)) == -EPROTO, "bad magic");
	CHECK(strstr(err, "magic"), "magic reason: %s", err);
}

static void test_get_int(void)
{
	struct ctl_msg m;
	long long v = -1;

	ctl_msg_init(&m);
	ctl_msg_set(&m, "a", "17");
	ctl_msg_set(&m, "b", "17x");
	ctl_msg_set(&m, "c", "-3");
	CHECK(!ctl_msg_get_int(&m, "a", 0, 100, &v) && v == 17, "a = 17");
	CHECK(ctl_msg_get_int(&m, "a", 0, 10, &v) == -EINVAL, "a above max");
	CHECK(ctl_msg_get_int(&m, "b", 0, 100, &v) == -EINVAL, "trailing junk");
	CHECK(ctl_msg_get_int(&m, "c", 0, 100, &v) == -EINVAL, "below min");
	CHECK(ctl_msg_get_int(&m, "d", 0, 100, &v) == -ENOENT, "missing");
	CHECK(!ctl_msg_getf(&m, "%s.%d", "x", 1), "getf of a missing key");
	ctl_reply_error(&m, -ENOENT, "open %s: %s", "/x", "gone");
	CHECK(!ctl_reply_is_ok(&m), "error reply");
	CHECK(!strcmp(ctl_msg_get(&m, "errno"), "2"), "errno positive");
	CHECK(!strcmp(ctl_msg_get(&m, "msg"), "open /x: gone"), "message");
	ctl_msg_free(&m);
}

/* The run directory and socket names. */
static void test_rundir(void)
{
	char buf[256];

	setenv("RENEW_RUNDIR", "/tmp/x", 1);
	CHECK(!strcmp(ctl_rundir(), "/tmp/x"), "RENEW_RUNDIR");
	CHECK(!ctl_sock_path(buf, sizeof(buf), 12) && !strcmp(buf, "/tmp/x/ctl12"), "ctl path %s", buf);
	CHECK(!ctl_nbd_path(buf, sizeof(buf), 12, 3) && !strcmp(buf, "/tmp/x/nbd12.3"), "nbd path %s", buf);
	CHECK(ctl_sock_path(buf, 8, 12) == -ENAMETOOLONG, "truncation refused");
	CHECK(ctl_sock_name_pid("ctl123") == 123, "ctl123");
	CHECK(ctl_sock_name_pid("ctl12x") == -1 && ctl_sock_name_pid("ctl") == -1 &&
	      ctl_sock_name_pid("nbd1.2") == -1 && ctl_sock_name_pid("ctl-1") == -1, "bad names");
	unsetenv("RENEW_RUNDIR");
	CHECK(!strcmp(ctl_rundir(), "/run/blktap-control"), "default run directory");
}

int main(void)
{
	test_round_trip();
	test_bad_keys();
	test_bad_payloads();
	test_headers();
	test_get_int();
	test_rundir();
	printf("%s: %d failure(s)\n", __FILE__, failures);
	return failures ? 1 : 0;
}
