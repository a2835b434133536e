#pragma once
// Cluster-wide resilience state, the one thing workers share: circuit-breaker counters, the
// health of each endpoint (outlier ejection) and the retry budget. Each is a few atomics in a
// small object per cluster or endpoint; the hot path touches two of them per request (the
// requests-in-flight counter, up and down) and only reads the rest.
//
// Objects live in a process-wide registry keyed by cluster name and endpoint address, so a
// policy reload that keeps a cluster keeps its counts and its endpoints' ejection state; a
// snapshot holds its own references, so nothing goes away under a request in flight.

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "pilotfish/policy.h"

namespace pilotfish {

enum class BreakerLimit;

// Outlier-detection state of one endpoint, shared by every worker.
struct EndpointHealth {
  enum State : uint32_t { ok = 0, ejected = 1, probing = 2 };
  std::atomic<uint32_t> state{ok};
  std::atomic<uint32_t> consecutive_failures{0};
  std::atomic<uint32_t> ejections{0};          // times ejected so far
  std::atomic<uint64_t> ejected_until_ms{0};   // steady clock (uv_now)
  std::atomic<int64_t> ejected_until_unix_ms{0};  // the same moment, for /clusters
  std::atomic<bool> retired{false};  // left the policy: requests still in flight no longer count

  // May a request go here now? An ejected endpoint whose time is up may take one request, the
  // probe, which whoever picks it must claim (claim_probe) before sending.
  bool may_try(uint64_t now_ms) const {
    uint32_t s = state.load(std::memory_order_relaxed);
    if (s == ok) return true;
    if (s == probing) return false;
    return now_ms >= ejected_until_ms.load(std::memory_order_relaxed);
  }
  bool needs_probe() const { return state.load(std::memory_order_relaxed) == ejected; }
  // Half-open: exactly one request (over all workers) gets to probe.
  bool claim_probe() {
    uint32_t expected = ejected;
    return state.compare_exchange_strong(expected, probing, std::memory_order_acq_rel);
  }
  // The probe ended without a verdict (the client left): the next request probes instead.
  void release_probe(uint64_t now_ms) {
    uint32_t expected = probing;
    if (state.compare_exchange_strong(expected, ejected, std::memory_order_acq_rel))
      ejected_until_ms.store(now_ms, std::memory_order_relaxed);
  }
};

// Retries and requests over the last 10 s, in one-second buckets. Each worker writes its own
// row; a retry decision (rare) sums every row.
class RetryBudget {
 public:
  explicit RetryBudget(unsigned workers) : rows_(workers) {}
  // One writer per row (its worker): a relaxed load and store, no read-modify-write.
  void record_request(unsigned worker, uint64_t now_ms) { bump(bucket(worker, now_ms).requests); }
  void record_retry(unsigned worker, uint64_t now_ms) { bump(bucket(worker, now_ms).retries); }
  // retries <= ratio * requests + min_per_second * 10, over the last 10 s, with this one.
  bool allows_retry(uint64_t now_ms, double ratio, double min_per_second) const;

 private:
  struct Bucket {
    std::atomic<uint64_t> second{0};
    std::atomic<uint64_t> requests{0};
    std::atomic<uint64_t> retries{0};
  };
  struct alignas(64) Row {
    std::array<Bucket, 10> buckets;
  };
  Bucket& bucket(unsigned worker, uint64_t now_ms);
  static void bump(std::atomic<uint64_t>& v) {
    v.store(v.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  }
  std::vector<Row> rows_;
};

// Cluster-wide counters and the budget of one cluster.
struct ClusterShared {
  explicit ClusterShared(unsigned workers) : budget(workers) {}
  alignas(64) std::atomic<int64_t> requests{0};  // in flight
  alignas(64) std::atomic<int64_t> connections{0};
  std::atomic<int64_t> pending{0};
  std::atomic<int64_t> retries{0};  // in flight
  std::atomic<int64_t> ejected{0};  // endpoints ejected now
  std::atomic<int64_t> mirrors{0};  // copies in flight (routes' mirror)
  RetryBudget budget;

  // Takes one unit of `counter` if it is under `limit`.
  static bool try_take(std::atomic<int64_t>& counter, uint32_t limit) {
    // Compare-and-swap, not add-then-undo: a worker at the limit never makes another's
    // request see a full breaker for a moment.
    int64_t now = counter.load(std::memory_order_relaxed);
    while (now < static_cast<int64_t>(limit))
      if (counter.compare_exchange_weak(now, now + 1, std::memory_order_acq_rel)) return true;
    return false;
  }
  static void give_back(std::atomic<int64_t>& counter) { counter.fetch_sub(1, std::memory_order_acq_rel); }
};

class ResilienceRegistry {
 public:
  explicit ResilienceRegistry(unsigned workers) : workers_(workers) {}
  std::shared_ptr<ClusterShared> cluster(const std::string& name);
  std::shared_ptr<EndpointHealth> endpoint(const std::string& cluster, const std::string& address);
  // After a reload: forget what the policy no longer names (snapshots keep their references).
  void keep_only(const Policy& policy);
  // For /clusters and the endpoints_ejected gauge; null if unknown.
  std::shared_ptr<ClusterShared> find_cluster(const std::string& name) const;
  std::shared_ptr<EndpointHealth> find_endpoint(const std::string& cluster, const std::string& address) const;

 private:
  unsigned workers_;
  mutable std::mutex mutex_;
  std::map<std::string, std::shared_ptr<ClusterShared>> clusters_;
  std::map<std::pair<std::string, std::string>, std::shared_ptr<EndpointHealth>> endpoints_;
};

// The outcome of one attempt for outlier detection. Returns true when this failure ejected the
// endpoint (the caller counts outlier_ejections_total).
bool record_endpoint_failure(EndpointHealth& health, ClusterShared& cluster, const OutlierDetection& od,
                             size_t cluster_endpoints, uint64_t now_ms);
void record_endpoint_success(EndpointHealth& health, ClusterShared& cluster);

}  // namespace pilotfish
