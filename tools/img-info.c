/* renew-img info / map: what an image is and where its data lives. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "renew-img.h"
#include "vhd.h"

/* Allocation of the top VHD: blocks and the sectors their bitmaps mark. */
struct usage {
	uint64_t blocks, data_sectors;
};

/* Count allocated blocks and bitmap bits within the virtual size. */
static int count_usage(struct vhd_image *img, struct usage *u)
{
	uint8_t *bm = malloc(vhd_bitmap_bytes(img));
	uint64_t secs = vhd_size(img) >> VHD_SECTOR_SHIFT;

	memset(u, 0, sizeof(*u));
	if (!bm)
		return img_fail("info: %s: out of memory", img->path);
	for (uint32_t b = 0; b < img->bat_entries; b++) {
		if (!vhd_block_allocated(img, b))
			continue;
		uint64_t first = (uint64_t)b * img->spb;
		uint32_t bits = secs - first < img->spb ? (uint32_t)(secs - first) : img->spb;
		if (vhd_read_bitmap(img, b, bm)) {
			free(bm);
			return img_fail_lib();
		}
		u->blocks++;
		u->data_sectors += vhd_bitmap_count(bm, bits);
	}
	free(bm);
	return 0;
}

static const char *type_name(const struct vhd_layer *l)
{
	if (l->kind == LAYER_RAW)
		return "raw";
	return l->img.footer.type == VHD_TYPE_DIFF ? "differencing" : "dynamic";
}

/* A JSON string, or null when absent. */
static void json_opt(const char *s)
{
	if (s)
		img_json_str(stdout, s);
	else
		fputs("null", stdout);
}

static void print_json(const struct vhd_chain *c, const struct usage *u, const char *uuid,
		       const char *puuid, const char *pname)
{
	const struct vhd_layer *top = &c->layers[0];
	uint64_t bs = top->kind == LAYER_VHD ? top->img.header.block_size : 0;

	printf("{\"path\": ");
	img_json_str(stdout, top->path);
	printf(", \"format\": \"%s\", \"type\": \"%s\", \"virtual_size\": %llu",
	       top->kind == LAYER_VHD ? "vhd" : "raw", type_name(top), (unsigned long long)top->size);
	if (top->kind == LAYER_VHD)
		printf(", \"block_size\": %llu, \"allocated_blocks\": %llu, \"allocated_bytes\": %llu, \"data_bytes\": %llu",
		       (unsigned long long)bs, (unsigned long long)u->blocks, (unsigned long long)(u->blocks * bs),
		       (unsigned long long)(u->data_sectors << VHD_SECTOR_SHIFT));
	printf(", \"uuid\": ");
	json_opt(uuid);
	printf(", \"parent\": ");
	json_opt(c->depth > 1 ? c->layers[1].path : NULL);
	printf(", \"parent_uuid\": ");
	json_opt(puuid);
	printf(", \"parent_name\": ");
	json_opt(pname);
	printf(", \"chain\": [");
	for (int i = 0; i < c->depth; i++) {
		printf("%s{\"path\": ", i ? ", " : "");
		img_json_str(stdout, c->layers[i].path);
		printf(", \"format\": \"%s\"}", c->layers[i].kind == LAYER_VHD ? "vhd" : "raw");
	}
	printf("]}\n");
}

static void print_text(const struct vhd_chain *c, const struct usage *u, const char *uuid,
		       const char *puuid, const char *pname)
{
	const struct vhd_layer *top = &c->layers[0];
	uint64_t bs = top->kind == LAYER_VHD ? top->img.header.block_size : 0;

	printf("path: %s\nformat: %s\ntype: %s\nvirtual_size: %llu\n", top->path,
	       top->kind == LAYER_VHD ? "vhd" : "raw", type_name(top), (unsigned long long)top->size);
	if (top->kind == LAYER_VHD)
		printf("block_size: %llu\nallocated_blocks: %llu\nallocated_bytes: %llu\ndata_bytes: %llu\nuuid: %s\n",
		       (unsigned long long)bs, (unsigned long long)u->blocks, (unsigned long long)(u->blocks * bs),
		       (unsigned long long)(u->data_sectors << VHD_SECTOR_SHIFT), uuid);
	if (c->depth > 1)
		printf("parent: %s\nparent_uuid: %s\nparent_name: %s\n", c->layers[1].path, puuid, pname);
	printf("chain:\n");
	for (int i = 0; i < c->depth; i++)
		printf("  %d %s %s\n", i, c->layers[i].kind == LAYER_VHD ? "vhd" : "raw", c->layers[i].path);
}

