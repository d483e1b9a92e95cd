/* Pure encoding and decoding of the VHD footer and dynamic header, the
 * checksum, the CHS geometry and UUIDs: no I/O, so the fuzzers reach it. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include "vhd.h"

/* Big-endian stores and loads: the format is big-endian throughout. */
static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void put32(uint8_t *p, uint32_t v) { put16(p, (uint16_t)(v >> 16)); put16(p + 2, (uint16_t)v); }
static void put64(uint8_t *p, uint64_t v) { put32(p, (uint32_t)(v >> 32)); put32(p + 4, (uint32_t)v); }
static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t get32(const uint8_t *p) { return (uint32_t)get16(p) << 16 | get16(p + 2); }
static uint64_t get64(const uint8_t *p) { return (uint64_t)get32(p) << 32 | get32(p + 4); }

/* Exported for the BAT and locator code, which share the byte order. */
uint32_t vhd_be32(const uint8_t *p) { return get32(p); }
void vhd_put_be32(uint8_t *p, uint32_t v) { put32(p, v); }

/* Ones' complement of the byte sum, the 4-byte checksum field counted as zero. */
uint32_t vhd_checksum(const uint8_t *buf, size_t len, size_t csum_off)
{
	uint32_t sum = 0;

	for (size_t i = 0; i < len; i++)
		if (i < csum_off || i >= csum_off + 4)
			sum += buf[i];
	return ~sum;
}

/* Footer layout per the VHD 1.0 spec; the checksum is computed here. */
void vhd_footer_encode(const struct vhd_footer *f, uint8_t out[512])
{
	memset(out, 0, 512);
	memcpy(out, f->cookie, 8);
	put32(out + 8, f->features);
	put32(out + 12, f->ff_version);
	put64(out + 16, f->data_offset);
	put32(out + 24, f->timestamp);
	memcpy(out + 28, f->creator_app, 4);
	put32(out + 32, f->creator_ver);
	put32(out + 36, f->creator_os);
	put64(out + 40, f->orig_size);
	put64(out + 48, f->curr_size);
	put16(out + 56, f->cyls);
	out[58] = f->heads;
	out[59] = f->spt;
	put32(out + 60, f->type);
	memcpy(out + 68, f->uuid, 16);
	out[84] = f->saved;
	out[85] = f->hidden;
	put32(out + 64, vhd_checksum(out, 512, 64));
}

/* Decode, then refuse what no reader could use: bad cookie, checksum,
 * unknown type, a size that is not whole sectors or above the cap. */
int vhd_footer_decode(const uint8_t in[512], struct vhd_footer *f, const char *path)
{
	uint32_t sum;

	memset(f, 0, sizeof(*f));
	memcpy(f->cookie, in, 8);
	f->features = get32(in + 8);
	f->ff_version = get32(in + 12);
	f->data_offset = get64(in + 16);
	f->timestamp = get32(in + 24);
	memcpy(f->creator_app, in + 28, 4);
	f->creator_ver = get32(in + 32);
	f->creator_os = get32(in + 36);
	f->orig_size = get64(in + 40);
	f->curr_size = get64(in + 48);
	f->cyls = get16(in + 56);
	f->heads = in[58];
	f->spt = in[59];
	f->type = get32(in + 60);
	f->checksum = get32(in + 64);
	memcpy(f->uuid, in + 68, 16);
	f->saved = in[84];
	f->hidden = in[85];

	if (memcmp(f->cookie, "conectix", 8))
		return vhd_fail(EINVAL, "open: %s: no VHD footer (cookie is not \"conectix\")", path);
	sum = vhd_checksum(in, 512, 64);
	if (sum != f->checksum)
		return vhd_fail(EINVAL, "open: %s: footer checksum mismatch (stored 0x%08x, computed 0x%08x)",
				path, f->checksum, sum);
	if (f->type != VHD_TYPE_FIXED && f->type != VHD_TYPE_DYNAMIC && f->type != VHD_TYPE_DIFF)
		return vhd_fail(EINVAL, "open: %s: unknown disk type %u in footer", path, f->type);
	if (f->curr_size % VHD_SECTOR_SIZE)
		return vhd_fail(EINVAL, "open: %s: virtual size %llu is not a multiple of 512",
				path, (unsigned long long)f->curr_size);
	if (f->curr_size > VHD_MAX_VIRTUAL_SIZE)
		return vhd_fail(EFBIG, "open: %s: virtual size %llu is above the 2040 GiB limit",
				path, (unsigned long long)f->curr_size);
	return 0;
}

