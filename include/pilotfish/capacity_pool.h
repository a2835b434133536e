#pragma once
// Buffers' capacity, handed from a connection that ended to the next one on the same thread.
//
// A keep-alive connection allocates nothing per request: its buffers keep their capacity from
// one request to the next. A new connection would start with empty buffers and grow each one
// (its output, its request and response heads, the upstream head) a few times, which made about
// two dozen heap allocations per connection. Instead a connection takes cleared buffers that an
// earlier connection of the same worker gave back, and gives its own back when it ends.
//
// Only capacity moves between connections: a buffer is cleared before it is kept, so nothing one
// connection received is readable by the next. The pool is per thread (each worker is one loop
// on one thread; a connection is made and destroyed on its loop's thread), bounded in count and
// in the size of what it keeps, so an idle worker holds at most a few hundred KiB here
// (32 buffers of each kind, each at most 8 KiB; in practice a few hundred bytes each).

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

// AddressSanitizer in this build: gcc says so with __SANITIZE_ADDRESS__, clang (the fuzz build)
// only through __has_feature.
#if defined(__SANITIZE_ADDRESS__)
#define PILOTFISH_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PILOTFISH_ASAN 1
#endif
#endif

namespace pilotfish {

// Heap memory a buffer holds: a std::string's first 15 bytes are inside the object, not on the heap.
inline size_t heap_capacity(const std::string& s) { return s.capacity() > 15 ? s.capacity() : 0; }
template <class T>
size_t heap_capacity(const std::vector<T>& v) {
  return v.capacity() * sizeof(T);
}

// Each kind of buffer has its own pool (kRole), so that a buffer comes back to the same use
// and is already grown to what that use needs: a request's 40-byte id does not become the next
// connection's output buffer and grow again there.
enum class PoolRole { output, cipher, header_text, header_entries, upstream_head, to_upstream, request_id, path, target };

template <class Buffer, PoolRole kRole, size_t kKeep = 32, size_t kMaxBytes = 8 * 1024>
class CapacityPool {
 public:
  // `into`, if empty and without heap memory of its own, gets a kept buffer (if there is one).
  static void take(Buffer& into) {
    std::vector<Buffer>& kept = items();
    if (kept.empty() || !into.empty() || heap_capacity(into) != 0) return;
    into.swap(kept.back());
    kept.pop_back();
  }
  // `from` is emptied; its memory is kept for a later take() unless the pool is full or the
  // buffer grew past kMaxBytes (a large body's buffer is not held for small requests).
  static void give(Buffer& from) {
    from.clear();
    size_t bytes = heap_capacity(from);
    if (bytes == 0 || bytes > kMaxBytes) return;
    std::vector<Buffer>& kept = items();
    if (kept.size() >= kKeep) return;
    kept.emplace_back();
    kept.back().swap(from);  // `from` is left empty, with the (empty) buffer it swapped with
  }

 private:
  static std::vector<Buffer>& items() {
    thread_local std::vector<Buffer> kept = [] {
      std::vector<Buffer> v;
      v.reserve(kKeep);  // give() never allocates
      return v;
    }();
    return kept;
  }
};

template <PoolRole kRole>
using StringPool = CapacityPool<std::string, kRole>;

// Memory for objects of one class, made and destroyed on the same thread (a worker's
// connections): class-specific operator new and delete take blocks from a per-thread list of
// up to kKeep freed ones before asking malloc. Raw memory only: the constructor initialises
// the object as it would in new memory. Under AddressSanitizer blocks go straight back to
// malloc, which keeps its use-after-free checks whole.
template <class T, size_t kKeep = 64>
class BlockPool {
 public:
  static void* take(size_t size) {
#ifndef PILOTFISH_ASAN
    std::vector<void*>& kept = blocks();
    if (size == sizeof(T) && !kept.empty()) {
      void* p = kept.back();
      kept.pop_back();
      return p;
    }
#endif
    return ::operator new(size);
  }
  static void give(void* p, size_t size) {
#ifndef PILOTFISH_ASAN
    std::vector<void*>& kept = blocks();
    if (size == sizeof(T) && kept.size() < kKeep) {
      kept.push_back(p);
      return;
    }
#endif
    ::operator delete(p);
  }

 private:
  // Blocks still kept when the thread ends go back to malloc.
  struct Kept : std::vector<void*> {
    Kept() { reserve(kKeep); }
    ~Kept() {
      for (void* p : *this) ::operator delete(p);
    }
  };
  static std::vector<void*>& blocks() {
    thread_local Kept kept;
    return kept;
  }
};

}  // namespace pilotfish
