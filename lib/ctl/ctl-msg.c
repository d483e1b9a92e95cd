/* Control messages: an ordered set of key/value strings. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ctl-proto.h"

void ctl_msg_init(struct ctl_msg *m)
{
	memset(m, 0, sizeof(*m));
	m->version = CTL_PROTO_VERSION;
}

void ctl_msg_free(struct ctl_msg *m)
{
	for (size_t i = 0; i < m->n; i++) {
		free(m->kv[i].key);
		free(m->kv[i].val);
	}
	free(m->kv);
	ctl_msg_init(m);
}

/* Keys are restricted so that the line format needs no key escaping. */
static int key_ok(const char *key)
{
	if (!*key)
		return 0;
	for (const char *p = key; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		      (*p >= '0' && *p <= '9') || *p == '.' || *p == '_' || *p == '-'))
			return 0;
	return 1;
}

/* Index of `key`, or -1: messages are small, a linear scan is enough. */
static long find(const struct ctl_msg *m, const char *key)
{
	for (size_t i = 0; i < m->n; i++)
		if (!strcmp(m->kv[i].key, key))
			return (long)i;
	return -1;
}

int ctl_msg_set(struct ctl_msg *m, const char *key, const char *val)
{
	long i;
	char *v;

	if (!key_ok(key) || !val || !strcmp(key, "v"))
		return -EINVAL;
	v = strdup(val);
	if (!v)
		return -ENOMEM;
	i = find(m, key);
	if (i >= 0) {
		free(m->kv[i].val);
		m->kv[i].val = v;
		return 0;
	}
	if (m->n == m->cap) {
		size_t cap = m->cap ? m->cap * 2 : 8;
		struct ctl_kv *kv = realloc(m->kv, cap * sizeof(*kv));
		if (!kv) {
			free(v);
			return -ENOMEM;
		}
		m->kv = kv;
		m->cap = cap;
	}
	m->kv[m->n].key = strdup(key);
	if (!m->kv[m->n].key) {
		free(v);
		return -ENOMEM;
	}
	m->kv[m->n++].val = v;
	return 0;
}

int ctl_msg_setf(struct ctl_msg *m, const char *key, const char *fmt, ...)
{
	va_list ap;
	char *s;
	int n, rc;

	va_start(ap, fmt);
	n = vasprintf(&s, fmt, ap);
	va_end(ap);
	if (n < 0)
		return -ENOMEM;
	rc = ctl_msg_set(m, key, s);
	free(s);
	return rc;
}

int ctl_msg_set_int(struct ctl_msg *m, const char *key, long long v)
{
	return ctl_msg_setf(m, key, "%lld", v);
}

const char *ctl_msg_get(const struct ctl_msg *m, const char *key)
{
	long i = find(m, key);
	return i < 0 ? NULL : m->kv[i].val;
}

const char *ctl_msg_getf(const struct ctl_msg *m, const char *fmt, ...)
{
	char key[128];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(key, sizeof(key), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(key))
		return NULL;
	return ctl_msg_get(m, key);
}

int ctl_msg_get_int(const struct ctl_msg *m, const char *key, long long min,
		    long long max, long long *out)
{
	const char *s = ctl_msg_get(m, key);
	char *end;
	long long v;

	if (!s)
		return -ENOENT;
	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max)
		return -EINVAL;
	*out = v;
	return 0;
}

int ctl_reply_ok(struct ctl_msg *m)
{
	return ctl_msg_set(m, "status", "ok");
}

int ctl_reply_error(struct ctl_msg *m, int err, const char *fmt, ...)
{
	va_list ap;
	char *s;
	int n, rc;

	va_start(ap, fmt);
	n = vasprintf(&s, fmt, ap);
	va_end(ap);
	if (n < 0)
		return -ENOMEM;
	rc = ctl_msg_set(m, "status", "error");
	if (!rc)
		rc = ctl_msg_set_int(m, "errno", err < 0 ? -err : err);
	if (!rc)
		rc = ctl_msg_set(m, "msg", s);
	free(s);
	return rc;
}

int ctl_reply_is_ok(const struct ctl_msg *m)
{
	const char *s = ctl_msg_get(m, "status");
	return s && !strcmp(s, "ok");
}
