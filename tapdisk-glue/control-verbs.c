/* The control verbs: each turns a request into calls on the vbd and NBD
 * APIs and fills the reply. Error replies name the minor, the disk and the
 * reason. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "control.h"
#include "control-priv.h"
#include "ctl-proto.h"
#include "list.h"
#include "nbd-server.h"
#include "renew-history.h"
#include "renew-job.h"
#include "scheduler.h"
#include "tapdisk.h"
#include "vbd.h"

#define CTL_MAX_MINOR ((1 << 20) - 1)

/* The kernel device a tool connected to a vbd's export (set-device). */
struct ctl_device {
	int minor;
	char *path;
	struct list_head entry;
};

/* A pause waiting for its vbd to quiesce. */
struct ctl_pause {
	struct ctl_conn *conn;   /* NULL once the control socket closed */
	int minor;
	struct list_head entry;
};

static struct list_head devices = LIST_HEAD_INIT(devices);
static struct list_head pauses = LIST_HEAD_INIT(pauses);
static int ever_attached;

/* --- the device table --- */

/* The device recorded for `minor`, or NULL. */
static struct ctl_device *device_find(int minor)
{
	struct list_head *p;

	list_for_each(p, &devices) {
		struct ctl_device *d = list_entry(p, struct ctl_device, entry);
		if (d->minor == minor)
			return d;
	}
	return NULL;
}

/* Forget the device of a minor that is closed or detached. */
static void device_forget(int minor)
{
	struct ctl_device *d = device_find(minor);

	if (d) {
		list_del(&d->entry);
		free(d->path);
		free(d);
	}
}

/* Record (or with "" forget) the device of a minor. */
static int device_set(int minor, const char *path)
{
	struct ctl_device *d;

	device_forget(minor);
	if (!*path)
		return 0;
	d = calloc(1, sizeof(*d));
	if (!d || !(d->path = strdup(path))) {
		free(d);
		return -ENOMEM;
	}
	d->minor = minor;
	list_add_tail(&d->entry, &devices);
	return 0;
}

void control_verbs_fini(void)
{
	struct list_head *p, *n;

	list_for_each_safe(p, n, &devices)
		device_forget(list_entry(p, struct ctl_device, entry)->minor);
	/* a pause still quiescing keeps its record for the vbd's callback */
	list_for_each(p, &pauses)
		list_entry(p, struct ctl_pause, entry)->conn = NULL;
}

/* --- reading requests --- */

/* tap-ctl's state bits for a vbd state, as `list` prints them. */
static int state_flags(const td_vbd_t *vbd)
{
	switch (vbd->state) {
	case VBD_CLOSED: return CTL_STATE_CLOSED;
	case VBD_PAUSING: return CTL_STATE_PAUSING;
	case VBD_PAUSED: return CTL_STATE_PAUSED;
	default: return CTL_STATE_RUNNING;
	}
}

/* The request's minor; fills an error reply when missing or bad. */
static int get_minor(struct ctl_req *r, int *minor)
{
	long long v;
	int rc = ctl_msg_get_int(r->req, "minor", 0, CTL_MAX_MINOR, &v);

	if (rc == -ENOENT)
		ctl_reply_error(&r->rep, EINVAL, "missing minor");
	else if (rc)
		ctl_reply_error(&r->rep, EINVAL, "bad minor '%s' (expected 0..%d)",
				ctl_msg_get(r->req, "minor"), CTL_MAX_MINOR);
	else
		*minor = (int)v;
	return rc;
}

/* The request's vbd; fills an error reply when it is not attached. */
static td_vbd_t *get_vbd(struct ctl_req *r)
{
	td_vbd_t *vbd;
	int minor;

	if (get_minor(r, &minor))
		return NULL;
	vbd = tapdisk_vbd_find(minor);
	if (!vbd)
		ctl_reply_error(&r->rep, ENODEV, "minor %d is not attached to daemon %d", minor,
				(int)getpid());
	return vbd;
}

