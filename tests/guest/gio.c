/* Guest-side I/O tool for blockd's vhost-user-blk tests (built static into
 * the initramfs). Commands:
 *   gio flush DEV                     fsync the device (a virtio flush)
 *   gio zero DEV OFF LEN              BLKZEROOUT (virtio write-zeroes)
 *   gio write DEV OFF LEN             write LEN bytes of 0x5a at OFF, O_DIRECT
 *   gio bench DEV MODE BS SECS SPAN   MODE: seqread seqwrite randread randwrite;
 *                                     O_DIRECT, queue depth 1, within the first SPAN MiB
 * Prints one result line; exit status 0 on success. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static int fail(const char *what) {
  printf("GIO-ERR %s errno=%d %s\n", what, errno, strerror(errno));
  return 1;
}

int main(int argc, char **argv) {
  if (argc < 3) return 2;
  const char *cmd = argv[1], *dev = argv[2];
  if (!strcmp(cmd, "flush")) {
    int fd = open(dev, O_WRONLY);
    if (fd < 0) return fail("open");
    if (fsync(fd)) return fail("fsync");
    printf("GIO-OK flush\n");
    return 0;
  }
  if (!strcmp(cmd, "zero") && argc == 5) {
    int fd = open(dev, O_WRONLY);
    if (fd < 0) return fail("open");
    uint64_t r[2] = {strtoull(argv[3], 0, 0), strtoull(argv[4], 0, 0)};
    if (ioctl(fd, BLKZEROOUT, r)) return fail("BLKZEROOUT");
    printf("GIO-OK zero\n");
    return 0;
  }
  if (!strcmp(cmd, "write") && argc == 5) {
    int fd = open(dev, O_WRONLY | O_DIRECT);
    if (fd < 0) return fail("open");
    size_t len = strtoull(argv[4], 0, 0);
    void *buf;
    if (posix_memalign(&buf, 4096, len)) return 1;
    memset(buf, 0x5a, len);
    if (pwrite(fd, buf, len, strtoull(argv[3], 0, 0)) != (ssize_t)len) return fail("pwrite");
    printf("GIO-OK write\n");
    return 0;
  }
  if (!strcmp(cmd, "bench") && argc == 7) {
    const char *mode = argv[3];
    size_t bs = strtoull(argv[4], 0, 0);
    double secs = atof(argv[5]);
    uint64_t span = strtoull(argv[6], 0, 0) << 20;
    int wr = strstr(mode, "write") != 0, rnd = !strncmp(mode, "rand", 4);
    int fd = open(dev, (wr ? O_RDWR : O_RDONLY) | O_DIRECT);
    if (fd < 0) return fail("open");
    void *buf;
    if (posix_memalign(&buf, 4096, bs)) return 1;
    memset(buf, 0xa5, bs);
    uint64_t blocks = span / bs, i = 0, ops = 0, x = 88172645463325252ull;
    double t0 = now(), t;
    do {
      uint64_t b;
      if (rnd) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        b = x % blocks;
      } else {
        b = i++ % blocks;
      }
      ssize_t n = wr ? pwrite(fd, buf, bs, b * bs) : pread(fd, buf, bs, b * bs);
      if (n != (ssize_t)bs) return fail(wr ? "pwrite" : "pread");
      ops++;
      t = now();
    } while (t - t0 < secs);
    if (wr && fsync(fd)) return fail("fsync");
    t = now() - t0;
    printf("BENCH %s bs=%zu ops=%llu secs=%.3f iops=%.1f mbps=%.2f\n", mode, bs,
           (unsigned long long)ops, t, ops / t, ops * (double)bs / t / 1e6);
    return 0;
  }
  return 2;
}
