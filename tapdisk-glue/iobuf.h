/* I/O buffers for requests: aligned for O_DIRECT; big ones on huge pages. */
#ifndef RENEW_IOBUF_H
#define RENEW_IOBUF_H

#include <stddef.h>

/* A buffer of at least `len` bytes; *cap gets its real size, which
 * iobuf_free needs back. NULL when out of memory. */
void *iobuf_alloc(size_t len, size_t *cap);
void iobuf_free(void *buf, size_t cap);

#endif
