#include "http/http2_memory.h"

#include <bit>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define PILOTFISH_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PILOTFISH_ASAN 1
#endif
#endif

#ifdef PILOTFISH_ASAN
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

namespace pilotfish {
namespace {

// Every block starts with this header; what nghttp2 gets begins 16 bytes in, so it keeps
// malloc's alignment.
struct Header {
  uint32_t size_class;  // kLarge: allocated and freed with malloc alone
  uint32_t unused;
  uint64_t size;        // what the block holds after the header
};
static_assert(sizeof(Header) == 16);

constexpr uint32_t kClasses = 8;  // 32, 64, ... 4096 bytes
constexpr uint32_t kLarge = kClasses;
constexpr size_t kKeptBytesPerClass = 128 * 1024;

constexpr size_t class_size(uint32_t c) { return size_t{32} << c; }

uint32_t class_of(size_t n) {
  if (n <= 32) return 0;
  auto c = static_cast<uint32_t>(std::bit_width(n - 1)) - 5;  // 33..64: 1, 65..128: 2, ...
  return c < kClasses ? c : kLarge;
}

struct Pool {
  std::vector<Header*> kept[kClasses];
  ~Pool();
};

// Set once this thread's pool is gone (thread exit): blocks freed after that go to free().
thread_local bool pool_gone = false;
thread_local Pool pool;

Pool::~Pool() {
  pool_gone = true;
  for (auto& list : kept)
    for (Header* h : list) {
      UNPOISON(h + 1, h->size);
      std::free(h);
    }
}

Header* header_of(void* p) { return static_cast<Header*>(p) - 1; }

void* allocate(size_t n, void*) {
  uint32_t c = class_of(n);
  if (c != kLarge && !pool_gone && !pool.kept[c].empty()) {
    Header* h = pool.kept[c].back();
    pool.kept[c].pop_back();
    UNPOISON(h + 1, h->size);
    return h + 1;
  }
  size_t size = c == kLarge ? n : class_size(c);
  auto* h = static_cast<Header*>(std::malloc(sizeof(Header) + size));
  if (h == nullptr) return nullptr;
  h->size_class = c;
  h->unused = 0;
  h->size = size;
  return h + 1;
}

void release(void* p, void*) {
  if (p == nullptr) return;
  Header* h = header_of(p);
  uint32_t c = h->size_class;
  if (c == kLarge || pool_gone || pool.kept[c].size() * class_size(c) >= kKeptBytesPerClass) {
    std::free(h);
    return;
  }
  pool.kept[c].push_back(h);
  POISON(h + 1, h->size);  // the header stays readable: it says the size
}

void* allocate_zeroed(size_t count, size_t size, void* user) {
  if (size != 0 && count > SIZE_MAX / size) return nullptr;
  void* p = allocate(count * size, user);
  if (p != nullptr) std::memset(p, 0, count * size);
  return p;
}

void* reallocate(void* p, size_t n, void* user) {
  if (p == nullptr) return allocate(n, user);
  Header* h = header_of(p);
  if (n <= h->size) return p;  // the block has room
  void* q = allocate(n, user);
  if (q == nullptr) return nullptr;  // p stays as it was, as realloc leaves it
  std::memcpy(q, p, h->size < n ? h->size : n);
  release(p, user);
  return q;
}

nghttp2_mem memory{nullptr, allocate, release, allocate_zeroed, reallocate};

}  // namespace

nghttp2_mem* http2_memory() { return &memory; }

}  // namespace pilotfish
