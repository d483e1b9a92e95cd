/* The table of disk types: the string before the colon in "renew:/path". */
#include <errno.h>
#include <string.h>
#include "tapdisk.h"

extern const struct tap_disk tapdisk_aio;
extern const struct tap_disk tapdisk_renew;
extern const struct tap_disk tapdisk_vhd;

static const struct disk_info disk_types[DISK_TYPE_MAX] = {
	[DISK_TYPE_AIO] = { DISK_TYPE_AIO, "aio", &tapdisk_aio },
	[DISK_TYPE_RENEW] = { DISK_TYPE_RENEW, "renew", &tapdisk_renew },
	[DISK_TYPE_VHD] = { DISK_TYPE_VHD, "vhd", &tapdisk_vhd },
};

int tapdisk_disktype_find(const char *name)
{
	for (int i = 0; i < DISK_TYPE_MAX; i++)
		if (!strcmp(disk_types[i].name, name))
			return i;
	return -1;
}

const struct disk_info *tapdisk_disktype_get(int type)
{
	if (type < 0 || type >= DISK_TYPE_MAX)
		return NULL;
	return &disk_types[type];
}

/* "renew:/x/disk.vhd" -> DISK_TYPE_RENEW, "/x/disk.vhd". */
int tapdisk_parse_disk_type(const char *params, const char **path)
{
	const char *colon = params ? strchr(params, ':') : NULL;
	char name[16];
	size_t n;
	int type;

	if (!colon || !colon[1])
		return -EINVAL;
	n = (size_t)(colon - params);
	if (n == 0 || n >= sizeof(name))
		return -EINVAL;
	memcpy(name, params, n);
	name[n] = '\0';
	type = tapdisk_disktype_find(name);
	if (type < 0)
		return -EPROTONOSUPPORT;
	*path = colon + 1;
	return type;
}
