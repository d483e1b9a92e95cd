/* Unit tests of lib/vhd: encodings, checksums, geometry, UTF-16, bitmaps,
 * crash-ordered allocation (reopen after every step), chains and parent
 * resolution. Exits 0 when every check holds. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "vhd.h"

static int failures;
static char dir[256];

#define CHECK(cond) do { if (!(cond)) { failures++; \
	fprintf(stderr, "%s:%d: CHECK failed: %s (last error: %s)\n", __FILE__, __LINE__, #cond, vhd_errmsg()); } } while (0)

/* A path inside the scratch directory. */
static const char *p(const char *name)
{
	static char buf[4][512];
	static int n;
	char *b = buf[n++ % 4];
	snprintf(b, 512, "%s/%s", dir, name);
	return b;
}

/* Footer encode/decode keeps every field; any flipped byte breaks the checksum. */
static void test_footer(void)
{
	struct vhd_footer f = { .features = 2, .ff_version = 0x10000, .data_offset = 512, .timestamp = 12345,
				.creator_ver = 0x10003, .creator_os = 0x4c6e7578, .orig_size = 1 << 30,
				.curr_size = 1 << 30, .cyls = 2080, .heads = 16, .spt = 63, .type = 3, .hidden = 1 };
	struct vhd_footer g;
	uint8_t buf[512];

	memcpy(f.cookie, "conectix", 8);
	memcpy(f.creator_app, "tap", 4);
	vhd_uuid_generate(f.uuid);
	vhd_footer_encode(&f, buf);
	CHECK(vhd_footer_decode(buf, &g, "x") == 0);
	f.checksum = g.checksum;
	CHECK(!memcmp(&f, &g, sizeof(f)));
	CHECK(g.checksum == vhd_checksum(buf, 512, 64));
	buf[100] ^= 1;
	CHECK(vhd_footer_decode(buf, &g, "/x/disk.vhd") == -EINVAL);
	CHECK(strstr(vhd_errmsg(), "open: /x/disk.vhd: footer checksum mismatch (stored 0x") != NULL);
	buf[100] ^= 1;
	buf[0] = 'C';
	CHECK(vhd_footer_decode(buf, &g, "x") < 0);
	/* a known checksum: all-zero buffer sums to 0, so ~0 */
	uint8_t z[512] = { 0 };
	CHECK(vhd_checksum(z, 512, 64) == 0xffffffffu);
	z[64] = 0xff; /* the checksum field itself does not count */
	CHECK(vhd_checksum(z, 512, 64) == 0xffffffffu);
	z[0] = 1;
	CHECK(vhd_checksum(z, 512, 64) == 0xfffffffeu);
	/* sizes: not whole sectors, above the cap */
	f.curr_size = 1000;
	vhd_footer_encode(&f, buf);
	CHECK(vhd_footer_decode(buf, &g, "x") < 0);
	f.curr_size = VHD_MAX_VIRTUAL_SIZE + 512;
	vhd_footer_encode(&f, buf);
	CHECK(vhd_footer_decode(buf, &g, "x") < 0);
}

