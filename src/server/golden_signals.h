#pragma once
// The golden signals of each route for GET /stats and `pilotfish top`: over the last 10 s and the
// last minute, per listener, route and cluster, the request rate, the success rate (answers that
// are not 5xx, and gRPC calls that ended OK) and the p50, p95 and p99 latency. The main loop samples the workers' counters and
// histograms once a second (MetricsRegistry::route_samples) and keeps a minute of samples: a
// window is the difference between the newest sample and the one that old (the oldest there is,
// in a sidecar's first minute). Percentiles come from the histogram's buckets as Prometheus's
// histogram_quantile computes them: linear within the bucket, the top finite bound past it.

#include <cstdint>
#include <deque>
#include <map>
#include <string>

#include "metrics/metrics.h"

namespace pilotfish {

class GoldenSignals {
 public:
  // A sample of every route's counters, taken at loop time `now_ms`.
  void add_sample(uint64_t now_ms, std::map<MetricsRegistry::RouteKey, MetricsRegistry::RouteSample> routes);
  // {"routes": [{"listener", "route", "cluster", "10s": {...}, "1m": {...}}, ...]}, busiest (over
  // 1 min) first; each window {"seconds", "requests", "rate", "success_rate", "p50_ms", "p95_ms",
  // "p99_ms"} (success_rate and the percentiles null without a request in the window).
  std::string json() const;
  // The same as a table for a person (`pilotfish top`), one line per route.
  std::string table() const;

  struct Window {
    double seconds = 0;
    uint64_t requests = 0;
    double rate = 0;
    double success_rate = -1;  // -1: no request
    double p50_ms = -1, p95_ms = -1, p99_ms = -1;
  };
  struct Row {
    MetricsRegistry::RouteKey key;
    Window last_10s, last_1m;
  };
  std::vector<Row> rows() const;

 private:
  struct Snapshot {
    uint64_t ms;
    std::map<MetricsRegistry::RouteKey, MetricsRegistry::RouteSample> routes;
  };
  Window window(const MetricsRegistry::RouteKey& key, uint64_t span_ms) const;
  std::deque<Snapshot> samples_;  // oldest first, at most a minute and a second apart
};

// The latency (ms) below which a share `q` (0..1) of the answers in `buckets` fell, or -1 when
// none did.
double bucket_quantile(double q, const std::array<uint64_t, kLatencyBuckets.size()>& buckets, uint64_t count);

}  // namespace pilotfish
