/* SHA-256 of the files a history keeps, through libcrypto, which uses the
 * CPU's SHA instructions where it has them: a restore checks every file it
 * reads, so the digest's speed is the restore's. The digest is the one
 * `sha256sum` prints, so an admin can check by hand. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <openssl/evp.h>
#include "history.h"

#define READ_CHUNK (1u << 20)

/* The digest's 32 bytes as lowercase hex. */
static void to_hex(const unsigned char md[32], char hex[65])
{
	for (int i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", md[i]);
}

int hist_sha256_file(const char *path, char hex[65], uint64_t *done, char *err, size_t errlen)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	char *buf = malloc(READ_CHUNK);
	int fd = open(path, O_RDONLY | O_CLOEXEC), rc = 0;
	ssize_t n;

	if (fd < 0 || !buf || !ctx) {
		rc = fd < 0 ? -errno : -ENOMEM;
		hist_err(err, errlen, 0, "sha256 of %s: %s", path, strerror(-rc));
		goto out;
	}
	if (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
		rc = -EIO;
		hist_err(err, errlen, 0, "sha256 of %s: libcrypto has no SHA-256", path);
		goto out;
	}
	posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
	while ((n = read(fd, buf, READ_CHUNK)) != 0) {
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			rc = -errno;
			hist_err(err, errlen, 0, "sha256 of %s: read: %s", path, strerror(errno));
			goto out;
		}
		if (EVP_DigestUpdate(ctx, buf, (size_t)n) != 1) {
			rc = -EIO;
			hist_err(err, errlen, 0, "sha256 of %s: libcrypto failed to digest it", path);
			goto out;
		}
		if (done)
			__atomic_add_fetch(done, (uint64_t)n, __ATOMIC_RELAXED);
	}
	if (EVP_DigestFinal_ex(ctx, md, &mdlen) != 1 || mdlen != 32) {
		rc = -EIO;
		hist_err(err, errlen, 0, "sha256 of %s: libcrypto failed to finish the digest", path);
		goto out;
	}
	to_hex(md, hex);
out:
	if (fd >= 0)
		close(fd);
	free(buf);
	EVP_MD_CTX_free(ctx);
	return rc;
}
