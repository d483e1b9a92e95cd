/* The NBD export of a vbd: fixed newstyle handshake on a unix socket, many
 * connections at once, deep queues per connection (see DESIGN.md §6). */
#ifndef RENEW_NBD_SERVER_H
#define RENEW_NBD_SERVER_H

#include "vbd.h"

/* Listen on `path` (removed first if a stale socket) and serve `vbd`. */
int tapdisk_nbd_export(td_vbd_t *vbd, const char *path, char *err, size_t errlen);
/* Stop listening, drop every connection, unlink the socket. */
void tapdisk_nbd_unexport(td_vbd_t *vbd);
/* The socket path of the vbd's export, or NULL. */
const char *tapdisk_nbd_path(td_vbd_t *vbd);
/* At exit, after every unexport and vbd close: free what is left. */
void tapdisk_nbd_fini(void);
/* The conventional socket path RUNDIR/nbd<pid>.<minor> (RUNDIR from
 * $RENEW_RUNDIR, else /run/blktap-control). 0 or -ENAMETOOLONG. */
int tapdisk_nbd_socket_path(int minor, char *buf, size_t len);

#endif