/* Check "type:path" before opening, for a precise message. */
static int check_params(struct ctl_req *r, const char *params)
{
	const char *path;
	int type = tapdisk_parse_disk_type(params, &path);

	if (type == -EPROTONOSUPPORT) {
		ctl_reply_error(&r->rep, EPROTONOSUPPORT,
				"unknown disk type in '%s' (known types: aio, renew, vhd)", params);
		return type;
	}
	if (type < 0) {
		ctl_reply_error(&r->rep, EINVAL, "bad disk '%s' (expected TYPE:PATH)", params);
		return type;
	}
	return 0;
}

/* The reason an operation failed: the runtime's words, else strerror. */
static const char *reason(const char *err, int rc)
{
	return err[0] ? err : strerror(rc < 0 ? -rc : rc);
}

/* --- the verbs --- */

/* version: who answers, and which protocol. */
static int verb_version(struct ctl_req *r)
{
	struct list_head *p;
	int n = 0;

	list_for_each(p, tapdisk_vbd_list())
		n++;
	ctl_reply_ok(&r->rep);
	ctl_msg_set_int(&r->rep, "version", CTL_PROTO_VERSION);
	ctl_msg_set(&r->rep, "daemon", "tapdisk-renew");
	ctl_msg_set_int(&r->rep, "pid", getpid());
	ctl_msg_set_int(&r->rep, "vbds", n);
	return 0;
}

/* attach: create an empty vbd for a minor. */
static int verb_attach(struct ctl_req *r)
{
	int minor;

	if (get_minor(r, &minor))
		return 0;
	if (tapdisk_vbd_find(minor)) {
		ctl_reply_error(&r->rep, EEXIST, "minor %d is already attached to daemon %d", minor,
				(int)getpid());
		return 0;
	}
	if (!tapdisk_vbd_create(minor)) {
		ctl_reply_error(&r->rep, ENOMEM, "attach minor %d: %s", minor, strerror(ENOMEM));
		return 0;
	}
	ever_attached = 1;
	ctl_reply_ok(&r->rep);
	return 0;
}

/* detach: free a closed vbd; the daemon exits after its last one. */
static int verb_detach(struct ctl_req *r)
{
	td_vbd_t *vbd = get_vbd(r);
	int minor;

	if (!vbd)
		return 0;
	minor = vbd->minor;
	if (vbd->state != VBD_CLOSED) {
		ctl_reply_error(&r->rep, EBUSY, "minor %d has %s open; close it first", minor,
				vbd->params ? vbd->params : "an image");
		return 0;
	}
	tapdisk_renew_forget(vbd);
	tapdisk_vbd_free(vbd);
	device_forget(minor);
	renew_history_set_default(minor, NULL);
	ctl_reply_ok(&r->rep);
	if (ever_attached && list_empty(tapdisk_vbd_list())) {
		ctl_msg_set(&r->rep, "exiting", "1");
		r->stop_after = 1;
	}
	return 0;
}

/* Export an opened vbd at RUNDIR/nbd<pid>.<minor>; undo the open on failure. */
static int open_export(struct ctl_req *r, td_vbd_t *vbd, const char *params)
{
	char path[256], err[CTL_ERRLEN] = "";
	int rc;

	if (ctl_nbd_path(path, sizeof(path), getpid(), vbd->minor)) {
		tapdisk_vbd_close(vbd);
		ctl_reply_error(&r->rep, ENAMETOOLONG, "minor %d: NBD socket path under %s is too long",
				vbd->minor, ctl_rundir());
		return 0;
	}
	rc = tapdisk_nbd_export(vbd, path, err, sizeof(err));
	if (rc) {
		tapdisk_vbd_close(vbd);
		ctl_reply_error(&r->rep, -rc, "minor %d: export %s at %s: %s", vbd->minor, params,
				path, reason(err, rc));
		return 0;
	}
	ctl_reply_ok(&r->rep);
	ctl_msg_set(&r->rep, "nbd", path);
	return 0;
}

