/*
 * copy-ranges: copies byte ranges from one open file to another inside the
 * kernel (copy_file_range), so the bytes never pass through a user-space
 * buffer: the coalesce's data copy costs what `cp` costs.
 *
 *   copy-ranges SRC_FD DST_FD
 *
 * SRC_FD and DST_FD are descriptors the caller passes open (the images it has
 * validated, whatever their names are now). Each stdin line is one range,
 * "SRC_OFFSET DST_OFFSET LENGTH" in decimal bytes. Every range is copied whole
 * or the program fails: a short copy is continued, EINTR retried, and a source
 * that ends early is an error, never a partial range. Where the kernel cannot
 * copy between these files (EXDEV, ENOSYS, EOPNOTSUPP) the rest is copied with
 * pread/pwrite. Nothing is made durable here: the caller's barrier does that.
 *
 * On success it prints "copied BYTES in-kernel|buffered" and exits 0; on any
 * error it prints one line to stderr and exits 1 (2: bad usage or input).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int buffered; /* set once the kernel has refused an in-kernel copy */

static int parse_fd(const char *s) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || *end || end == s || v < 0 || v > 65535) return -1;
  return (int)v;
}

/* The kernel cannot copy between these two files: buffered copies from now on. */
static int unsupported(int err) {
  return err == EXDEV || err == ENOSYS || err == EOPNOTSUPP;
}

static int copy_buffered(int in, int out, off_t src, off_t dst, uint64_t len) {
  static char buf[1 << 20];
  while (len > 0) {
    size_t want = len < sizeof buf ? (size_t)len : sizeof buf;
    ssize_t got = pread(in, buf, want, src);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) return fprintf(stderr, "copy-ranges: read at %jd: %s\n", (intmax_t)src, strerror(errno)), -1;
    if (got == 0) return fprintf(stderr, "copy-ranges: source ends at %jd, %" PRIu64 " bytes short\n", (intmax_t)src, len), -1;
    for (ssize_t done = 0; done < got;) {
      ssize_t put = pwrite(out, buf + done, (size_t)(got - done), dst + done);
      if (put < 0 && errno == EINTR) continue;
      if (put < 0) return fprintf(stderr, "copy-ranges: write at %jd: %s\n", (intmax_t)(dst + done), strerror(errno)), -1;
      done += put;
    }
    src += got;
    dst += got;
    len -= (uint64_t)got;
  }
  return 0;
}

static int copy_range(int in, int out, off_t src, off_t dst, uint64_t len) {
  while (len > 0 && !buffered) {
    size_t want = len > (1u << 30) ? (1u << 30) : (size_t)len;
    ssize_t n = copy_file_range(in, &src, out, &dst, want, 0); /* advances src and dst */
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && unsupported(errno)) {
      fprintf(stderr, "copy-ranges: copy_file_range: %s: copying through a buffer\n", strerror(errno));
      buffered = 1;
      break;
    }
    if (n < 0) return fprintf(stderr, "copy-ranges: copy_file_range at %jd: %s\n", (intmax_t)src, strerror(errno)), -1;
    if (n == 0) return fprintf(stderr, "copy-ranges: source ends at %jd, %" PRIu64 " bytes short\n", (intmax_t)src, len), -1;
    len -= (uint64_t)n;
  }
  return len > 0 ? copy_buffered(in, out, src, dst, len) : 0;
}

int main(int argc, char **argv) {
  int in = argc == 3 ? parse_fd(argv[1]) : -1;
  int out = argc == 3 ? parse_fd(argv[2]) : -1;
  if (in < 0 || out < 0) {
    fprintf(stderr, "usage: copy-ranges SRC_FD DST_FD (ranges \"SRC_OFFSET DST_OFFSET LENGTH\" on stdin)\n");
    return 2;
  }
  uint64_t total = 0;
  char line[128];
  for (unsigned long n = 1; fgets(line, sizeof line, stdin); n++) {
    int64_t src, dst;
    uint64_t len;
    char extra;
    if (sscanf(line, "%" SCNd64 " %" SCNd64 " %" SCNu64 " %c", &src, &dst, &len, &extra) != 3 || src < 0 || dst < 0) {
      fprintf(stderr, "copy-ranges: line %lu: expected \"SRC_OFFSET DST_OFFSET LENGTH\"\n", n);
      return 2;
    }
    if (copy_range(in, out, (off_t)src, (off_t)dst, len) != 0) return 1;
    total += len;
  }
  if (ferror(stdin)) return fprintf(stderr, "copy-ranges: reading ranges: %s\n", strerror(errno)), 1;
  printf("copied %" PRIu64 " %s\n", total, buffered ? "buffered" : "in-kernel");
  return 0;
}
