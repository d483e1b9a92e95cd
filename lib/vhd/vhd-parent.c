/* Parent locators (MACX, W2KU, W2RU), the header's parent name, parent
 * path resolution and parent validation. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "vhd.h"

#define LOC_MAX_BYTES 65536u /* no sane path is longer; bounds a hostile file */

/* Append one code unit if there is room; invalid input never overflows. */
static int put_unit(uint16_t *out, size_t max, size_t *n, uint32_t u)
{
	if (*n >= max)
		return -EINVAL;
	out[(*n)++] = (uint16_t)u;
	return 0;
}

/* UTF-8 to UTF-16; bytes that are not valid UTF-8 map to U+00xx (Latin-1)
 * so any Linux path can be encoded. Returns the number of code units. */
int vhd_utf8_to_utf16(const char *s, uint16_t *out, size_t max_units)
{
	const uint8_t *p = (const uint8_t *)s;
	size_t n = 0;

	while (*p) {
		uint32_t cp = *p, need = 0;
		if (cp >= 0xf0 && cp < 0xf8) { need = 3; cp &= 0x07; }
		else if (cp >= 0xe0) { need = 2; cp &= 0x0f; }
		else if (cp >= 0xc0) { need = 1; cp &= 0x1f; }
		uint32_t i;
		for (i = 1; i <= need && (p[i] & 0xc0) == 0x80; i++)
			cp = cp << 6 | (p[i] & 0x3f);
		if (*p >= 0xf8 || (*p >= 0x80 && *p < 0xc0) || i <= need || cp > 0x10ffff) {
			cp = *p; /* not UTF-8: Latin-1 */
			need = 0;
		}
		if (cp >= 0x10000) {
			cp -= 0x10000;
			if (put_unit(out, max_units, &n, 0xd800 | (cp >> 10)) ||
			    put_unit(out, max_units, &n, 0xdc00 | (cp & 0x3ff)))
				return -EINVAL;
		} else if (put_unit(out, max_units, &n, cp)) {
			return -EINVAL;
		}
		p += need + 1;
	}
	return (int)n;
}

/* UTF-16 to NUL-terminated UTF-8, stopping at a NUL unit; lone surrogates
 * become U+FFFD. Returns the byte length. */
int vhd_utf16_to_utf8(const uint16_t *in, size_t units, char *out, size_t max_bytes)
{
	size_t n = 0;

	for (size_t i = 0; i < units && in[i]; i++) {
		uint32_t cp = in[i];
		uint8_t b[4];
		int len;
		if (cp >= 0xd800 && cp < 0xdc00 && i + 1 < units && in[i + 1] >= 0xdc00 && in[i + 1] < 0xe000) {
			cp = 0x10000 + ((cp - 0xd800) << 10) + (in[i + 1] - 0xdc00u);
			i++;
		} else if (cp >= 0xd800 && cp < 0xe000) {
			cp = 0xfffd;
		}
		if (cp < 0x80) { b[0] = (uint8_t)cp; len = 1; }
		else if (cp < 0x800) { b[0] = (uint8_t)(0xc0 | cp >> 6); b[1] = (uint8_t)(0x80 | (cp & 0x3f)); len = 2; }
		else if (cp < 0x10000) { b[0] = (uint8_t)(0xe0 | cp >> 12); b[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f)); b[2] = (uint8_t)(0x80 | (cp & 0x3f)); len = 3; }
		else { b[0] = (uint8_t)(0xf0 | cp >> 18); b[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3f)); b[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f)); b[3] = (uint8_t)(0x80 | (cp & 0x3f)); len = 4; }
		if (n + (size_t)len + 1 > max_bytes)
			return -EINVAL;
		memcpy(out + n, b, (size_t)len);
		n += (size_t)len;
	}
	if (n + 1 > max_bytes)
		return -EINVAL;
	out[n] = 0;
	return (int)n;
}

/* The spec says sectors; some writers store bytes (blktap's reading rule). */
uint64_t vhd_locator_space(const struct vhd_parent_locator *l)
{
	if (l->data_space < 512)
		return (uint64_t)l->data_space << VHD_SECTOR_SHIFT;
	return l->data_space;
}

