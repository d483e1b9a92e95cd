/* tap-ctl-renew: blktap's tap-ctl verbs for tapdisk-renew daemons, over the
 * control protocol in lib/ctl/ctl-proto.h. Exit status: 0 done, 1 failed
 * (with "tap-ctl-renew: VERB: why" on stderr), 2 usage error. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "ctl-tool.h"

static const char usage_text[] =
	"usage: " PROG " VERB [options]\n"
	"  spawn                                  start a daemon, print its pid\n"
	"  attach  -p PID -m MINOR                add a vbd to a daemon\n"
	"  detach  -p PID -m MINOR                remove it (the daemon exits after its last)\n"
	"  open    -p PID -m MINOR -a TYPE:PATH [-R]   open an image, print its NBD socket\n"
	"  close   -p PID -m MINOR\n"
	"  pause   -p PID -m MINOR                hold I/O; returns once in-flight I/O is done\n"
	"  unpause -p PID -m MINOR [-a TYPE:PATH] resume, maybe on another image\n"
	"  create  -a TYPE:PATH [-R] [--socket-only | --connections N] [--history DIR]\n"
	"                                         spawn+attach+open; print /dev/nbdN (or the\n"
	"                                         NBD socket with --socket-only); /dev/nbdN uses\n"
	"                                         N connections (default 1);\n"
	"                                         renews of the disk keep their old overlays in DIR\n"
	"  destroy -p PID -m MINOR | -d /dev/nbdN disconnect, close, detach\n"
	"  list    [-p PID] [-m MINOR] [-t TYPE] [-f FILE] [--json]\n"
	"                                         pid=P minor=M state=S args=TYPE:PATH; S is\n"
	"                                         tap-ctl's state bits: 0 running, 0x2 closed,\n"
	"                                         0x10 pausing, 0x20 paused\n"
	"  stats   -p PID -m MINOR                statistics as JSON (with the renew's progress)\n"
	"  renew   -p PID -m MINOR [--wait] [--rate MB/s] [--force] [--commit-only] [--history DIR]\n"
	"                                         commit the overlay into its parent and put a\n"
	"                                         fresh one in its place, live; --wait follows it;\n"
	"                                         --history keeps the old overlay in DIR\n"
	"  check                                  is this host ready? prints ok\n"
	"  version [-p PID]                       protocol version (of a daemon with -p)\n"
	"TYPE: aio (raw file), renew (VHD overlay), vhd (read-only VHD).\n"
	"Sockets live in $RENEW_RUNDIR, else /run/blktap-control.\n";

/* Print a usage error naming the problem, then the usage; exit 2. */
static void __attribute__((noreturn, format(printf, 2, 3)))
usage_error(const char *verb, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, PROG ": %s%s", verb ? verb : "", verb ? ": " : "");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n%s", usage_text);
	exit(EXIT_USAGE);
}

/* --- the verbs that map one to one onto a daemon request --- */

static int cmd_spawn(const struct opts *o)
{
	int pid = spawn_daemon(o);

	if (pid < 0)
		return 1;
	printf("%d\n", pid);
	return 0;
}

/* attach, detach, close, pause: a request that returns nothing to print. */
static int cmd_simple(const struct opts *o)
{
	struct ctl_msg req, rep;
	int rc;

	req_init(&req, o->verb, o->minor);
	rc = call(o, o->pid, &req, &rep, !strcmp(o->verb, "pause") ? TOOL_PAUSE_TIMEOUT_MS
								    : TOOL_TIMEOUT_MS);
	ctl_msg_free(&req);
	if (rc)
		return 1;
	if (!strcmp(o->verb, "detach") && ctl_msg_get(&rep, "exiting") &&
	    !wait_pid_gone(o->pid, 15000))
		remove_daemon_sockets(o->pid);
	ctl_msg_free(&rep);
	return 0;
}

/* open and unpause: a request carrying -a (and -R). */
static int cmd_open(const struct opts *o)
{
	struct ctl_msg req, rep;
	const char *nbd;
	int rc;

	req_init(&req, o->verb, o->minor);
	if (o->params)
		ctl_msg_set(&req, "params", o->params);
	if (o->ro)
		ctl_msg_set(&req, "ro", "1");
	rc = call(o, o->pid, &req, &rep, TOOL_TIMEOUT_MS);
	ctl_msg_free(&req);
	if (rc)
		return 1;
	if ((nbd = ctl_msg_get(&rep, "nbd")))
		printf("%s\n", nbd);
	ctl_msg_free(&rep);
	return 0;
}

