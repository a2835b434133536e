#pragma once
// The metrics registry: every worker's stats, the process's own, and the text exposition built
// from them at scrape time. The only part of pilotfish that includes prometheus-cpp is
// metrics.cc; the data path sees only the plain structs of stats.h.

#include <array>
#include <map>
#include <tuple>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "metrics/stats.h"
#include "pilotfish/policy.h"

namespace pilotfish {

class MetricsRegistry {
 public:
  explicit MetricsRegistry(unsigned workers);

  // A worker's stats for the listeners and clusters of `policy`: objects for names it had
  // before are kept (counters never go backwards), names no longer in the policy are dropped.
  // Called by the worker's own thread when it takes a snapshot.
  WorkerStats& bind_worker(unsigned worker, const Policy& policy);
  ProcessStats& process() { return process_; }

  // The policy whose version and sha256 `policy_info` shows.
  void set_policy_info(int version, const std::string& sha256);
  // Certificate expiry times for cert_expiry_timestamp_seconds (issue 3 fills these).
  void set_cert_expiry(const std::string& cert, double unix_seconds);
  void clear_cert_expiry();
  // Ejected endpoints per cluster for endpoints_ejected (issue 4 fills these).
  void set_endpoints_ejected(const std::string& cluster, int64_t count);

  // Open upstream connections of a cluster, over every worker (for /clusters).
  int64_t cluster_open_connections(const std::string& cluster) const;

  // Prometheus text exposition format 0.0.4.
  std::string render() const;

  // Each route's answers so far, over every worker, by (listener, route name, cluster): for the
  // golden signals of /stats (server/golden_signals.h).
  struct RouteSample {
    uint64_t count = 0;
    uint64_t errors = 0;  // 5xx (and codes outside 100..599), and gRPC calls that did not end OK
    std::array<uint64_t, kLatencyBuckets.size()> buckets{};  // not cumulative; the rest is +Inf
  };
  using RouteKey = std::tuple<std::string, std::string, std::string>;
  std::map<RouteKey, RouteSample> route_samples() const;

 private:
  friend class StatsCollectable;
  struct WorkerSlot {
    mutable std::mutex mutex;  // taken by bind_worker and by the scrape, never per request
    WorkerStats stats;
  };
  std::vector<std::unique_ptr<WorkerSlot>> workers_;
  ProcessStats process_;
  mutable std::mutex info_mutex_;
  int policy_version_ = 0;
  std::string policy_sha256_;
  std::map<std::string, double> cert_expiry_;
  std::map<std::string, int64_t> endpoints_ejected_;
};

}  // namespace pilotfish