/* Header round trip including the parent name and locators. */
static void test_header(void)
{
	struct vhd_header h, g;
	uint8_t buf[1024];

	memset(&h, 0, sizeof(h));
	memcpy(h.cookie, "cxsparse", 8);
	h.data_offset = ~0ull;
	h.table_offset = 1536;
	h.hdr_version = 0x10000;
	h.max_bat_size = 51;
	h.block_size = VHD_BLOCK_SIZE;
	vhd_uuid_generate(h.prt_uuid);
	h.prt_ts = 777;
	CHECK(vhd_utf8_to_utf16("b\xc3\xa4se.raw", h.prt_name, 256) == 8);
	h.loc[0] = (struct vhd_parent_locator){ VHD_PLAT_MACX, 1, 19, 5632 };
	h.loc[7] = (struct vhd_parent_locator){ VHD_PLAT_W2KU, 2, 600, 6144 };
	vhd_header_encode(&h, buf);
	CHECK(buf[64] == 0 && buf[65] == 'b'); /* UTF-16 big-endian */
	CHECK(vhd_header_decode(buf, &g, "x") == 0);
	h.checksum = g.checksum;
	CHECK(!memcmp(&h, &g, sizeof(h)));
	buf[700] ^= 0x40;
	CHECK(vhd_header_decode(buf, &g, "/x/disk.vhd") < 0);
	CHECK(strstr(vhd_errmsg(), "header checksum mismatch") != NULL);
	h.block_size = 3 << 20;
	vhd_header_encode(&h, buf);
	CHECK(vhd_header_decode(buf, &g, "x") < 0);
	struct vhd_parent_locator l = { VHD_PLAT_MACX, 1, 0, 0 };
	CHECK(vhd_locator_space(&l) == 512);
	l.data_space = 1024;
	CHECK(vhd_locator_space(&l) == 1024);
}

/* The spec's CHS algorithm at a few sizes. */
static void test_geometry(void)
{
	uint16_t c;
	uint8_t h, s;

	vhd_geometry(100ull << 20, &c, &h, &s);
	CHECK(c == 1003 && h == 12 && s == 17);
	vhd_geometry(1ull << 30, &c, &h, &s);
	CHECK(c == 2080 && h == 16 && s == 63);
	vhd_geometry(VHD_MAX_VIRTUAL_SIZE, &c, &h, &s);
	CHECK(c == 65535 && h == 16 && s == 255);
	vhd_geometry(512, &c, &h, &s);
	CHECK(c == 0 && h == 4 && s == 17);
}

/* UUIDs, UTF-8/UTF-16 (with a non-BMP character) and bitmaps. */
static void test_misc(void)
{
	uint8_t u[16] = { 0 }, bm[512] = { 0 };
	uint16_t w[16];
	char s[64], t[37];

	CHECK(vhd_uuid_is_null(u));
	vhd_uuid_generate(u);
	CHECK(!vhd_uuid_is_null(u) && (u[6] >> 4) == 4);
	vhd_uuid_format(u, t);
	CHECK(strlen(t) == 36 && t[8] == '-');
	const char *in = "a\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80z";
	int n = vhd_utf8_to_utf16(in, w, 16);
	CHECK(n == 6 && w[3] == 0xd83d && w[4] == 0xde00);
	CHECK(vhd_utf16_to_utf8(w, (size_t)n, s, sizeof(s)) == (int)strlen(in) && !strcmp(s, in));
	CHECK(vhd_utf8_to_utf16("abc", w, 2) < 0);
	vhd_bitmap_set(bm, 0);
	vhd_bitmap_set(bm, 9);
	vhd_bitmap_set(bm, 4095);
	CHECK(bm[0] == 0x80 && bm[1] == 0x40 && bm[511] == 0x01);
	CHECK(vhd_bitmap_test(bm, 9) && !vhd_bitmap_test(bm, 8));
	CHECK(vhd_bitmap_count(bm, 4096) == 3 && vhd_bitmap_count(bm, 9) == 1);
	vhd_bitmap_clear(bm, 9);
	CHECK(!vhd_bitmap_test(bm, 9) && vhd_bitmap_count(bm, 4096) == 2);
}

/* Count check findings by kind. */
struct counts { int lines, leaks, errors; };
static void count_line(void *arg, const char *line)
{
	struct counts *c = arg;
	c->lines++;
	if (!strncmp(line, "leak:", 5))
		c->leaks++;
	if (!strncmp(line, "error:", 6))
		c->errors++;
}

/* Reopen the file and check it is valid with block `blk` in the state wanted. */
static void reopen_expect(const char *path, uint32_t blk, int allocated, int leaks)
{
	struct vhd_image img;
	struct counts c = { 0, 0, 0 };

	CHECK(vhd_open(&img, path, VHD_OPEN_RDONLY) == 0);
	CHECK(vhd_block_allocated(&img, blk) == allocated);
	vhd_close(&img);
	CHECK(vhd_check(path, 0, count_line, &c) == 0);
	CHECK(c.errors == 0 && c.leaks == leaks);
}