static int cmd_stats(const struct opts *o)
{
	struct ctl_msg req, rep;
	const char *json;
	int rc;

	req_init(&req, "stats", o->minor);
	rc = call(o, o->pid, &req, &rep, TOOL_TIMEOUT_MS);
	ctl_msg_free(&req);
	if (rc)
		return 1;
	json = ctl_msg_get(&rep, "json");
	json_pretty(stdout, json ? json : "{}");
	ctl_msg_free(&rep);
	return 0;
}

static int cmd_version(const struct opts *o)
{
	struct ctl_msg req, rep;
	const char *v;

	if (o->pid < 0) {
		printf("tap-ctl-renew protocol=%d\n", CTL_PROTO_VERSION);
		return 0;
	}
	req_init(&req, "version", -1);
	if (call(o, o->pid, &req, &rep, TOOL_TIMEOUT_MS)) {
		ctl_msg_free(&req);
		return 1;
	}
	ctl_msg_free(&req);
	v = ctl_msg_get(&rep, "version");
	printf("pid=%d protocol=%s vbds=%s\n", o->pid, v ? v : "?",
	       ctl_msg_get(&rep, "vbds") ? ctl_msg_get(&rep, "vbds") : "?");
	ctl_msg_free(&rep);
	return 0;
}

/* --- the verb table: which flags each verb takes and needs --- */

struct verb {
	const char *name;
	const char *allowed;     /* flag letters; S = --socket-only, J = --json */
	const char *required;
	int (*fn)(const struct opts *o);
};

static const struct verb verbs[] = {
	{ "spawn", "", "", cmd_spawn },
	{ "attach", "pm", "pm", cmd_simple },
	{ "detach", "pm", "pm", cmd_simple },
	{ "open", "pmaR", "pma", cmd_open },
	{ "close", "pm", "pm", cmd_simple },
	{ "pause", "pm", "pm", cmd_simple },
	{ "unpause", "pma", "pm", cmd_open },
	{ "create", "aRSNH", "a", cmd_create },
	{ "destroy", "pmd", "", cmd_destroy },
	{ "list", "pmtfJ", "", cmd_list },
	{ "stats", "pm", "pm", cmd_stats },
	{ "renew", "pmWrFCH", "pm", cmd_renew },
	{ "check", "", "", cmd_check },
	{ "version", "p", "", cmd_version },
};

/* The text a flag letter stands for, for messages. */
static const char *flag_name(int c)
{
	static char s[3];

	if (c == 'S')
		return "--socket-only";
	if (c == 'J')
		return "--json";
	if (c == 'W')
		return "--wait";
	if (c == 'r')
		return "--rate";
	if (c == 'F')
		return "--force";
	if (c == 'C')
		return "--commit-only";
	if (c == 'H')
		return "--history";
	if (c == 'N')
		return "--connections";
	snprintf(s, sizeof(s), "-%c", c);
	return s;
}

/* A decimal number in [min, max] for -p, -m or --connections, else a usage error. */
static int parse_num(const char *verb, int flag, const char *s, long min, long max)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max)
		usage_error(verb, "bad %s '%s' (expected a number %ld..%ld)", flag_name(flag), s, min,
			    max);
	return (int)v;
}

/* --rate in MB/s (MiB/s, may be fractional) as bytes per second. */
static unsigned long long parse_rate(const char *verb, const char *s)
{
	char *end;
	double mb = strtod(s, &end);

	if (end == s || *end || !(mb > 0) || mb > 1e9)
		usage_error(verb, "bad --rate '%s' (expected MB/s > 0)", s);
	return (unsigned long long)(mb * 1048576.0);
}

/* Check "type:path" has both halves (the daemon checks the type) and make
 * a relative path absolute: the daemon's working directory is not ours. */
static const char *check_params(const char *verb, const char *params)
{
	static char abs[PATH_MAX + 64];
	const char *colon = strchr(params, ':');
	char cwd[PATH_MAX];

	if (!colon || colon == params || !colon[1])
		usage_error(verb, "bad -a '%s' (expected TYPE:PATH, e.g. renew:/srv/vm1.vhd)", params);
	if (colon[1] == '/')
		return params;
	if (!getcwd(cwd, sizeof(cwd)) ||
	    (size_t)snprintf(abs, sizeof(abs), "%.*s:%s/%s", (int)(colon - params), params, cwd,
			     colon + 1) >= sizeof(abs)) {
		fprintf(stderr, PROG ": %s: cannot make '%s' absolute\n", verb, colon + 1);
		exit(1);
	}
	return abs;
}

