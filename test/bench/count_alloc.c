// Heap allocations of a process, counted: an LD_PRELOAD library for test/bench/counts.py (issue
// 18). malloc, calloc, realloc, aligned allocations and operator new (which calls malloc in
// libstdc++) are counted as they pass to glibc's own; every 100 ms a thread writes the total to
// the file named by COUNT_ALLOC_FILE ("allocations N\n"), so a benchmark reads them before and
// after a load without stopping the process. Not part of pilotfish, and not a test.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

extern void* __libc_malloc(size_t size);
extern void* __libc_calloc(size_t n, size_t size);
extern void* __libc_realloc(void* p, size_t size);
extern void* __libc_memalign(size_t alignment, size_t size);

static atomic_ulong allocations;

void* malloc(size_t size) {
  atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
  return __libc_malloc(size);
}

void* calloc(size_t n, size_t size) {
  atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
  return __libc_calloc(n, size);
}

void* realloc(void* p, size_t size) {
  atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
  return __libc_realloc(p, size);
}

void* memalign(size_t alignment, size_t size) {
  atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
  return __libc_memalign(alignment, size);
}

void* aligned_alloc(size_t alignment, size_t size) { return memalign(alignment, size); }

int posix_memalign(void** out, size_t alignment, size_t size) {
  if (alignment < sizeof(void*) || (alignment & (alignment - 1)) != 0) return EINVAL;
  void* p = memalign(alignment, size);
  if (!p) return ENOMEM;
  *out = p;
  return 0;
}

extern void* __libc_valloc(size_t size);
extern void* __libc_pvalloc(size_t size);

void* valloc(size_t size) {
  atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
  return __libc_valloc(size);
}

void* pvalloc(size_t size) {
  atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
  return __libc_pvalloc(size);
}

static void* reporter(void* arg) {
  const char* path = arg;
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  for (;;) {
    // No stdio: a FILE allocates, and the count would count itself.
    char line[64];
    int n = snprintf(line, sizeof line, "allocations %lu\n", atomic_load_explicit(&allocations, memory_order_relaxed));
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0) {
      ssize_t w = write(fd, line, (size_t)n);
      close(fd);
      if (w == n) rename(tmp, path);
    }
    struct timespec ts = {0, 100 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  return NULL;
}

__attribute__((constructor)) static void start_reporter(void) {
  const char* path = getenv("COUNT_ALLOC_FILE");
  if (!path || !*path) return;
  static char copy[4000];
  strncpy(copy, path, sizeof copy - 1);
  unsetenv("COUNT_ALLOC_FILE");  // not inherited by what the process starts
  pthread_t t;
  if (pthread_create(&t, NULL, reporter, copy) == 0) pthread_detach(t);
}
