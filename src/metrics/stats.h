#pragma once
// The numbers behind pilotfish's metrics, as plain per-worker structs. The hot path adds to a
// worker's own counter with a relaxed load and store (one writer, so no atomic read-modify-
// write and no lock); the admin thread reads them at scrape time and sums over workers.
// Nothing here knows Prometheus: src/metrics/metrics_collector.cc turns these into families.
//
// Stats are keyed by listener and cluster *name* in a process-wide StatsStore, so a policy
// reload that keeps a name keeps its counters (they never go backwards), and one that drops a
// name drops its series.

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

namespace pilotfish {

struct RelaxedCounter {
  std::atomic<uint64_t> value{0};
  void add(uint64_t n = 1) { value.store(value.load(std::memory_order_relaxed) + n, std::memory_order_relaxed); }
  uint64_t load() const { return value.load(std::memory_order_relaxed); }
};

struct RelaxedGauge {
  std::atomic<int64_t> value{0};
  void add(int64_t n) { value.store(value.load(std::memory_order_relaxed) + n, std::memory_order_relaxed); }
  int64_t load() const { return value.load(std::memory_order_relaxed); }
};

// Request latency buckets for a sidecar: from a quarter of a millisecond to ten seconds.
inline constexpr std::array<double, 15> kLatencyBuckets = {0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                           0.1,     0.25,   0.5,   1.0,    2.5,   5.0,  10.0};

// Status codes 100..599 each have a slot; anything else counts under 0 ("other").
struct StatusCounts {
  static constexpr int kFirst = 100;
  static constexpr int kSlots = 500;
  std::array<RelaxedCounter, kSlots + 1> slots;  // the last one: a code outside 100..599
  void add(int code) { slots[(code >= kFirst && code < kFirst + kSlots) ? code - kFirst : kSlots].add(); }
};

// Requests of one listener's route answered for one cluster (or for none: 404s, 400s) in one
// worker.
struct RouteStats {
  StatusCounts codes;
  // gRPC calls by their status (0-16; the last slot: any other code): grpc-status from the
  // response's trailers (or its trailers-only head), or the one pilotfish answered with.
  std::array<RelaxedCounter, 18> grpc;
  void record_grpc(int code) { grpc[(code >= 0 && code <= 16) ? static_cast<size_t>(code) : 17].add(); }
  // Faults the route's `fault` injected (counted with the cluster the request was for).
  RelaxedCounter faults_delay;
  RelaxedCounter faults_abort;
  std::array<RelaxedCounter, kLatencyBuckets.size()> buckets;  // not cumulative; +Inf = count
  RelaxedCounter count;
  RelaxedCounter sum_ns;
  void record(int status, uint64_t duration_ns) {
    codes.add(status);
    double seconds = static_cast<double>(duration_ns) / 1e9;
    for (size_t i = 0; i < kLatencyBuckets.size(); ++i) {
      if (seconds <= kLatencyBuckets[i]) {
        buckets[i].add();
        break;
      }
    }
    count.add();
    sum_ns.add(duration_ns);
  }
};

struct ListenerStats {
  RelaxedGauge connections;
  RelaxedCounter connections_total;
  RelaxedCounter authz_denied;
  RelaxedCounter auth_failures;  // 401: no valid bearer token
  RelaxedCounter rate_limited;   // 429
  // Keyed by (route name, cluster name); "" = an unnamed route, or no cluster. Written only by
  // the owning worker's thread; the map itself is changed only under `mutex`, which the scrape
  // also takes (never the hot path: a worker resolves its RouteStats pointer once per route and
  // cluster and keeps it).
  // A snapshot holds its own reference, so a reload that drops a cluster's series cannot pull
  // them from under a request of the old snapshot.
  using Key = std::pair<std::string, std::string>;
  std::mutex mutex;
  std::map<Key, std::shared_ptr<RouteStats>> routes;
  std::shared_ptr<RouteStats> route(const std::string& route_name, const std::string& cluster) {
    std::lock_guard<std::mutex> lock(mutex);
    // A request of an old snapshot for a cluster or route name that a reload removed counts,
    // but into a series of its own that is not exported: the removed series must not come back.
    if ((!cluster.empty() && !clusters.count(cluster)) || (!route_name.empty() && !route_names.count(route_name)))
      return std::make_shared<RouteStats>();
    auto& slot = routes[{route_name, cluster}];
    if (!slot) slot = std::make_shared<RouteStats>();
    return slot;
  }
  // The clusters and this listener's route names in the policy now in force: the series of the
  // others go ("" stays: requests of unnamed routes, or that no route matched).
  void set_names(std::set<std::string> cluster_names, std::set<std::string> names_of_routes) {
    std::lock_guard<std::mutex> lock(mutex);
    clusters = std::move(cluster_names);
    route_names = std::move(names_of_routes);
    std::erase_if(routes, [&](const auto& entry) {
      return (!entry.first.second.empty() && !clusters.count(entry.first.second)) ||
             (!entry.first.first.empty() && !route_names.count(entry.first.first));
    });
  }
  std::set<std::string> clusters;
  std::set<std::string> route_names;
};

enum class BreakerLimit { connections, pending_requests, requests, retries };

struct ClusterStats {
  StatusCounts upstream_codes;
  RelaxedCounter upstream_reset;
  RelaxedCounter upstream_connect_failure;
  RelaxedCounter upstream_timeout;  // attempts abandoned at their per-try timeout
  RelaxedGauge upstream_connections;
  RelaxedCounter retries;
  RelaxedCounter retry_budget_exhausted;
  std::array<RelaxedCounter, 4> breaker_overflow;
  RelaxedCounter outlier_ejections;
  // Copies a route's mirror made for this cluster: answered (sent), not sent (dropped: over a
  // bound, or the request never completed or pilotfish answered it), or not answered by the
  // cluster (failed: no endpoint, refused, reset, timed out).
  std::array<RelaxedCounter, 3> mirror;
};
enum class MirrorResult : size_t { sent, dropped, failed };

// One worker's stats objects for the names of the current policy.
struct WorkerStats {
  std::map<std::string, std::shared_ptr<ListenerStats>> listeners;
  std::map<std::string, std::shared_ptr<ClusterStats>> clusters;
};

// Process-wide counters that belong to no worker in particular.
struct ProcessStats {
  RelaxedCounter policy_reloads_applied;
  RelaxedCounter policy_reloads_rejected;
  RelaxedCounter identity_rotations_applied;  // written by the main thread only
  RelaxedCounter identity_rotations_rejected;
  // Taps (metrics/tap.h), counted under the taps' lock: events queued for a tap, dropped for want
  // of room (its reader is behind), and over its rate.
  RelaxedCounter tap_sent;
  RelaxedCounter tap_dropped;
  RelaxedCounter tap_limited;
  RelaxedGauge tap_streams;  // taps open
};

}  // namespace pilotfish