/* open: open "type:path" on an attached vbd and export it over NBD. */
static int verb_open(struct ctl_req *r)
{
	td_vbd_t *vbd = get_vbd(r);
	const char *params = ctl_msg_get(r->req, "params");
	const char *ro = ctl_msg_get(r->req, "ro");
	const char *history = ctl_msg_get(r->req, "history");
	char err[CTL_ERRLEN] = "";
	int rc;

	if (!vbd)
		return 0;
	if (!params) {
		ctl_reply_error(&r->rep, EINVAL, "minor %d: open: missing params (TYPE:PATH)",
				vbd->minor);
		return 0;
	}
	if (vbd->state != VBD_CLOSED) {
		ctl_reply_error(&r->rep, EBUSY, "minor %d already has %s open", vbd->minor,
				vbd->params ? vbd->params : "an image");
		return 0;
	}
	if (check_params(r, params))
		return 0;
	if (history && history[0] != '/') {
		ctl_reply_error(&r->rep, EINVAL, "minor %d: history '%s' is not an absolute path",
				vbd->minor, history);
		return 0;
	}
	if (renew_history_set_default(vbd->minor, history)) {
		ctl_reply_error(&r->rep, ENOMEM, "minor %d: open: %s", vbd->minor, strerror(ENOMEM));
		return 0;
	}
	rc = tapdisk_vbd_open(vbd, params, ro && !strcmp(ro, "1") ? TD_OPEN_RDONLY : 0, err,
			      sizeof(err));
	if (rc) {
		if (err[0])
			ctl_reply_error(&r->rep, -rc, "minor %d: %s", vbd->minor, err);
		else
			ctl_reply_error(&r->rep, -rc, "minor %d: open %s: %s", vbd->minor, params,
					strerror(-rc));
		return 0;
	}
	return open_export(r, vbd, params);
}

/* A renew owns the images until it ends: closing them now would lose the
 * commit's place; the admin waits (stats shows the progress). */
static int refuse_while_renewing(struct ctl_req *r, td_vbd_t *vbd, const char *what)
{
	struct renew_status st;

	if (!tapdisk_renew_running(vbd) || tapdisk_renew_status(vbd, &st))
		return 0;
	ctl_reply_error(&r->rep, EBUSY,
			"minor %d (%s): a renew is running (%s, %.0f%%); %s it once the renew ends (see stats)",
			vbd->minor, vbd->params, st.state_name, st.percent, what);
	return 1;
}

/* close: stop the export, close the images; the vbd stays attached. */
static int verb_close(struct ctl_req *r)
{
	td_vbd_t *vbd = get_vbd(r);

	if (!vbd)
		return 0;
	if (vbd->state == VBD_CLOSED) {
		ctl_reply_error(&r->rep, EINVAL, "minor %d has no image open", vbd->minor);
		return 0;
	}
	if (vbd->state == VBD_PAUSING) {
		ctl_reply_error(&r->rep, EBUSY, "minor %d (%s) is being paused; try again", vbd->minor,
				vbd->params);
		return 0;
	}
	if (refuse_while_renewing(r, vbd, "close"))
		return 0;
	tapdisk_nbd_unexport(vbd);
	tapdisk_vbd_close(vbd);
	device_forget(vbd->minor);
	ctl_reply_ok(&r->rep);
	return 0;
}

/* The vbd of a pause is quiesced: answer the waiting client. */
static void pause_done(td_vbd_t *vbd, void *arg)
{
	struct ctl_pause *p = arg;
	struct ctl_msg rep;

	list_del(&p->entry);
	if (p->conn) {
		ctl_msg_init(&rep);
		ctl_reply_ok(&rep);
		ctl_msg_set(&rep, "state", tapdisk_vbd_state_name(vbd));
		control_reply_async(p->conn, &rep);
		ctl_msg_free(&rep);
	}
	free(p);
}