/* Dynamic header layout per the spec; the checksum is computed here. */
void vhd_header_encode(const struct vhd_header *h, uint8_t out[1024])
{
	memset(out, 0, 1024);
	memcpy(out, h->cookie, 8);
	put64(out + 8, h->data_offset);
	put64(out + 16, h->table_offset);
	put32(out + 24, h->hdr_version);
	put32(out + 28, h->max_bat_size);
	put32(out + 32, h->block_size);
	memcpy(out + 40, h->prt_uuid, 16);
	put32(out + 56, h->prt_ts);
	for (int i = 0; i < 256; i++)
		put16(out + 64 + 2 * i, h->prt_name[i]);
	for (int i = 0; i < 8; i++) {
		uint8_t *l = out + 576 + 24 * i;
		put32(l, h->loc[i].code);
		put32(l + 4, h->loc[i].data_space);
		put32(l + 8, h->loc[i].data_len);
		put64(l + 16, h->loc[i].data_offset);
	}
	put32(out + 36, vhd_checksum(out, 1024, 36));
}

/* Is x a power of two? Block sizes must be. */
static int pow2(uint32_t x) { return x && !(x & (x - 1)); }

/* Decode and check cookie, checksum and a usable block size. */
int vhd_header_decode(const uint8_t in[1024], struct vhd_header *h, const char *path)
{
	uint32_t sum;

	memset(h, 0, sizeof(*h));
	memcpy(h->cookie, in, 8);
	h->data_offset = get64(in + 8);
	h->table_offset = get64(in + 16);
	h->hdr_version = get32(in + 24);
	h->max_bat_size = get32(in + 28);
	h->block_size = get32(in + 32);
	h->checksum = get32(in + 36);
	memcpy(h->prt_uuid, in + 40, 16);
	h->prt_ts = get32(in + 56);
	for (int i = 0; i < 256; i++)
		h->prt_name[i] = get16(in + 64 + 2 * i);
	for (int i = 0; i < 8; i++) {
		const uint8_t *l = in + 576 + 24 * i;
		h->loc[i].code = get32(l);
		h->loc[i].data_space = get32(l + 4);
		h->loc[i].data_len = get32(l + 8);
		h->loc[i].data_offset = get64(l + 16);
	}
	if (memcmp(h->cookie, "cxsparse", 8))
		return vhd_fail(EINVAL, "open: %s: no dynamic disk header (cookie is not \"cxsparse\")", path);
	sum = vhd_checksum(in, 1024, 36);
	if (sum != h->checksum)
		return vhd_fail(EINVAL, "open: %s: header checksum mismatch (stored 0x%08x, computed 0x%08x)",
				path, h->checksum, sum);
	if (!pow2(h->block_size) || h->block_size < 4096 || h->block_size > (256u << 20))
		return vhd_fail(EINVAL, "open: %s: unsupported block size %u (want a power of two, 4 KiB..256 MiB)",
				path, h->block_size);
	return 0;
}

/* CHS geometry, the spec's algorithm (appendix "CHS calculation"). */
void vhd_geometry(uint64_t size, uint16_t *cyls, uint8_t *heads, uint8_t *spt)
{
	uint64_t total = size / VHD_SECTOR_SIZE, cth;
	uint32_t h, s;

	if (total > 65535ull * 16 * 255)
		total = 65535ull * 16 * 255;
	if (total >= 65535ull * 16 * 63) {
		s = 255;
		h = 16;
		cth = total / s;
	} else {
		s = 17;
		cth = total / s;
		h = (uint32_t)((cth + 1023) / 1024);
		if (h < 4)
			h = 4;
		if (cth >= h * 1024ull || h > 16) {
			s = 31;
			h = 16;
			cth = total / s;
		}
		if (cth >= h * 1024ull) {
			s = 63;
			h = 16;
			cth = total / s;
		}
	}
	*cyls = (uint16_t)(cth / h);
	*heads = (uint8_t)h;
	*spt = (uint8_t)s;
}

/* A random (version 4) UUID; falls back to time and address entropy. */
void vhd_uuid_generate(uint8_t uuid[16])
{
	if (getrandom(uuid, 16, 0) != 16) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		uint64_t a = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ (uintptr_t)uuid;
		for (int i = 0; i < 16; i++) {
			a = a * 6364136223846793005ull + 1442695040888963407ull;
			uuid[i] = (uint8_t)(a >> 56);
		}
	}
	uuid[6] = (uint8_t)((uuid[6] & 0x0f) | 0x40);
	uuid[8] = (uint8_t)((uuid[8] & 0x3f) | 0x80);
}

/* The usual 8-4-4-4-12 text form, bytes in stored order (as vhd-util prints). */
void vhd_uuid_format(const uint8_t uuid[16], char out[37])
{
	snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
		 uuid[0], uuid[1], uuid[2], uuid[3], uuid[4], uuid[5], uuid[6], uuid[7],
		 uuid[8], uuid[9], uuid[10], uuid[11], uuid[12], uuid[13], uuid[14], uuid[15]);
}

/* A raw parent is recorded as the null UUID. */
int vhd_uuid_is_null(const uint8_t uuid[16])
{
	for (int i = 0; i < 16; i++)
		if (uuid[i])
			return 0;
	return 1;
}

/* Seconds since 2000-01-01 UTC, the format's clock. */
uint32_t vhd_time(time_t t)
{
	return t > (time_t)VHD_EPOCH_OFFSET ? (uint32_t)(t - VHD_EPOCH_OFFSET) : 0;
}
