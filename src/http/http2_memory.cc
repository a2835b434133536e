#include "http/http2_memory.h"

#include <bit>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "pilotfish/capacity_pool.h"  // PILOTFISH_ASAN

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
  uint32_t used;        // what nghttp2 asked for (under ASan the rest is poisoned)
  uint64_t size;        // what the block holds after the header
};
static_assert(sizeof(Header) == 16);

// 32, 48, 64, 96, ... 1536, 2048 bytes: steps of half a power of two waste at most a third.
constexpr uint32_t kClasses = 13;
constexpr uint32_t kLarge = kClasses;
constexpr size_t kKeptBytesPerClass = 128 * 1024;

constexpr size_t class_size(uint32_t c) { return (c % 2 ? size_t{48} : size_t{32}) << (c / 2); }

uint32_t class_of(size_t n) {
  if (n <= 32) return 0;
  auto b = static_cast<uint32_t>(std::bit_width(n - 1));  // 2^(b-1) < n <= 2^b, b >= 6
  uint32_t c = 2 * (b - 5) - (n <= (size_t{3} << (b - 2)) ? 1 : 0);
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

// The block's first n bytes, for nghttp2; under ASan, a write past them is caught.
void* hand_out(Header* h, size_t n) {
  h->used = static_cast<uint32_t>(n);  // n <= h->size, and pooled blocks are small
  UNPOISON(h + 1, n);
  POISON(reinterpret_cast<char*>(h + 1) + n, h->size - n);
  return h + 1;
}

void* allocate(size_t n, void*) {
  uint32_t c = class_of(n);
  if (c != kLarge && !pool_gone && !pool.kept[c].empty()) {
    Header* h = pool.kept[c].back();
    pool.kept[c].pop_back();
    return hand_out(h, n);
  }
  size_t size = c == kLarge ? n : class_size(c);
  auto* h = static_cast<Header*>(std::malloc(sizeof(Header) + size));
  if (h == nullptr) return nullptr;
  h->size_class = c;
  h->size = size;
  if (c == kLarge) {
    h->used = 0;  // the size says it
    return h + 1;
  }
  return hand_out(h, n);
}

void release(void* p, void*) {
  if (p == nullptr) return;
  Header* h = header_of(p);
  uint32_t c = h->size_class;
  if (c == kLarge || pool_gone || pool.kept[c].size() * class_size(c) >= kKeptBytesPerClass) {
    UNPOISON(h + 1, h->size);
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
  size_t used = h->size_class == kLarge ? h->size : h->used;
  if (n <= h->size && h->size_class != kLarge) return hand_out(h, n);  // the block has room
  if (n <= h->size) return p;
  void* q = allocate(n, user);
  if (q == nullptr) return nullptr;  // p stays as it was, as realloc leaves it
  std::memcpy(q, p, used < n ? used : n);
  release(p, user);
  return q;
}

nghttp2_mem memory{nullptr, allocate, release, allocate_zeroed, reallocate};

}  // namespace

nghttp2_mem* http2_memory() { return &memory; }

}  // namespace pilotfish
