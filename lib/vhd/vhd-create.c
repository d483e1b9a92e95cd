/* Creating dynamic disks and differencing disks (snapshots) in blktap's
 * layout: footer copy, header, 4 KiB-padded BAT, parent locators, footer. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "vhd.h"

#define VHD_CREATOR_VER 0x00010003u /* blktap's "1.3" */
#define VHD_CREATOR_OS  0x4c6e7578u /* "Lnux" */

/* What a snapshot records about its parent. */
struct parent_spec {
	uint8_t uuid[16];
	uint32_t ts;
	char *name;   /* basename */
	char *rel;    /* relative to the child's directory, "./x" or "../x" */
	char *abs;    /* absolute */
};

/* One locator's encoded bytes. */
struct loc_data {
	uint32_t code;
	uint8_t *buf;
	uint32_t len;
};

/* The checks every created image passes, with messages naming the file. */
static int check_size(const char *op, const char *path, uint64_t size)
{
	if (!size)
		return vhd_fail(EINVAL, "%s: %s: size must not be zero", op, path);
	if (size % VHD_SECTOR_SIZE)
		return vhd_fail(EINVAL, "%s: %s: size %llu is not a multiple of 512", op, path,
				(unsigned long long)size);
	if (size > VHD_MAX_VIRTUAL_SIZE)
		return vhd_fail(EFBIG, "%s: %s: size %llu is above the 2040 GiB VHD limit (%llu)", op, path,
				(unsigned long long)size, (unsigned long long)VHD_MAX_VIRTUAL_SIZE);
	return 0;
}

/* Footer of a new dynamic or differencing disk of `size` bytes. */
static void new_footer(struct vhd_footer *f, uint64_t size, int diff)
{
	memset(f, 0, sizeof(*f));
	memcpy(f->cookie, "conectix", 8);
	f->features = 2;
	f->ff_version = 0x00010000;
	f->data_offset = VHD_HEADER_OFFSET;
	f->timestamp = vhd_time(time(NULL));
	memcpy(f->creator_app, "tap", 4);
	f->creator_ver = VHD_CREATOR_VER;
	f->creator_os = VHD_CREATOR_OS;
	f->orig_size = f->curr_size = size;
	vhd_geometry(size, &f->cyls, &f->heads, &f->spt);
	f->type = diff ? VHD_TYPE_DIFF : VHD_TYPE_DYNAMIC;
	vhd_uuid_generate(f->uuid);
}

/* Header with the BAT right after it, 2 MiB blocks. */
static void new_header(struct vhd_header *h, uint64_t size)
{
	memset(h, 0, sizeof(*h));
	memcpy(h->cookie, "cxsparse", 8);
	h->data_offset = ~0ull;
	h->table_offset = VHD_BAT_OFFSET;
	h->hdr_version = 0x00010000;
	h->max_bat_size = (uint32_t)((size + VHD_BLOCK_SIZE - 1) / VHD_BLOCK_SIZE);
	h->block_size = VHD_BLOCK_SIZE;
}

/* UTF-16LE bytes of a path (Windows locators). */
static int utf16le(const char *s, int backslash, struct loc_data *d)
{
	size_t max = strlen(s) + 1;
	uint16_t *u = malloc(max * sizeof(*u));
	int n = u ? vhd_utf8_to_utf16(s, u, max) : -ENOMEM;

	if (n < 0) {
		free(u);
		return n;
	}
	d->buf = malloc((size_t)n * 2 + 1);
	if (!d->buf) {
		free(u);
		return -ENOMEM;
	}
	for (int i = 0; i < n; i++) {
		uint16_t c = (backslash && u[i] == '/') ? '\\' : u[i];
		d->buf[2 * i] = (uint8_t)c;
		d->buf[2 * i + 1] = (uint8_t)(c >> 8);
	}
	d->len = (uint32_t)n * 2;
	free(u);
	return 0;
}