/* pause: hold new requests; reply once nothing is in flight. */
static int verb_pause(struct ctl_req *r)
{
	td_vbd_t *vbd = get_vbd(r);
	struct ctl_pause *p;

	if (!vbd)
		return 0;
	if (vbd->state == VBD_CLOSED) {
		ctl_reply_error(&r->rep, EINVAL, "minor %d has no image open", vbd->minor);
		return 0;
	}
	if (vbd->state == VBD_PAUSING) {
		ctl_reply_error(&r->rep, EBUSY, "minor %d (%s) is already being paused", vbd->minor,
				vbd->params);
		return 0;
	}
	if (vbd->state == VBD_PAUSED) {
		ctl_reply_ok(&r->rep);
		ctl_msg_set(&r->rep, "state", tapdisk_vbd_state_name(vbd));
		return 0;
	}
	p = calloc(1, sizeof(*p));
	if (!p) {
		ctl_reply_error(&r->rep, ENOMEM, "minor %d: pause: %s", vbd->minor, strerror(ENOMEM));
		return 0;
	}
	p->conn = r->conn;
	p->minor = vbd->minor;
	list_add_tail(&p->entry, &pauses);
	tapdisk_vbd_pause(vbd, pause_done, p);
	return CTL_ASYNC;
}

/* unpause: resume a paused vbd, maybe on another image first. */
static int verb_unpause(struct ctl_req *r)
{
	td_vbd_t *vbd = get_vbd(r);
	const char *params = ctl_msg_get(r->req, "params");
	char err[CTL_ERRLEN] = "";
	int rc;

	if (!vbd)
		return 0;
	if (vbd->state != VBD_PAUSED) {
		ctl_reply_error(&r->rep, vbd->state == VBD_PAUSING ? EBUSY : EINVAL,
				"minor %d (%s) is not paused (state %s)", vbd->minor,
				vbd->params ? vbd->params : "no image", tapdisk_vbd_state_name(vbd));
		return 0;
	}
	if (params && check_params(r, params))
		return 0;
	rc = tapdisk_vbd_unpause(vbd, params, err, sizeof(err));
	if (rc) {
		if (err[0])
			ctl_reply_error(&r->rep, -rc, "minor %d: %s (the disk stays paused)",
					vbd->minor, err);
		else
			ctl_reply_error(&r->rep, -rc, "minor %d: unpause %s: %s (the disk stays paused)",
					vbd->minor, params ? params : vbd->params, strerror(-rc));
		return 0;
	}
	ctl_reply_ok(&r->rep);
	return 0;
}

/* The length of a list (requests held by a pause). */
static long count(struct list_head *h)
{
	struct list_head *p;
	long n = 0;

	list_for_each(p, h)
		n++;
	return n;
}

/* Describe one vbd as the i-th entry of a list reply. */
static void list_one(struct ctl_msg *rep, int i, td_vbd_t *vbd)
{
	struct ctl_device *d = device_find(vbd->minor);
	const char *nbd = vbd->state == VBD_CLOSED ? NULL : tapdisk_nbd_path(vbd);
	char key[48];

	snprintf(key, sizeof(key), "minor.%d", i);
	ctl_msg_set_int(rep, key, vbd->minor);
	snprintf(key, sizeof(key), "state.%d", i);
	ctl_msg_set(rep, key, tapdisk_vbd_state_name(vbd));
	snprintf(key, sizeof(key), "flags.%d", i);
	ctl_msg_set_int(rep, key, state_flags(vbd));
	snprintf(key, sizeof(key), "params.%d", i);
	if (vbd->params && vbd->state != VBD_CLOSED)
		ctl_msg_set(rep, key, vbd->params);
	snprintf(key, sizeof(key), "ro.%d", i);
	if (vbd->state != VBD_CLOSED)
		ctl_msg_set(rep, key, vbd->flags & TD_OPEN_RDONLY ? "1" : "0");
	snprintf(key, sizeof(key), "held.%d", i);
	ctl_msg_set_int(rep, key, count(&vbd->held));
	snprintf(key, sizeof(key), "nbd.%d", i);
	if (nbd)
		ctl_msg_set(rep, key, nbd);
	snprintf(key, sizeof(key), "device.%d", i);
	if (d)
		ctl_msg_set(rep, key, d->path);
}

