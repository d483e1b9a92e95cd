/* libFuzzer target for the VHD parser: the input becomes a file that goes
 * through the decoders, vhd_open (checked and lenient), vhd_check, parent
 * locators and, when the chain stays in our scratch directory, a chain
 * open with reads.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE \
 *         -D_FILE_OFFSET_BITS=64 -Ilib/vhd lib/vhd/[a-z]*.c tests/fuzz/fuzz-vhd.c -o build/fuzz-vhd
 *   build/fuzz-vhd -max_total_time=60 -max_len=65536 CORPUS_DIR
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "vhd.h"

static char dir[64], path[128];

/* A private directory for the image and a 1 MiB raw parent beside it. */
static int setup(void)
{
	if (dir[0])
		return 0;
	snprintf(dir, sizeof(dir), "/tmp/fuzz-vhd.XXXXXX");
	if (!mkdtemp(dir))
		return -1;
	snprintf(path, sizeof(path), "%s/img.vhd", dir);
	/* a raw parent a differencing input can name as ./base.raw */
	char base[128];
	snprintf(base, sizeof(base), "%s/base.raw", dir);
	int fd = open(base, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd >= 0) {
		uint8_t blk[4096];
		for (int i = 0; i < 256; i++) {
			memset(blk, i, sizeof(blk));
			if (write(fd, blk, sizeof(blk)) != (ssize_t)sizeof(blk))
				break;
		}
		close(fd);
	}
	return 0;
}

static void ignore(void *arg, const char *line)
{
	(void)arg;
	(void)line;
}

/* Walk the chain's view with locate and short reads, bounded in work. */
static void read_chain(const char *p)
{
	struct vhd_chain c;
	uint8_t buf[16 * 512];

	if (vhd_chain_open(&c, p, VHD_OPEN_RDONLY))
		return;
	uint64_t total = c.layers[0].size >> VHD_SECTOR_SHIFT, sec = 0;
	for (int n = 0; n < 4096 && sec < total; n++) {
		uint32_t run, max = total - sec > (1u << 20) ? (1u << 20) : (uint32_t)(total - sec);
		if (vhd_chain_locate(&c, sec, max, &run) < 0 || !run)
			break;
		if (vhd_chain_read(&c, buf, sec, run < 16 ? run : 16))
			break;
		sec += run;
	}
	vhd_chain_close(&c);
}

/* Only follow parents that resolve inside the scratch directory. */
static int parent_is_local(const struct vhd_image *img)
{
	char *pp = NULL;
	int local;

	if (img->footer.type != VHD_TYPE_DIFF)
		return 1;
	if (vhd_parent_path(img, &pp))
		return 0;
	local = !strncmp(pp, dir, strlen(dir)) && !strstr(pp, "..");
	free(pp);
	return local;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct vhd_footer f;
	struct vhd_header h;
	struct vhd_image img;
	int fd;

	if (setup())
		return 0;
	if (size >= 512)
		vhd_footer_decode(data, &f, "fuzz");
	if (size >= 1536)
		vhd_header_decode(data + 512, &h, "fuzz");
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || write(fd, data, size) != (ssize_t)size) {
		if (fd >= 0)
			close(fd);
		return 0;
	}
	close(fd);
	vhd_probe(path);
	if (!vhd_open(&img, path, VHD_OPEN_RDONLY | VHD_OPEN_NOCHECK | VHD_OPEN_ANYFOOTER)) {
		for (int i = 0; i < 8; i++) {
			char *s = NULL;
			if (!vhd_locator_read(&img, i, &s))
				free(s);
		}
		free(vhd_parent_name(&img));
		vhd_layout_scan(&img, ignore, NULL, NULL);
		vhd_close(&img);
	}
	if (!vhd_open(&img, path, VHD_OPEN_RDONLY)) {
		int local = parent_is_local(&img);
		vhd_close(&img);
		if (local) {
			vhd_check(path, 0, ignore, NULL);
			read_chain(path);
		}
	}
	return 0;
}
