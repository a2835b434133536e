#pragma once
// The process's file descriptors, shared by every connection: a budget taken by each accepted
// client connection and each upstream connection, so that pilotfish refuses new work with an
// answer before the kernel refuses it a descriptor. Running out inside libuv is worse than a
// refusal: accept() failing with EMFILE makes libuv close queued clients without a word, and
// once its spare descriptor is lost to another thread, its accept loop spins and the worker
// stops serving everyone (found with `ulimit -n 256` and 400 clients at once).
//
// One budget for the process, since the descriptor table is the process's: a handful of
// atomics, like the circuit breakers' counters.

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace pilotfish {

class DescriptorBudget {
 public:
  static DescriptorBudget& process();

  // Raises the soft RLIMIT_NOFILE to the hard limit, then sets the budget to that limit less
  // the descriptors open now, the admin listeners' connections and `margin` (files pilotfish
  // reads, libuv's own). Until init, the budget is unlimited (unit tests, `check`).
  void init(uint32_t margin);
  // Takes one descriptor's worth for a client connection; false (nothing taken) when clients
  // hold half the budget already or the budget is spent. The other half is kept for the
  // upstream connections those clients' requests need: a client accepted with no descriptor
  // left for its request would only be answered 503 later, after holding one longer.
  bool try_take_downstream() {
    if (downstream_.fetch_add(1, std::memory_order_relaxed) >= limit_.load(std::memory_order_relaxed) / 2) {
      downstream_.fetch_sub(1, std::memory_order_relaxed);
      return false;
    }
    if (try_take()) return true;
    downstream_.fetch_sub(1, std::memory_order_relaxed);
    return false;
  }
  void give_back_downstream() {
    downstream_.fetch_sub(1, std::memory_order_relaxed);
    give_back();
  }
  // Takes one descriptor's worth (an upstream connection); false when the budget is spent.
  bool try_take() {
    if (in_use_.fetch_add(1, std::memory_order_relaxed) < limit_.load(std::memory_order_relaxed)) return true;
    in_use_.fetch_sub(1, std::memory_order_relaxed);
    return false;
  }
  void give_back() { in_use_.fetch_sub(1, std::memory_order_relaxed); }
  int64_t in_use() const { return in_use_.load(std::memory_order_relaxed); }
  // Clients refused at accept, and upstream connections not attempted, for want of descriptors.
  void count_refused_accept() { refused_accepts_.fetch_add(1, std::memory_order_relaxed); }
  void count_refused_connect() { refused_connects_.fetch_add(1, std::memory_order_relaxed); }
  uint64_t refused_accepts() const { return refused_accepts_.load(std::memory_order_relaxed); }
  uint64_t refused_connects() const { return refused_connects_.load(std::memory_order_relaxed); }
  int64_t limit() const { return limit_.load(std::memory_order_relaxed); }
  uint64_t soft_limit() const { return soft_limit_; }
  // For tests of the accounting: a budget of exactly `limit`.
  void set_limit_for_test(int64_t limit) { limit_.store(limit, std::memory_order_relaxed); }

 private:
  std::atomic<int64_t> in_use_{0};
  std::atomic<int64_t> downstream_{0};  // of in_use_, client connections
  std::atomic<int64_t> limit_{INT64_MAX};
  uint64_t soft_limit_ = 0;
  std::atomic<uint64_t> refused_accepts_{0};
  std::atomic<uint64_t> refused_connects_{0};
};

// How many connections one admin listener takes: 64, or a 32nd of a small descriptor limit
// (at least 4); `soft_limit` 0 (not known yet) gives 64.
size_t admin_connection_cap(uint64_t soft_limit);

// A connect, accept or write that failed for a reason of this process or host (no descriptor,
// no memory, no local port), not the peer's: it never counts against an endpoint.
bool is_local_failure(int uv_status);

}  // namespace pilotfish
