/* Finding daemons (RUNDIR/ctl<pid>) and listing their vbds, in tap-ctl's
 * form: `pid=P minor=M state=S args=TYPE:PATH`, where S is tap-ctl's state
 * bits in hex (0 running, 0x2 closed, 0x10 pausing, 0x20 paused). */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "ctl-tool.h"

/* Remove a dead daemon's control and NBD sockets. */
void remove_daemon_sockets(int pid)
{
	char path[4096], prefix[32];
	struct dirent *de;
	DIR *d;

	if (!ctl_sock_path(path, sizeof(path), pid))
		unlink(path);
	snprintf(prefix, sizeof(prefix), "nbd%d.", pid);
	d = opendir(ctl_rundir());
	if (!d)
		return;
	while ((de = readdir(d)))
		if (!strncmp(de->d_name, prefix, strlen(prefix)) &&
		    (size_t)snprintf(path, sizeof(path), "%s/%s", ctl_rundir(), de->d_name) < sizeof(path))
			unlink(path);
	closedir(d);
}

/* qsort order for pids. */
static int cmp_int(const void *a, const void *b)
{
	int x = *(const int *)a, y = *(const int *)b;
	return (x > y) - (x < y);
}

int scan_daemons(const struct opts *o, int **pids, size_t *n)
{
	struct dirent *de;
	size_t cap = 0;
	DIR *d;

	*pids = NULL;
	*n = 0;
	d = opendir(ctl_rundir());
	if (!d)
		return errno == ENOENT ? 0 : -1;
	while ((de = readdir(d))) {
		int pid = ctl_sock_name_pid(de->d_name);

		if (pid < 0)
			continue;
		if (!pid_alive(pid)) {
			remove_daemon_sockets(pid);
			continue;
		}
		if (*n == cap) {
			int *p = realloc(*pids, (cap = cap ? cap * 2 : 16) * sizeof(**pids));
			if (!p)
				break;
			*pids = p;
		}
		(*pids)[(*n)++] = pid;
	}
	closedir(d);
	if (*n)
		qsort(*pids, *n, sizeof(**pids), cmp_int);
	return 0;
}

/* A copy of a reply field, or NULL when absent. */
static char *dup_field(const struct ctl_msg *rep, const char *name, size_t i)
{
	const char *v = ctl_msg_getf(rep, "%s.%zu", name, i);
	return v ? strdup(v) : NULL;
}

/* Make room for one more entry. */
static struct vbd_entry *list_add(struct vbd_list *l)
{
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 16;
		struct vbd_entry *e = realloc(l->e, cap * sizeof(*e));
		if (!e)
			return NULL;
		l->e = e;
		l->cap = cap;
	}
	memset(&l->e[l->n], 0, sizeof(l->e[0]));
	return &l->e[l->n++];
}

int list_daemon(const struct opts *o, int pid, int minor, struct vbd_list *l, char *err,
		size_t errlen)
{
	struct ctl_msg req, rep;
	long long count = 0;
	int rc;

	req_init(&req, "list", minor);
	rc = call_quiet(pid, &req, &rep, TOOL_SCAN_TIMEOUT_MS, err, errlen);
	ctl_msg_free(&req);
	if (rc)
		return -1;
	ctl_msg_get_int(&rep, "count", 0, 1 << 20, &count);
	if (count == 0 && minor < 0) {
		struct vbd_entry *e = list_add(l);
		if (e) {
			e->pid = pid;
			e->minor = -1;
		}
	}
	for (size_t i = 0; i < (size_t)count; i++) {
		struct vbd_entry *e = list_add(l);
		const char *v;

		if (!e)
			break;
		e->pid = pid;
		e->minor = (v = ctl_msg_getf(&rep, "minor.%zu", i)) ? atoi(v) : -1;
		e->flags = (v = ctl_msg_getf(&rep, "flags.%zu", i)) ? atoi(v) : 0;
		e->ro = (v = ctl_msg_getf(&rep, "ro.%zu", i)) && !strcmp(v, "1");
		e->held = (v = ctl_msg_getf(&rep, "held.%zu", i)) ? atol(v) : 0;
		e->state = dup_field(&rep, "state", i);
		e->params = dup_field(&rep, "params", i);
		e->nbd = dup_field(&rep, "nbd", i);
		e->device = dup_field(&rep, "device", i);
	}
	ctl_msg_free(&rep);
	return 0;
}