/* MACX (UTF-8 file URL, relative), W2KU (absolute), W2RU (relative, '\'). */
static int make_locators(const struct parent_spec *ps, struct loc_data d[3])
{
	int rc;

	memset(d, 0, 3 * sizeof(*d));
	d[0].code = VHD_PLAT_MACX;
	if (asprintf((char **)&d[0].buf, "file://%s", ps->rel) < 0) {
		d[0].buf = NULL;
		return -ENOMEM;
	}
	d[0].len = (uint32_t)strlen((char *)d[0].buf);
	d[1].code = VHD_PLAT_W2KU;
	if ((rc = utf16le(ps->abs, 0, &d[1])))
		return rc;
	d[2].code = VHD_PLAT_W2RU;
	if ((rc = utf16le(ps->rel, 1, &d[2])))
		return rc;
	return 0;
}

/* Parent identity in the header and the locators after the BAT; returns
 * the end of the metadata. */
static uint64_t place_locators(struct vhd_header *h, const struct parent_spec *ps, struct loc_data d[3])
{
	uint64_t off = h->table_offset + vhd_bat_bytes(h->max_bat_size);

	memcpy(h->prt_uuid, ps->uuid, 16);
	h->prt_ts = ps->ts;
	if (vhd_utf8_to_utf16(ps->name, h->prt_name, 256) < 0)
		h->prt_name[255] = 0; /* informational: a truncated name is fine */
	for (int i = 0; i < 3; i++) {
		uint32_t secs = (d[i].len + VHD_SECTOR_SIZE - 1) / VHD_SECTOR_SIZE;
		h->loc[i].code = d[i].code;
		h->loc[i].data_space = secs;
		h->loc[i].data_len = d[i].len;
		h->loc[i].data_offset = off;
		off += (uint64_t)secs * VHD_SECTOR_SIZE;
	}
	return off;
}

/* Build the whole metadata image in memory, then write it and the footer. */
static int write_image(int fd, const char *path, const struct vhd_footer *f, const struct vhd_header *h,
		       const struct loc_data *d, int nloc, uint64_t meta_end)
{
	uint8_t *buf = calloc(1, meta_end + VHD_FOOTER_SIZE);
	uint64_t bat_end = h->table_offset + vhd_bat_bytes(h->max_bat_size);
	ssize_t n;

	if (!buf)
		return vhd_fail(ENOMEM, "create: %s: out of memory", path);
	vhd_footer_encode(f, buf);
	vhd_header_encode(h, buf + VHD_HEADER_OFFSET);
	memset(buf + h->table_offset, 0xff, bat_end - h->table_offset);
	for (int i = 0; i < nloc; i++)
		memcpy(buf + h->loc[i].data_offset, d[i].buf, d[i].len);
	memcpy(buf + meta_end, buf, VHD_FOOTER_SIZE);
	n = pwrite(fd, buf, meta_end + VHD_FOOTER_SIZE, 0);
	free(buf);
	if (n != (ssize_t)(meta_end + VHD_FOOTER_SIZE))
		return vhd_fail(n < 0 ? errno : EIO, "create: %s: writing: %s", path,
				n < 0 ? strerror(errno) : "short write");
	if (fsync(fd))
		return vhd_fail(errno, "create: %s: fsync: %s", path, strerror(errno));
	return 0;
}

/* Create the file (never clobbering one when excl) and write the image. */
static int create_file(const char *op, const char *path, uint64_t size, const struct parent_spec *ps, int excl)
{
	struct vhd_footer f;
	struct vhd_header h;
	struct loc_data d[3] = { { 0, NULL, 0 } };
	uint64_t meta_end;
	int fd, rc;

	if ((rc = check_size(op, path, size)))
		return rc;
	new_footer(&f, size, ps != NULL);
	new_header(&h, size);
	meta_end = h.table_offset + vhd_bat_bytes(h.max_bat_size);
	if (ps) {
		if ((rc = make_locators(ps, d))) {
			rc = vhd_fail(rc, "%s: %s: encoding the parent locators failed", op, path);
			goto out;
		}
		meta_end = place_locators(&h, ps, d);
	}
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | (excl ? O_EXCL : O_TRUNC), 0644);
	if (fd < 0) {
		rc = vhd_fail(errno, "%s: %s: %s", op, path,
			      errno == EEXIST ? "file exists (refusing to overwrite it)" : strerror(errno));
		goto out;
	}
	rc = write_image(fd, path, &f, &h, d, ps ? 3 : 0, meta_end);
	close(fd);
	if (rc)
		unlink(path);
out:
	for (int i = 0; i < 3; i++)
		free(d[i].buf);
	return rc;
}