/* list: every vbd of the daemon (or the one asked for). */
static int verb_list(struct ctl_req *r)
{
	struct list_head *p;
	long long want = -1;
	int n = 0;

	if (ctl_msg_get(r->req, "minor") && get_minor(r, &(int){ 0 }))
		return 0;
	ctl_msg_get_int(r->req, "minor", 0, CTL_MAX_MINOR, &want);
	ctl_reply_ok(&r->rep);
	ctl_msg_set_int(&r->rep, "pid", getpid());
	list_for_each(p, tapdisk_vbd_list()) {
		td_vbd_t *vbd = list_entry(p, td_vbd_t, entry);

		if (want >= 0 && vbd->minor != want)
			continue;
		list_one(&r->rep, n++, vbd);
	}
	ctl_msg_set_int(&r->rep, "count", n);
	return 0;
}

/* The vbd's statistics object with a "renew" member added, when the vbd
 * has had one. Takes `json`. */
static char *with_renew_status(td_vbd_t *vbd, char *json)
{
	char *renew = tapdisk_renew_status_json(vbd), *out = NULL;
	size_t n = json ? strlen(json) : 0;

	if (!json || !renew || n < 2 || json[n - 1] != '}') {
		free(renew);
		return json;
	}
	json[n - 1] = '\0';
	if (asprintf(&out, "%s%s\"renew\":%s}", json, n > 2 ? "," : "", renew) < 0)
		out = NULL;
	free(json);
	free(renew);
	return out;
}

/* stats: the vbd's counters and the driver's as a JSON object. */
static int verb_stats(struct ctl_req *r)
{
	td_vbd_t *vbd = get_vbd(r);
	char *json;

	if (!vbd)
		return 0;
	json = with_renew_status(vbd, tapdisk_vbd_stats_json(vbd));
	if (!json) {
		ctl_reply_error(&r->rep, ENOMEM, "minor %d: stats: %s", vbd->minor, strerror(ENOMEM));
		return 0;
	}
	ctl_reply_ok(&r->rep);
	ctl_msg_set(&r->rep, "json", json);
	free(json);
	return 0;
}

/* set-device: remember the kernel device connected to the export. */
static int verb_set_device(struct ctl_req *r)
{
	td_vbd_t *vbd = get_vbd(r);
	const char *dev = ctl_msg_get(r->req, "device");

	if (!vbd)
		return 0;
	if (!dev) {
		ctl_reply_error(&r->rep, EINVAL, "minor %d: set-device: missing device", vbd->minor);
		return 0;
	}
	if (*dev && vbd->state == VBD_CLOSED) {
		ctl_reply_error(&r->rep, EINVAL, "minor %d has no image open", vbd->minor);
		return 0;
	}
	if (device_set(vbd->minor, dev)) {
		ctl_reply_error(&r->rep, ENOMEM, "minor %d: set-device: %s", vbd->minor,
				strerror(ENOMEM));
		return 0;
	}
	ctl_reply_ok(&r->rep);
	return 0;
}

/* renew: start committing the overlay into its parent; replies at once. */
static int verb_renew(struct ctl_req *r)
{
	td_vbd_t *vbd = get_vbd(r);
	const char *rate = ctl_msg_get(r->req, "rate");
	const char *force = ctl_msg_get(r->req, "force");
	const char *commit = ctl_msg_get(r->req, "commit_only");
	const char *history = ctl_msg_get(r->req, "history");
	struct renew_opts opts = { 0 };
	char err[CTL_ERRLEN] = "";
	int rc;

	if (!vbd)
		return 0;
	opts.rate_bps = rate ? strtoull(rate, NULL, 10) : 0;
	opts.force = force && !strcmp(force, "1");
	opts.commit_only = commit && !strcmp(commit, "1");
	opts.history_dir = history ? history : renew_history_default(vbd->minor);
	if (opts.history_dir && opts.history_dir[0] != '/') {
		ctl_reply_error(&r->rep, EINVAL, "minor %d: history '%s' is not an absolute path",
				vbd->minor, opts.history_dir);
		return 0;
	}
	rc = tapdisk_renew_start(vbd, &opts, NULL, NULL, err, sizeof(err));
	if (rc) {
		ctl_reply_error(&r->rep, -rc, "%s", err);
		return 0;
	}
	ctl_reply_ok(&r->rep);
	return 0;
}