/* info [--json] FILE */
int img_cmd_info(int argc, char **argv)
{
	char *ops[1], uuid[37] = "", puuid[37] = "", *pname = NULL;
	struct usage u = { 0, 0 };
	struct vhd_chain c;
	unsigned flags;
	int rc = 0;

	if (img_args(argc, argv, "json", &flags, ops, 1) != 1)
		return img_usage("info");
	if (vhd_chain_open(&c, ops[0], VHD_OPEN_RDONLY))
		return img_fail_lib();
	struct vhd_layer *top = &c.layers[0];
	if (top->kind == LAYER_VHD) {
		rc = count_usage(&top->img, &u);
		vhd_uuid_format(top->img.footer.uuid, uuid);
		if (top->img.footer.type == VHD_TYPE_DIFF) {
			vhd_uuid_format(top->img.header.prt_uuid, puuid);
			pname = vhd_parent_name(&top->img);
		}
	}
	if (!rc && (flags & 1))
		print_json(&c, &u, top->kind == LAYER_VHD ? uuid : NULL, pname ? puuid : NULL, pname);
	else if (!rc)
		print_text(&c, &u, uuid, puuid, pname ? pname : "");
	free(pname);
	vhd_chain_close(&c);
	return rc;
}

/* One map extent, text or JSON. */
static void print_extent(const struct vhd_chain *c, int json, int *first, uint64_t start, uint64_t len, int layer)
{
	unsigned long long s = start << VHD_SECTOR_SHIFT, l = len << VHD_SECTOR_SHIFT;

	if (!json) {
		if (layer == c->depth)
			printf("%llu %llu zero\n", s, l);
		else
			printf("%llu %llu %d %s\n", s, l, layer, c->layers[layer].path);
		return;
	}
	printf("%s{\"start\": %llu, \"length\": %llu, ", *first ? "" : ",\n", s, l);
	*first = 0;
	if (layer == c->depth) {
		printf("\"layer\": null, \"path\": null, \"zero\": true}");
		return;
	}
	printf("\"layer\": %d, \"path\": ", layer);
	img_json_str(stdout, c->layers[layer].path);
	printf(", \"zero\": false}");
}

/* map [--json] FILE: extents merged across blocks while the layer holds. */
int img_cmd_map(int argc, char **argv)
{
	char *ops[1];
	struct vhd_chain c;
	unsigned flags;
	int first = 1, cur = -1;
	uint64_t start = 0, sec = 0, total;

	if (img_args(argc, argv, "json", &flags, ops, 1) != 1)
		return img_usage("map");
	if (vhd_chain_open(&c, ops[0], VHD_OPEN_RDONLY))
		return img_fail_lib();
	total = c.layers[0].size >> VHD_SECTOR_SHIFT;
	if (flags & 1)
		printf("[");
	while (sec < total) {
		uint32_t run, max = total - sec > (1u << 30) ? (1u << 30) : (uint32_t)(total - sec);
		int layer = vhd_chain_locate(&c, sec, max, &run);
		if (layer < 0) {
			vhd_chain_close(&c);
			return img_fail_lib();
		}
		if (layer != cur) {
			if (cur >= 0)
				print_extent(&c, flags & 1, &first, start, sec - start, cur);
			cur = layer;
			start = sec;
		}
		sec += run;
	}
	if (cur >= 0)
		print_extent(&c, flags & 1, &first, start, sec - start, cur);
	if (flags & 1)
		printf("]\n");
	vhd_chain_close(&c);
	return 0;
}