/* Read a locator's raw bytes, refusing lengths and places a file cannot hold. */
static int loc_bytes(const struct vhd_image *img, const struct vhd_parent_locator *l, uint8_t **out)
{
	uint8_t *buf;
	ssize_t n;

	if (!l->data_len || l->data_len > LOC_MAX_BYTES || l->data_len > vhd_locator_space(l) ||
	    l->data_offset + l->data_len > img->footer_off)
		return vhd_fail(EINVAL, "open: %s: parent locator has a bad length or offset (len %u, offset %llu)",
				img->path, l->data_len, (unsigned long long)l->data_offset);
	buf = malloc(l->data_len);
	if (!buf)
		return vhd_fail(ENOMEM, "open: %s: out of memory", img->path);
	n = pread(img->fd, buf, l->data_len, (off_t)l->data_offset);
	if (n != (ssize_t)l->data_len) {
		free(buf);
		return vhd_fail(n < 0 ? errno : EIO, "open: %s: reading parent locator: %s", img->path,
				n < 0 ? strerror(errno) : "short read");
	}
	*out = buf;
	return 0;
}

/* Decode UTF-16LE bytes to UTF-8, backslashes to slashes. */
static char *utf16le_path(const uint8_t *b, uint32_t len)
{
	size_t units = len / 2;
	uint16_t *u = calloc(units + 1, sizeof(*u));
	char *s = malloc(units * 3 + 1);

	if (!u || !s) {
		free(u);
		free(s);
		return NULL;
	}
	for (size_t i = 0; i < units; i++)
		u[i] = (uint16_t)(b[2 * i] | b[2 * i + 1] << 8);
	if (vhd_utf16_to_utf8(u, units, s, units * 3 + 1) < 0)
		s[0] = 0;
	free(u);
	for (char *p = s; *p; p++)
		if (*p == '\\')
			*p = '/';
	return s;
}

/* One locator as a path: MACX is a UTF-8 file URL, W2KU/W2RU UTF-16LE. */
int vhd_locator_read(const struct vhd_image *img, int i, char **out)
{
	const struct vhd_parent_locator *l = &img->header.loc[i];
	uint8_t *b = NULL;
	char *s;
	int rc;

	if (l->code != VHD_PLAT_MACX && l->code != VHD_PLAT_W2KU && l->code != VHD_PLAT_W2RU)
		return -ENOENT;
	rc = loc_bytes(img, l, &b);
	if (rc)
		return rc;
	if (l->code == VHD_PLAT_MACX) {
		const char *p = (const char *)b;
		size_t len = strnlen(p, l->data_len);
		if (len >= 7 && !memcmp(p, "file://", 7)) {
			p += 7;
			len -= 7;
		}
		s = strndup(p, len);
	} else {
		s = utf16le_path(b, l->data_len);
	}
	free(b);
	if (!s)
		return vhd_fail(ENOMEM, "open: %s: out of memory", img->path);
	if (!*s) {
		free(s);
		return -ENOENT;
	}
	*out = s;
	return 0;
}

/* The header's parent name (UTF-16, decoded to host order) as UTF-8. */
char *vhd_parent_name(const struct vhd_image *img)
{
	char *s = malloc(256 * 3 + 1);

	if (s && vhd_utf16_to_utf8(img->header.prt_name, 256, s, 256 * 3 + 1) < 0)
		s[0] = 0;
	return s;
}

/* The directory of a path, as a new string ("." for a bare name). */
static char *dir_of(const char *path)
{
	char *tmp = strdup(path), *d;

	if (!tmp)
		return NULL;
	d = strdup(dirname(tmp));
	free(tmp);
	return d;
}

/* dir + "/" + rel, dropping leading "./" so printed paths stay tidy. */
static char *join(const char *dir, const char *rel)
{
	char *out;

	while (rel[0] == '.' && rel[1] == '/')
		rel += 2;
	if (!strcmp(dir, "."))
		return strdup(rel);
	if (asprintf(&out, "%s%s%s", dir, dir[strlen(dir) - 1] == '/' ? "" : "/", rel) < 0)
		return NULL;
	return out;
}

