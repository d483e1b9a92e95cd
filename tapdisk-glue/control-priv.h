/* Between the control server's connection handling (control.c) and its
 * verbs (control-verbs.c). */
#ifndef RENEW_CONTROL_PRIV_H
#define RENEW_CONTROL_PRIV_H

#include "ctl-proto.h"

struct ctl_conn;

/* One request being served. */
struct ctl_req {
	struct ctl_conn *conn;
	const struct ctl_msg *req;
	struct ctl_msg rep;
	int stop_after;          /* stop the daemon once the reply is sent */
};

/* control_dispatch's answer when the verb replies later. */
#define CTL_ASYNC 1

/* Serve one request: 0 with r->rep filled, or CTL_ASYNC when the verb
 * will call control_reply_async() (maybe before this returns). */
int control_dispatch(struct ctl_req *r);
/* Send the reply owed by an asynchronous verb; takes over `rep`. */
void control_reply_async(struct ctl_conn *c, struct ctl_msg *rep);
/* Forget the verbs' state (the control socket is closing). */
void control_verbs_fini(void);

#endif