/* --history DIR made absolute: the daemon's working directory is not ours. */
static const char *check_history(const char *verb, const char *dir)
{
	static char abs[PATH_MAX + 8];
	char cwd[PATH_MAX];

	if (!*dir)
		usage_error(verb, "empty --history");
	if (dir[0] == '/')
		return dir;
	if (!getcwd(cwd, sizeof(cwd)) || (size_t)snprintf(abs, sizeof(abs), "%s/%s", cwd, dir) >= sizeof(abs)) {
		fprintf(stderr, PROG ": %s: cannot make '%s' absolute\n", verb, dir);
		exit(1);
	}
	return abs;
}

/* Parse the flags after the verb into `o`, recording which were given. */
static void parse_flags(const struct verb *v, int argc, char **argv, struct opts *o, char *seen)
{
	static const struct option longopts[] = {
		{ "socket-only", no_argument, NULL, 'S' },
		{ "json", no_argument, NULL, 'J' },
		{ "wait", no_argument, NULL, 'W' },
		{ "rate", required_argument, NULL, 'r' },
		{ "force", no_argument, NULL, 'F' },
		{ "commit-only", no_argument, NULL, 'C' },
		{ "history", required_argument, NULL, 'H' },
		{ "connections", required_argument, NULL, 'N' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	opterr = 0;
	optind = 2;
	while ((c = getopt_long(argc, argv, ":p:m:a:Rf:t:d:h", longopts, NULL)) != -1) {
		if (c == 'h') {
			fputs(usage_text, stdout);
			exit(0);
		}
		if (c == '?')
			usage_error(v->name, "unknown option '%s'", argv[optind - 1]);
		if (c == ':')
			usage_error(v->name, "option '%s' needs a value", argv[optind - 1]);
		if (!strchr(v->allowed, c))
			usage_error(v->name, "option %s is not valid for %s", flag_name(c), v->name);
		seen[(unsigned char)c] = 1;
		switch (c) {
		case 'p': o->pid = parse_num(v->name, c, optarg, 1, 0x7fffffff); break;
		case 'm': o->minor = parse_num(v->name, c, optarg, 0, (1 << 20) - 1); break;
		case 'a': o->params = check_params(v->name, optarg); break;
		case 'R': o->ro = 1; break;
		case 'f': o->file = optarg; break;
		case 't': o->type = optarg; break;
		case 'd': o->device = optarg; break;
		case 'S': o->socket_only = 1; break;
		case 'J': o->json = 1; break;
		case 'W': o->wait = 1; break;
		case 'r': o->rate_bps = parse_rate(v->name, optarg); break;
		case 'F': o->force = 1; break;
		case 'C': o->commit_only = 1; break;
		case 'H': o->history = check_history(v->name, optarg); break;
		case 'N': o->connections = parse_num(v->name, c, optarg, 1, NBD_MAX_CONNECTIONS); break;
		}
	}
	if (optind < argc)
		usage_error(v->name, "unexpected argument '%s'", argv[optind]);
}

int main(int argc, char **argv)
{
	struct opts o = { .pid = -1, .minor = -1 };
	char seen[256] = { 0 };
	const struct verb *v = NULL;

	if (argc < 2)
		usage_error(NULL, "missing verb");
	if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
		fputs(usage_text, stdout);
		return 0;
	}
	for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++)
		if (!strcmp(verbs[i].name, argv[1]))
			v = &verbs[i];
	if (!v)
		usage_error(NULL, "unknown verb '%s'", argv[1]);
	o.verb = v->name;
	parse_flags(v, argc, argv, &o, seen);
	for (const char *r = v->required; *r; r++)
		if (!seen[(unsigned char)*r])
			usage_error(v->name, "missing %s", flag_name(*r));
	if (o.socket_only && o.connections)
		usage_error(v->name, "--connections is for /dev/nbdN, not with --socket-only");
	if (!strcmp(v->name, "destroy") && !o.device && (o.pid < 0 || o.minor < 0))
		usage_error(v->name, "missing %s (or -d DEVICE)", o.pid < 0 ? "-p" : "-m");
	return v->fn(&o);
}