/* Each step of reserve / data+bitmap / commit leaves a valid file; a crash
 * before the commit only leaks space, which --repair trims. */
static void test_alloc_order(void)
{
	const char *path = p("alloc.vhd");
	struct vhd_image img;
	uint8_t bm[512], data[4096], back[4096];
	uint32_t bm_sec;
	struct stat st;

	CHECK(vhd_create(path, 10ull << 20) == 0);
	CHECK(vhd_create(path, 10ull << 20) == -EEXIST);
	reopen_expect(path, 1, 0, 0);
	/* crash after step 1 */
	CHECK(vhd_open(&img, path, 0) == 0);
	CHECK(vhd_alloc_reserve(&img, 1, &bm_sec) == 0);
	CHECK((((uint64_t)bm_sec + 1) << 9) % VHD_DATA_ALIGN == 0);
	CHECK(img.footer_off == (((uint64_t)bm_sec + 1) << 9) + VHD_BLOCK_SIZE);
	vhd_close(&img);
	reopen_expect(path, 1, 0, 1);
	struct counts c = { 0, 0, 0 };
	CHECK(vhd_check(path, 1, count_line, &c) == 0);
	CHECK(stat(path, &st) == 0 && st.st_size == 5632 + 512);
	reopen_expect(path, 1, 0, 0);
	/* crash after step 2 */
	CHECK(vhd_open(&img, path, 0) == 0);
	CHECK(vhd_alloc_reserve(&img, 1, &bm_sec) == 0);
	memset(data, 0xab, sizeof(data));
	CHECK(pwrite(img.fd, data, sizeof(data), ((off_t)bm_sec + 1) << 9) == sizeof(data));
	memset(bm, 0, sizeof(bm));
	for (int i = 0; i < 8; i++)
		vhd_bitmap_set(bm, (uint32_t)i);
	CHECK(vhd_write_bitmap_at(&img, bm_sec, bm) == 0);
	vhd_close(&img);
	reopen_expect(path, 1, 0, 1);
	/* all three steps: the space leaked before stays, the new block is used */
	CHECK(vhd_open(&img, path, 0) == 0);
	CHECK(vhd_alloc_reserve(&img, 1, &bm_sec) == 0);
	CHECK(pwrite(img.fd, data, sizeof(data), ((off_t)bm_sec + 1) << 9) == sizeof(data));
	CHECK(vhd_write_bitmap_at(&img, bm_sec, bm) == 0);
	CHECK(vhd_alloc_commit(&img, 1, bm_sec) == 0);
	CHECK(vhd_alloc_reserve(&img, 1, &bm_sec) == -EEXIST);
	CHECK(vhd_alloc_reserve(&img, 5, &bm_sec) == -EINVAL); /* 10 MiB = blocks 0..4 */
	vhd_close(&img);
	reopen_expect(path, 1, 1, 1); /* the interior leak of the earlier crash */
	/* data reads back through a chain */
	struct vhd_chain ch;
	CHECK(vhd_chain_open(&ch, path, VHD_OPEN_RDONLY) == 0);
	CHECK(vhd_chain_read(&ch, back, VHD_SECTORS_PER_BLOCK, 8) == 0);
	CHECK(!memcmp(back, data, sizeof(back)));
	CHECK(vhd_chain_read(&ch, back, VHD_SECTORS_PER_BLOCK + 8, 8) == 0);
	memset(data, 0, sizeof(data));
	CHECK(!memcmp(back, data, sizeof(back)));
	uint32_t run;
	CHECK(vhd_chain_locate(&ch, VHD_SECTORS_PER_BLOCK, 100, &run) == 0 && run == 8);
	CHECK(vhd_chain_locate(&ch, 0, 100000, &run) == 1 && run == VHD_SECTORS_PER_BLOCK);
	CHECK(vhd_chain_read(&ch, back, 20479, 2) == -EINVAL);
	vhd_chain_close(&ch);
	/* vhd_alloc_block: a second block after the first, data aligned */
	CHECK(vhd_open(&img, path, 0) == 0);
	CHECK(vhd_alloc_block(&img, 0, bm) == 0);
	CHECK(vhd_block_data_off(&img, 0) % VHD_DATA_ALIGN == 0);
	CHECK(vhd_block_data_off(&img, 0) > vhd_block_data_off(&img, 1));
	vhd_close(&img);
	reopen_expect(path, 0, 1, 1);
}

