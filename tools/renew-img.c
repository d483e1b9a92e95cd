/* renew-img: offline VHD image tool; a dispatcher over the command files. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "renew-img.h"
#include "tapdisk.h"
#include "vhd.h"

static const struct img_cmd cmds[] = {
	{ "create", "FILE SIZE", "create a dynamic VHD of SIZE bytes (K/M/G/T suffixes: powers of 1024)", img_cmd_create },
	{ "snapshot", "PARENT CHILD", "create a differencing VHD CHILD over PARENT (raw or VHD)", img_cmd_snapshot },
	{ "info", "[--json] FILE", "show an image and its chain", img_cmd_info },
	{ "check", "[--repair] FILE", "check consistency (exit 0 clean, 1 problems); --repair fixes what is safe", img_cmd_check },
	{ "map", "[--json] FILE", "list extents and the layer providing each (0 = FILE) or zero", img_cmd_map },
	{ "convert", "FILE OUT", "flatten the chain into a raw file, sparse where zero (OUT - = stdout)", img_cmd_convert },
	{ "commit", "[--force] [--keep-going] [--rate MB/s] CHILD...",
	  "copy every sector CHILD holds into its parent; CHILD stays valid", img_cmd_commit },
	{ "renew", "[--force] [--keep-going] [--rate MB/s] [--history DIR] CHILD...",
	  "commit, then put a fresh empty overlay at CHILD's path (the old one is deleted, or kept in DIR)", img_cmd_renew },
	{ "history", "DIR [--json] | DIR --init BASE | DIR --prune-before K",
	  "list the generations DIR keeps; start one from BASE; fold those before K into its base", img_cmd_history },
	{ "restore", "DIR --generation K|--at TIME OUT",
	  "build the base as of generation K (or the time TIME, UTC) into the new file OUT", img_cmd_restore },
	{ "write", "FILE OFFSET [LENGTH]", "write standard input into FILE at OFFSET (sector-aligned)", img_cmd_write },
};
#define NCMDS (sizeof(cmds) / sizeof(cmds[0]))

/* One command's usage, or the whole list; always exit code 2. */
int img_usage(const char *cmd)
{
	for (size_t i = 0; cmd && i < NCMDS; i++)
		if (!strcmp(cmds[i].name, cmd)) {
			fprintf(stderr, "usage: renew-img %s %s\n  %s\n", cmds[i].name, cmds[i].args, cmds[i].help);
			return IMG_EXIT_USAGE;
		}
	fprintf(stderr, "usage: renew-img COMMAND [ARGS]\n");
	for (size_t i = 0; i < NCMDS; i++)
		fprintf(stderr, "  %-9s %-22s %s\n", cmds[i].name, cmds[i].args, cmds[i].help);
	return IMG_EXIT_USAGE;
}

int img_fail(const char *fmt, ...)
{
	va_list ap;

	fputs("renew-img: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return IMG_EXIT_FAIL;
}

int img_fail_lib(void)
{
	return img_fail("%s", vhd_errmsg());
}

/* Flags are "--name" from a comma list; anything else starting with '-'
 * (except "-" itself) is a usage error. */
int img_args(int argc, char **argv, const char *allowed, unsigned *flags, char **ops, int max_ops)
{
	int n = 0, only_ops = 0;

	*flags = 0;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!only_ops && !strcmp(a, "--")) {
			only_ops = 1;
			continue;
		}
		if (!only_ops && a[0] == '-' && a[1]) {
			unsigned bit = 1;
			int found = 0;
			const char *p = allowed;
			while (p && *p) {
				size_t len = strcspn(p, ",");
				if (!strncmp(a, "--", 2) && strlen(a + 2) == len && !strncmp(a + 2, p, len)) {
					*flags |= bit;
					found = 1;
				}
				bit <<= 1;
				p += len + (p[len] == ',');
			}
			if (!found) {
				fprintf(stderr, "renew-img: %s: unknown option %s\n", argv[0], a);
				img_usage(argv[0]);
				return -1;
			}
			continue;
		}
		if (n == max_ops) {
			fprintf(stderr, "renew-img: %s: too many arguments\n", argv[0]);
			img_usage(argv[0]);
			return -1;
		}
		ops[n++] = argv[i];
	}
	return n;
}

/* Decimal with an optional K/M/G/T (1024-based) suffix. */
int img_parse_size(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;
	unsigned shift = 0;

	if (!s || !*s || *s == '-' || *s == '+')
		return -1;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s)
		return -1;
	switch (*end) {
	case 'k': case 'K': shift = 10; end++; break;
	case 'm': case 'M': shift = 20; end++; break;
	case 'g': case 'G': shift = 30; end++; break;
	case 't': case 'T': shift = 40; end++; break;
	}
	if (*end || (shift && v > (~0ull >> shift)))
		return -1;
	*out = (uint64_t)v << shift;
	return 0;
}

void img_json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p == '"' || *p == '\\')
			fprintf(f, "\\%c", *p);
		else if (*p < 0x20)
			fprintf(f, "\\u%04x", *p);
		else
			fputc(*p, f);
	}
	fputc('"', f);
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return img_usage(NULL);
	if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
		img_usage(argc > 2 ? argv[2] : NULL);
		return 0;
	}
	/* the runtime's progress lines are the daemon's business, and its
	 * errors the tool reports itself: the runtime shows only warnings */
	tlog_setup("renew-img", TLOG_WARN, 1);
	vhd_set_fault_hook(td_fault); /* tests fail named metadata writes */
	for (size_t i = 0; i < NCMDS; i++)
		if (!strcmp(cmds[i].name, argv[1]))
			return cmds[i].run(argc - 1, argv + 1);
	fprintf(stderr, "renew-img: unknown command '%s'\n", argv[1]);
	return img_usage(NULL);
}
