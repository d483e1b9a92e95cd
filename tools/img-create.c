/* renew-img create / snapshot: new dynamic and differencing disks. */
#include <stdio.h>
#include "renew-img.h"
#include "vhd.h"

/* create FILE SIZE */
int img_cmd_create(int argc, char **argv)
{
	char *ops[2];
	unsigned flags;
	uint64_t size;

	if (img_args(argc, argv, "", &flags, ops, 2) != 2)
		return img_usage("create");
	if (img_parse_size(ops[1], &size))
		return img_fail("create: %s: bad size '%s' (bytes, or a number with K, M, G or T)", ops[0], ops[1]);
	if (vhd_create(ops[0], size))
		return img_fail_lib();
	return 0;
}

/* snapshot PARENT CHILD */
int img_cmd_snapshot(int argc, char **argv)
{
	char *ops[2];
	unsigned flags;

	if (img_args(argc, argv, "", &flags, ops, 2) != 2)
		return img_usage("snapshot");
	if (vhd_snapshot(ops[0], ops[1]))
		return img_fail_lib();
	return 0;
}
