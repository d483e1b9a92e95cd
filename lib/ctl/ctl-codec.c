/* The control wire format: "RNWC", a big-endian u32 length, then lines of
 * key=value with escaped values (see ctl-proto.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ctl-proto.h"

/* A growable byte buffer for the encoder. */
struct obuf {
	char *p;
	size_t len, cap;
};

/* Append bytes, doubling the buffer so encoding stays linear. */
static int put(struct obuf *b, const char *s, size_t n)
{
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		char *p;
		while (cap < b->len + n)
			cap *= 2;
		p = realloc(b->p, cap);
		if (!p)
			return -ENOMEM;
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	return 0;
}

/* Escape one value so it fits on a line. */
static int put_escaped(struct obuf *b, const char *s)
{
	int rc = 0;

	for (; *s && !rc; s++) {
		switch (*s) {
		case '\\': rc = put(b, "\\\\", 2); break;
		case '\n': rc = put(b, "\\n", 2); break;
		case '\r': rc = put(b, "\\r", 2); break;
		case '\t': rc = put(b, "\\t", 2); break;
		default: rc = put(b, s, 1);
		}
	}
	return rc;
}

int ctl_msg_encode(const struct ctl_msg *m, char **buf, size_t *len)
{
	struct obuf b = { 0 };
	char line[32];
	size_t plen;
	int rc;

	rc = put(&b, CTL_MAGIC "\0\0\0\0", CTL_HDR_SIZE);
	snprintf(line, sizeof(line), "v=%d\n", m->version);
	if (!rc)
		rc = put(&b, line, strlen(line));
	for (size_t i = 0; i < m->n && !rc; i++) {
		rc = put(&b, m->kv[i].key, strlen(m->kv[i].key));
		if (!rc)
			rc = put(&b, "=", 1);
		if (!rc)
			rc = put_escaped(&b, m->kv[i].val);
		if (!rc)
			rc = put(&b, "\n", 1);
	}
	plen = b.len - CTL_HDR_SIZE;
	if (!rc && plen > CTL_MAX_PAYLOAD)
		rc = -EMSGSIZE;
	if (rc) {
		free(b.p);
		return rc;
	}
	b.p[4] = (char)(plen >> 24);
	b.p[5] = (char)(plen >> 16);
	b.p[6] = (char)(plen >> 8);
	b.p[7] = (char)plen;
	*buf = b.p;
	*len = b.len;
	return 0;
}

int ctl_frame_header(const unsigned char *hdr, uint32_t *len, char *err, size_t errlen)
{
	uint32_t n;

	if (memcmp(hdr, CTL_MAGIC, 4)) {
		snprintf(err, errlen, "not a renew control frame (bad magic %02x%02x%02x%02x; "
			 "blktap's tap-ctl is not supported, use tap-ctl-renew)",
			 hdr[0], hdr[1], hdr[2], hdr[3]);
		return -EPROTO;
	}
	n = (uint32_t)hdr[4] << 24 | (uint32_t)hdr[5] << 16 | (uint32_t)hdr[6] << 8 | hdr[7];
	if (n > CTL_MAX_PAYLOAD) {
		snprintf(err, errlen, "control frame of %u bytes exceeds the limit of %u", n,
			 CTL_MAX_PAYLOAD);
		return -EPROTO;
	}
	*len = n;
	return 0;
}

/* Undo put_escaped() in place; -1 on a bad escape. */
static int unescape(char *s)
{
	char *w = s;

	for (char *r = s; *r; r++) {
		if (*r != '\\') {
			*w++ = *r;
			continue;
		}
		switch (*++r) {
		case '\\': *w++ = '\\'; break;
		case 'n': *w++ = '\n'; break;
		case 'r': *w++ = '\r'; break;
		case 't': *w++ = '\t'; break;
		default: return -1;
		}
	}
	*w = '\0';
	return 0;
}

/* Parse the mandatory first line "v=N". */
static int decode_version(struct ctl_msg *m, const char *line, char *err, size_t errlen)
{
	char *end;
	long v;

	if (strncmp(line, "v=", 2)) {
		snprintf(err, errlen, "control message does not start with a version (v=N)");
		return -EPROTO;
	}
	v = strtol(line + 2, &end, 10);
	if (end == line + 2 || *end || v <= 0 || v > 65535) {
		snprintf(err, errlen, "control message has a bad version '%s'", line + 2);
		return -EPROTO;
	}
	m->version = (int)v;
	return 0;
}

/* Parse one "key=value" line into the message. */
static int decode_line(struct ctl_msg *m, char *line, char *err, size_t errlen)
{
	char *eq = strchr(line, '=');
	int rc;

	if (!eq) {
		snprintf(err, errlen, "control message line without '=': '%.60s'", line);
		return -EPROTO;
	}
	*eq = '\0';
	if (unescape(eq + 1)) {
		snprintf(err, errlen, "control message key '%.60s' has a bad escape", line);
		return -EPROTO;
	}
	if (ctl_msg_get(m, line)) {
		snprintf(err, errlen, "control message repeats key '%.60s'", line);
		return -EPROTO;
	}
	rc = ctl_msg_set(m, line, eq + 1);
	if (rc == -EINVAL)
		snprintf(err, errlen, "control message has a bad key '%.60s'", line);
	else if (rc)
		snprintf(err, errlen, "decoding control message: %s", strerror(-rc));
	return rc == -EINVAL ? -EPROTO : rc;
}

int ctl_msg_decode(struct ctl_msg *m, const char *payload, size_t len, char *err, size_t errlen)
{
	char *copy, *line, *nl;
	int rc = 0;

	ctl_msg_init(m);
	if (memchr(payload, '\0', len)) {
		snprintf(err, errlen, "control message contains a NUL byte");
		return -EPROTO;
	}
	if (len == 0 || payload[len - 1] != '\n') {
		snprintf(err, errlen, "control message does not end with a newline");
		return -EPROTO;
	}
	copy = malloc(len + 1);
	if (!copy) {
		snprintf(err, errlen, "decoding control message: %s", strerror(ENOMEM));
		return -ENOMEM;
	}
	memcpy(copy, payload, len);
	copy[len] = '\0';
	for (line = copy; !rc && (nl = strchr(line, '\n')); line = nl + 1) {
		*nl = '\0';
		rc = line == copy ? decode_version(m, line, err, errlen)
				  : decode_line(m, line, err, errlen);
	}
	free(copy);
	if (rc)
		ctl_msg_free(m);
	return rc;
}

int ctl_msg_check_version(const struct ctl_msg *m, char *err, size_t errlen)
{
	if (m->version == CTL_PROTO_VERSION)
		return 0;
	snprintf(err, errlen, "control protocol version %d not supported (this side speaks "
		 "version %d)", m->version, CTL_PROTO_VERSION);
	return -EPROTONOSUPPORT;
}