int vhd_create(const char *path, uint64_t size)
{
	return create_file("create", path, size, NULL, 1);
}

/* Relative path from directory `from` to file `to` (both absolute and
 * canonical): "./x" in the same directory, "../d/x" elsewhere. */
static char *relpath(const char *to, const char *from)
{
	const char *t = to, *f = from;
	char *out;
	int ups = 0;

	for (;;) {
		while (*t == '/')
			t++;
		while (*f == '/')
			f++;
		size_t lt = strcspn(t, "/"), lf = strcspn(f, "/");
		if (!*f || lt != lf || memcmp(t, f, lt) || !t[lt])
			break;
		t += lt;
		f += lf;
	}
	for (const char *p = f; *p;) {
		while (*p == '/')
			p++;
		if (!*p)
			break;
		ups++;
		p += strcspn(p, "/");
	}
	out = malloc((size_t)ups * 3 + strlen(t) + 3);
	if (!out)
		return NULL;
	strcpy(out, ups ? "" : "./");
	for (int k = 0; k < ups; k++)
		strcat(out, "../");
	strcat(out, t);
	return out;
}

/* Identity and names of the parent, as the child will record them. */
static int parent_spec_fill(struct parent_spec *ps, const char *parent, const char *child,
			    uint64_t *psize, int *is_vhd)
{
	char cdir_real[PATH_MAX], *tmp, *cdir;
	struct stat st;
	int rc;

	memset(ps, 0, sizeof(*ps));
	if (stat(parent, &st))
		return vhd_fail(errno, "snapshot: %s: %s", parent, strerror(errno));
	rc = vhd_probe(parent);
	if (rc < 0)
		return rc;
	*is_vhd = rc;
	if (*is_vhd) {
		struct vhd_image p;
		if ((rc = vhd_open(&p, parent, VHD_OPEN_RDONLY)))
			return rc;
		memcpy(ps->uuid, p.footer.uuid, 16);
		*psize = p.footer.curr_size;
		vhd_close(&p);
	} else {
		if ((rc = vhd_file_size(parent, psize)))
			return rc;
		if (*psize % VHD_SECTOR_SIZE)
			return vhd_fail(EINVAL, "snapshot: %s: raw parent size %llu is not a multiple of 512",
					parent, (unsigned long long)*psize);
	}
	ps->ts = vhd_time(st.st_mtime);
	ps->abs = realpath(parent, NULL);
	tmp = strdup(child);
	if (!ps->abs || !tmp) {
		free(tmp);
		return vhd_fail(errno ? errno : ENOMEM, "snapshot: %s: %s", parent, strerror(errno));
	}
	cdir = dirname(tmp);
	if (!realpath(cdir, cdir_real)) {
		rc = vhd_fail(errno, "snapshot: %s: directory %s: %s", child, cdir, strerror(errno));
		free(tmp);
		return rc;
	}
	free(tmp);
	ps->rel = relpath(ps->abs, cdir_real);
	ps->name = strdup(strrchr(ps->abs, '/') + 1);
	if (!ps->rel || !ps->name)
		return vhd_fail(ENOMEM, "snapshot: %s: out of memory", child);
	return 0;
}

static void parent_spec_free(struct parent_spec *ps)
{
	free(ps->name);
	free(ps->rel);
	free(ps->abs);
}

/* size 0 = the parent's virtual size; excl = refuse an existing child. */
int vhd_snapshot_ex(const char *parent, const char *child, uint64_t size, int excl)
{
	struct parent_spec ps;
	uint64_t psize = 0;
	int is_vhd = 0, rc;

	rc = parent_spec_fill(&ps, parent, child, &psize, &is_vhd);
	if (!rc && !size)
		size = psize;
	if (!rc && !is_vhd && size > psize)
		rc = vhd_fail(EINVAL, "snapshot: %s: raw parent %s (%llu bytes) is smaller than the child (%llu bytes)",
			      child, parent, (unsigned long long)psize, (unsigned long long)size);
	if (!rc)
		rc = create_file("snapshot", child, size, &ps, excl);
	parent_spec_free(&ps);
	return rc;
}

int vhd_snapshot(const char *parent, const char *child)
{
	return vhd_snapshot_ex(parent, child, 0, 1);
}