/* Remember a candidate for the error message. */
static void tried_add(char *tried, size_t size, const char *p)
{
	size_t n = strlen(tried), l = strlen(p);

	for (const char *q = strstr(tried, p); q; q = strstr(q + 1, p))
		if ((q == tried || q[-1] == ' ') && (q[l] == ',' || !q[l]))
			return; /* already listed */
	if (n + 4 < size)
		snprintf(tried + n, size - n, "%s%s", n ? ", " : "", p);
}

/* Try one candidate path; 1 if it exists (and *out takes it). */
static int try_path(char *cand, char **out, char *tried, size_t size)
{
	struct stat st;

	if (!cand)
		return 0;
	if (!stat(cand, &st)) {
		*out = cand;
		return 1;
	}
	tried_add(tried, size, cand);
	free(cand);
	return 0;
}

/* Relative locators against the child's directory, then absolute ones,
 * then the header's parent name next to the child. */
int vhd_parent_path(const struct vhd_image *img, char **out)
{
	char tried[2048] = "", *dir, *name;
	int found = 0;

	*out = NULL;
	if (img->footer.type != VHD_TYPE_DIFF)
		return vhd_fail(EINVAL, "open: %s: not a differencing disk (no parent)", img->path);
	dir = dir_of(img->path);
	if (!dir)
		return vhd_fail(ENOMEM, "open: %s: out of memory", img->path);
	for (int pass = 0; pass < 2 && !found; pass++) {
		for (int i = 0; i < 8 && !found; i++) {
			char *p;
			if (vhd_locator_read(img, i, &p))
				continue;
			if (pass == 0 && p[0] != '/')
				found = try_path(join(dir, p), out, tried, sizeof(tried));
			else if (pass == 1 && p[0] == '/')
				found = try_path(strdup(p), out, tried, sizeof(tried));
			free(p);
		}
	}
	name = vhd_parent_name(img);
	if (!found && name && name[0] && !strchr(name, '/'))
		found = try_path(join(dir, name), out, tried, sizeof(tried));
	free(name);
	free(dir);
	if (found)
		return 0;
	return vhd_fail(ENOENT, "open: %s: parent not found (tried: %s)", img->path,
			tried[0] ? tried : "no usable parent locator or name");
}

/* VHD parents must carry the UUID the child recorded; a raw parent (null
 * UUID recorded) must cover the child's virtual size. */
int vhd_validate_parent(const struct vhd_image *img, const char *parent)
{
	char want[37], have[37];
	int rc = vhd_probe(parent);

	vhd_uuid_format(img->header.prt_uuid, want);
	if (rc < 0)
		return rc;
	if (rc == 1) {
		struct vhd_image p;
		rc = vhd_open(&p, parent, VHD_OPEN_RDONLY);
		if (rc)
			return rc;
		vhd_uuid_format(p.footer.uuid, have);
		rc = memcmp(p.footer.uuid, img->header.prt_uuid, 16);
		vhd_close(&p);
		if (rc && vhd_uuid_is_null(img->header.prt_uuid))
			return vhd_fail(EINVAL, "open: %s: records a raw parent (null UUID) but %s is a VHD (uuid %s)",
					img->path, parent, have);
		if (rc)
			return vhd_fail(EINVAL, "open: %s: parent UUID mismatch: %s expects parent uuid %s but %s has uuid %s "
					"(was the parent re-created or replaced?)", img->path, img->path, want, parent, have);
		return 0;
	}
	uint64_t size;
	rc = vhd_file_size(parent, &size);
	if (rc)
		return rc;
	if (!vhd_uuid_is_null(img->header.prt_uuid))
		return vhd_fail(EINVAL, "open: %s: expects a VHD parent with uuid %s but %s is not a VHD",
				img->path, want, parent);
	if (size < img->footer.curr_size)
		return vhd_fail(EINVAL, "open: %s: raw parent %s is %llu bytes, smaller than the virtual size %llu",
				img->path, parent, (unsigned long long)size,
				(unsigned long long)img->footer.curr_size);
	return 0;
}