void vbd_list_free(struct vbd_list *l)
{
	for (size_t i = 0; i < l->n; i++) {
		free(l->e[i].state);
		free(l->e[i].params);
		free(l->e[i].nbd);
		free(l->e[i].device);
	}
	free(l->e);
	memset(l, 0, sizeof(*l));
}

/* The same file: the same path, or the same inode. */
static int same_file(const char *a, const char *b)
{
	struct stat sa, sb;

	if (!strcmp(a, b))
		return 1;
	return !stat(a, &sa) && !stat(b, &sb) && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

/* Does an entry pass -m, -t and -f? */
static int matches(const struct opts *o, const struct vbd_entry *e)
{
	const char *colon = e->params ? strchr(e->params, ':') : NULL;

	if (o->minor >= 0 && e->minor != o->minor)
		return 0;
	if ((o->type || o->file) && !colon)
		return 0;
	if (o->type && (strlen(o->type) != (size_t)(colon - e->params) ||
			strncmp(o->type, e->params, strlen(o->type))))
		return 0;
	if (o->file && !same_file(o->file, colon + 1))
		return 0;
	return 1;
}

/* One line in tap-ctl's dictionary form; absent fields are left out. */
static void print_line(const struct vbd_entry *e)
{
	printf("pid=%d", e->pid);
	if (e->minor >= 0)
		printf(" minor=%d state=%#x", e->minor, e->flags);
	if (e->params)
		printf(" args=%s", e->params);
	putchar('\n');
}

/* Print a JSON field whose value may be null. */
static void json_field(const char *name, const char *v, int comma)
{
	printf("%s\"%s\": ", comma ? ", " : "", name);
	if (v)
		json_string(stdout, v);
	else
		fputs("null", stdout);
}

/* One entry as a JSON object. */
static void print_json(const struct vbd_entry *e, int first)
{
	const char *colon = e->params ? strchr(e->params, ':') : NULL;
	char type[32] = "";

	if (colon)
		snprintf(type, sizeof(type), "%.*s", (int)(colon - e->params), e->params);
	printf("%s  {\"pid\": %d, ", first ? "" : ",\n", e->pid);
	if (e->minor >= 0)
		printf("\"minor\": %d, \"flags\": %d, ", e->minor, e->flags);
	else
		printf("\"minor\": null, \"flags\": null, ");
	json_field("state", e->state, 0);
	json_field("params", e->params, 1);
	json_field("type", colon ? type : NULL, 1);
	json_field("path", colon ? colon + 1 : NULL, 1);
	printf(", \"read_only\": %s, \"held\": %ld", e->ro ? "true" : "false", e->held);
	json_field("nbd", e->nbd, 1);
	json_field("device", e->device, 1);
	putchar('}');
}

int cmd_list(const struct opts *o)
{
	struct vbd_list l = { 0 };
	char err[CTL_ERRLEN];
	int *pids = NULL, first = 1, rc = 0;
	size_t n = 0;

	if (o->pid > 0) {
		if (list_daemon(o, o->pid, o->minor, &l, err, sizeof(err)))
			die(o, "%s", err);
	} else {
		scan_daemons(o, &pids, &n);
		for (size_t i = 0; i < n; i++)
			if (list_daemon(o, pids[i], -1, &l, err, sizeof(err)) && pid_alive(pids[i]))
				warnx_(o, "daemon %d: %s", pids[i], err);
	}
	if (o->json)
		printf("[\n");
	for (size_t i = 0; i < l.n; i++) {
		int filtered = o->minor >= 0 || o->type || o->file;

		if ((filtered && l.e[i].minor < 0) || !matches(o, &l.e[i]))
			continue;
		if (o->json)
			print_json(&l.e[i], first);
		else
			print_line(&l.e[i]);
		first = 0;
	}
	if (o->json)
		printf("%s]\n", first ? "" : "\n");
	vbd_list_free(&l);
	free(pids);
	return rc;
}