/* A reservation whose data failed gives its space back, but only the last
 * one: an earlier one stays a leak under the later block. */
static void test_alloc_cancel(void)
{
	const char *path = p("cancel.vhd");
	struct vhd_image img;
	uint32_t a, b;
	uint64_t before, mid;
	struct stat st;

	CHECK(vhd_create(path, 10ull << 20) == 0);
	CHECK(vhd_open(&img, path, 0) == 0);
	before = img.footer_off;
	CHECK(vhd_alloc_reserve(&img, 1, &a) == 0);
	CHECK(vhd_alloc_cancel(&img, a, before) == 0);
	CHECK(img.footer_off == before);
	CHECK(fstat(img.fd, &st) == 0 && (uint64_t)st.st_size == before + 512);
	vhd_close(&img);
	reopen_expect(path, 1, 0, 0);
	/* two in flight: the first cannot go back, the second can */
	CHECK(vhd_open(&img, path, 0) == 0);
	CHECK(vhd_alloc_reserve(&img, 1, &a) == 0);
	mid = img.footer_off;
	CHECK(vhd_alloc_reserve(&img, 2, &b) == 0);
	CHECK(vhd_alloc_cancel(&img, a, before) == 0);
	CHECK(img.footer_off > mid);
	CHECK(vhd_alloc_cancel(&img, b, mid) == 0);
	CHECK(img.footer_off == mid);
	vhd_close(&img);
	reopen_expect(path, 1, 0, 1);
	CHECK(stat(path, &st) == 0 && (uint64_t)st.st_size == mid + 512);
}

/* Write a file of `size` bytes where byte i of sector s is (s + i) & 0xff. */
static void make_raw(const char *path, uint64_t size)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	uint8_t sec[512];

	for (uint64_t s = 0; s < size / 512; s++) {
		for (int i = 0; i < 512; i++)
			sec[i] = (uint8_t)(s + (uint64_t)i);
		CHECK(pwrite(fd, sec, 512, (off_t)(s * 512)) == 512);
	}
	CHECK(ftruncate(fd, (off_t)size) == 0);
	close(fd);
}

