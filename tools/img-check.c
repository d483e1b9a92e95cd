/* renew-img check [--repair]: one line per finding; exit 0 when clean
 * (leaks alone are not errors), 1 otherwise. */
#include <stdio.h>
#include "renew-img.h"
#include "vhd.h"

/* Every finding goes to stdout, one line each. */
static void print_line(void *arg, const char *line)
{
	FILE *f = arg;

	fprintf(f, "%s\n", line);
}

int img_cmd_check(int argc, char **argv)
{
	char *ops[1];
	unsigned flags;
	int rc;

	if (img_args(argc, argv, "repair", &flags, ops, 1) != 1)
		return img_usage("check");
	if (vhd_probe(ops[0]) == 0)
		return img_fail("check: %s: not a VHD (raw images have nothing to check)", ops[0]);
	rc = vhd_check(ops[0], flags & 1, print_line, stdout);
	fflush(stdout);
	if (rc < 0)
		return img_fail_lib();
	if (rc)
		fprintf(stderr, "renew-img: check: %s: %d problem%s found\n", ops[0], rc, rc == 1 ? "" : "s");
	else
		printf("%s: no problems found\n", ops[0]);
	return rc ? IMG_EXIT_FAIL : 0;
}
