/* The daemon's control socket RUNDIR/ctl<pid> (mode 0600): tap-ctl's verbs
 * (attach, detach, open, close, pause, unpause, list, stats) over the
 * protocol in lib/ctl/ctl-proto.h. */
#ifndef RENEW_CONTROL_H
#define RENEW_CONTROL_H

#include <stddef.h>

/* Create and listen on the control socket; 0 or a negative errno. */
int tapdisk_control_open(char *err, size_t errlen);
void tapdisk_control_close(void);
/* The control socket's path (valid after open). */
const char *tapdisk_control_path(void);

#endif