/* Chains: raw base, VHD middle, top; reads pick the right layer. */
static void test_chain(void)
{
	struct vhd_chain c;
	struct vhd_image img;
	uint8_t bm[512] = { 0 }, buf[1536], want[512];
	char base[512];

	snprintf(base, sizeof(base), "%s", p("base.raw"));

	make_raw(base, 8ull << 20);
	CHECK(mkdir(p("sub"), 0755) == 0);
	CHECK(vhd_snapshot(base, p("sub/mid.vhd")) == 0);
	CHECK(vhd_snapshot(p("sub/mid.vhd"), p("top.vhd")) == 0);
	CHECK(vhd_snapshot(p("sub/mid.vhd"), p("top.vhd")) == -EEXIST);
	/* mid: sector 14 of block 0 = 0x11 */
	CHECK(vhd_open(&img, p("sub/mid.vhd"), 0) == 0);
	vhd_bitmap_set(bm, 14);
	CHECK(vhd_alloc_block(&img, 0, bm) == 0);
	memset(want, 0x11, 512);
	CHECK(pwrite(img.fd, want, 512, (off_t)vhd_block_data_off(&img, 0) + 14 * 512) == 512);
	vhd_close(&img);
	CHECK(vhd_chain_open(&c, p("top.vhd"), VHD_OPEN_RDONLY) == 0);
	CHECK(c.depth == 3 && c.layers[2].kind == LAYER_RAW && c.layers[1].kind == LAYER_VHD);
	CHECK(vhd_chain_read(&c, buf, 13, 3) == 0);
	int good = 1;
	for (int i = 0; i < 512; i++)
		good &= buf[i] == (uint8_t)(13 + i) && buf[1024 + i] == (uint8_t)(15 + i);
	CHECK(good);
	CHECK(!memcmp(buf + 512, want, 512));
	uint32_t run;
	CHECK(vhd_chain_locate(&c, 0, 1000, &run) == 2 && run == 14);
	CHECK(vhd_chain_locate(&c, 14, 1000, &run) == 1 && run == 1);
	CHECK(vhd_chain_locate(&c, 15, 100000, &run) == 2 && run == VHD_SECTORS_PER_BLOCK - 15);
	vhd_chain_close(&c);
	/* absolute fallback: the child moves away from its relative parent */
	CHECK(rename(p("top.vhd"), p("sub/top2.vhd")) == 0);
	CHECK(vhd_open(&img, p("sub/top2.vhd"), VHD_OPEN_RDONLY) == 0);
	char *pp = NULL;
	CHECK(vhd_parent_path(&img, &pp) == 0 && pp && strstr(pp, "/sub/mid.vhd"));
	free(pp);
	vhd_close(&img);
	/* UUID mismatch after re-creating the parent */
	CHECK(unlink(p("sub/mid.vhd")) == 0);
	CHECK(vhd_snapshot(base, p("sub/mid.vhd")) == 0);
	CHECK(vhd_chain_open(&c, p("sub/top2.vhd"), VHD_OPEN_RDONLY) < 0);
	CHECK(strstr(vhd_errmsg(), "parent UUID mismatch") != NULL);
	/* missing parent */
	CHECK(unlink(p("sub/mid.vhd")) == 0);
	CHECK(vhd_chain_open(&c, p("sub/top2.vhd"), VHD_OPEN_RDONLY) == -ENOENT);
	CHECK(strstr(vhd_errmsg(), "parent not found") != NULL);
}

/* Create refuses bad sizes with clear messages. */
static void test_create_limits(void)
{
	CHECK(vhd_create(p("z.vhd"), 0) == -EINVAL);
	CHECK(vhd_create(p("z.vhd"), 1000) == -EINVAL && strstr(vhd_errmsg(), "multiple of 512"));
	CHECK(vhd_create(p("z.vhd"), VHD_MAX_VIRTUAL_SIZE + 512) == -EFBIG && strstr(vhd_errmsg(), "2040 GiB"));
	CHECK(access(p("z.vhd"), F_OK) != 0);
	CHECK(vhd_create(p("max.vhd"), VHD_MAX_VIRTUAL_SIZE) == 0);
	struct vhd_image img;
	CHECK(vhd_open(&img, p("max.vhd"), VHD_OPEN_RDONLY) == 0);
	CHECK(img.bat_entries == 1044480 && img.header.max_bat_size == 1044480);
	vhd_close(&img);
	CHECK(vhd_probe(p("max.vhd")) == 1);
	CHECK(unlink(p("max.vhd")) == 0);
}

int main(void)
{
	snprintf(dir, sizeof(dir), "%s/vhd-unit.XXXXXX", access("tests/tmp", W_OK) ? "/tmp" : "tests/tmp");
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	test_footer();
	test_header();
	test_geometry();
	test_misc();
	test_alloc_order();
	test_alloc_cancel();
	test_chain();
	test_create_limits();
	if (failures) {
		fprintf(stderr, "%d checks failed; files kept in %s\n", failures, dir);
		return 1;
	}
	char cmd[600];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd))
		return 1;
	printf("vhd-unit: all checks passed\n");
	return 0;
}