/* job-status: the progress of the minor's renew (running or last). */
static int verb_job_status(struct ctl_req *r)
{
	td_vbd_t *vbd = get_vbd(r);
	struct renew_status st;

	if (!vbd)
		return 0;
	if (tapdisk_renew_status(vbd, &st)) {
		ctl_reply_error(&r->rep, ENOENT, "minor %d (%s) has had no renew", vbd->minor,
				vbd->params ? vbd->params : "closed");
		return 0;
	}
	ctl_reply_ok(&r->rep);
	ctl_msg_set(&r->rep, "job.kind", st.commit_only ? "commit" : "renew");
	ctl_msg_set(&r->rep, "job.state", st.state_name);
	ctl_msg_setf(&r->rep, "job.done", "%llu", (unsigned long long)st.bytes_done);
	ctl_msg_setf(&r->rep, "job.total", "%llu", (unsigned long long)st.bytes_total);
	ctl_msg_setf(&r->rep, "job.copied", "%llu", (unsigned long long)st.bytes_copied);
	ctl_msg_setf(&r->rep, "job.percent", "%.1f", st.percent);
	ctl_msg_setf(&r->rep, "job.mb_per_s", "%.1f", st.mb_per_s);
	ctl_msg_setf(&r->rep, "job.eta_s", "%.0f", st.eta_s);
	ctl_msg_setf(&r->rep, "job.elapsed_s", "%.3f", st.elapsed_s);
	ctl_msg_setf(&r->rep, "job.pause_max_ms", "%.3f", st.pause_max_ms);
	if (st.history_dir && !st.commit_only) {
		ctl_msg_set(&r->rep, "job.history", st.history_dir);
		ctl_msg_setf(&r->rep, "job.generation", "%ld", st.generation);
	}
	if (!st.err && *st.why)
		ctl_msg_set(&r->rep, "job.msg", st.why);  /* done, with a history warning */
	if (st.err) {
		ctl_msg_set_int(&r->rep, "job.errno", -st.err);
		ctl_msg_set(&r->rep, "job.msg", st.why);
	}
	return 0;
}

/* shutdown: exit once the reply is out; refused while a disk is open. */
static int verb_shutdown(struct ctl_req *r)
{
	const char *force = ctl_msg_get(r->req, "force");
	struct list_head *p;

	list_for_each(p, tapdisk_vbd_list()) {
		td_vbd_t *vbd = list_entry(p, td_vbd_t, entry);

		if (vbd->state != VBD_CLOSED && !(force && !strcmp(force, "1"))) {
			ctl_reply_error(&r->rep, EBUSY, "daemon %d: minor %d has %s open",
					(int)getpid(), vbd->minor, vbd->params);
			return 0;
		}
	}
	ctl_reply_ok(&r->rep);
	r->stop_after = 1;
	return 0;
}

static const struct {
	const char *name;
	int (*fn)(struct ctl_req *r);
} verbs[] = {
	{ "version", verb_version },
	{ "attach", verb_attach },
	{ "detach", verb_detach },
	{ "open", verb_open },
	{ "close", verb_close },
	{ "pause", verb_pause },
	{ "unpause", verb_unpause },
	{ "list", verb_list },
	{ "stats", verb_stats },
	{ "set-device", verb_set_device },
	{ "job-status", verb_job_status },
	{ "renew", verb_renew },
	{ "shutdown", verb_shutdown },
};

int control_dispatch(struct ctl_req *r)
{
	const char *verb = ctl_msg_get(r->req, "verb");

	if (!verb) {
		ctl_reply_error(&r->rep, EINVAL, "request without a verb");
		return 0;
	}
	for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++)
		if (!strcmp(verbs[i].name, verb))
			return verbs[i].fn(r);
	ctl_reply_error(&r->rep, ENOSYS, "unknown verb '%s' (daemon %d speaks control protocol %d)",
			verb, (int)getpid(), CTL_PROTO_VERSION);
	return 0;
}
