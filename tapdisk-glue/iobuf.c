/* I/O buffers for requests.
 *
 * Every buffer is 4 KiB-aligned, for O_DIRECT. One of 1 to 2 MiB is one
 * huge page: mapped on its own, 2 MiB-aligned, and asked to sit on
 * transparent huge pages. A 1 MiB read is pinned for the direct read and
 * then copied into the client's socket; on 4 KiB pages both walk 256
 * pages, and that walk was most of the daemon's time on 1 MiB reads.
 * Rounding up costs at most twice the memory, which the NBD server counts
 * against its per-connection limits. Bigger buffers stay on small pages:
 * the server does not pool them, and the first touch of a huge page may
 * compact memory, a cost to pay once per pooled buffer, not per request.
 */
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "iobuf.h"

#define HUGE_MIN   (1u << 20)
#define HUGE_SIZE  (2u << 20)
#define SMALL_ALIGN 4096

/* One 2 MiB-aligned huge page: map twice its size, trim both ends. */
static void *huge_map(void)
{
	uint8_t *p = mmap(NULL, 2 * HUGE_SIZE, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uintptr_t start;
	size_t head;

	if (p == MAP_FAILED)
		return NULL;
	start = ((uintptr_t)p + HUGE_SIZE - 1) & ~(uintptr_t)(HUGE_SIZE - 1);
	head = start - (uintptr_t)p;
	if (head)
		munmap(p, head);
	munmap((uint8_t *)start + HUGE_SIZE, HUGE_SIZE - head);
	/* only a hint: without huge pages the buffer works as well */
	(void)madvise((void *)start, HUGE_SIZE, MADV_HUGEPAGE);
	return (void *)start;
}

void *iobuf_alloc(size_t len, size_t *cap)
{
	void *p;

	if (len >= HUGE_MIN && len <= HUGE_SIZE) {
		*cap = HUGE_SIZE;
		return huge_map();
	}
	*cap = (len + SMALL_ALIGN - 1) & ~(size_t)(SMALL_ALIGN - 1);
	if (!*cap)
		*cap = SMALL_ALIGN;
	return posix_memalign(&p, SMALL_ALIGN, *cap) ? NULL : p;
}

void iobuf_free(void *buf, size_t cap)
{
	if (!buf)
		return;
	if (cap == HUGE_SIZE) /* only huge_map gives exactly this size */
		munmap(buf, cap);
	else
		free(buf);
}
