#include "metrics/metrics.h"

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>
#include <prometheus/text_serializer.h>

#include <limits>
#include <map>
#include <set>
#include <sstream>

#include "net/descriptor_budget.h"
#include "pilotfish_build_config.h"
#include "tls/tls.h"

namespace pilotfish {

MetricsRegistry::MetricsRegistry(unsigned workers) {
  for (unsigned i = 0; i < workers; ++i) workers_.push_back(std::make_unique<WorkerSlot>());
}

WorkerStats& MetricsRegistry::bind_worker(unsigned worker, const Policy& policy) {
  WorkerSlot& slot = *workers_.at(worker);
  std::lock_guard<std::mutex> lock(slot.mutex);
  WorkerStats next;
  std::set<std::string> cluster_names;
  for (const auto& c : policy.clusters) cluster_names.insert(c.name);
  for (const auto& l : policy.listeners) {
    auto it = slot.stats.listeners.find(l.name);
    auto stats = it != slot.stats.listeners.end() ? it->second : std::make_shared<ListenerStats>();
    std::set<std::string> route_names;
    for (const auto& r : l.routes)
      if (!r.name.empty()) route_names.insert(r.name);
    stats->set_names(cluster_names, std::move(route_names));
    next.listeners[l.name] = std::move(stats);
  }
  for (const auto& c : policy.clusters) {
    auto it = slot.stats.clusters.find(c.name);
    next.clusters[c.name] = it != slot.stats.clusters.end() ? it->second : std::make_shared<ClusterStats>();
  }
  slot.stats = std::move(next);
  return slot.stats;
}

int64_t MetricsRegistry::cluster_open_connections(const std::string& cluster) const {
  int64_t total = 0;
  for (const auto& slot : workers_) {
    std::lock_guard<std::mutex> lock(slot->mutex);
    auto it = slot->stats.clusters.find(cluster);
    if (it != slot->stats.clusters.end()) total += it->second->upstream_connections.load();
  }
  return total;
}

void MetricsRegistry::set_policy_info(int version, const std::string& sha256) {
  std::lock_guard<std::mutex> lock(info_mutex_);
  policy_version_ = version;
  policy_sha256_ = sha256;
}

void MetricsRegistry::set_cert_expiry(const std::string& cert, double unix_seconds) {
  std::lock_guard<std::mutex> lock(info_mutex_);
  cert_expiry_[cert] = unix_seconds;
}

void MetricsRegistry::clear_cert_expiry() {
  std::lock_guard<std::mutex> lock(info_mutex_);
  cert_expiry_.clear();
}

void MetricsRegistry::set_endpoints_ejected(const std::string& cluster, int64_t count) {
  std::lock_guard<std::mutex> lock(info_mutex_);
  endpoints_ejected_[cluster] = count;
}

namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;
using Labels = std::vector<ClientMetric::Label>;

MetricFamily family(const char* name, const char* help, MetricType type) {
  MetricFamily f;
  f.name = std::string("pilotfish_") + name;
  f.help = help;
  f.type = type;
  return f;
}

void add_counter(MetricFamily& f, Labels labels, double value) {
  ClientMetric m;
  m.label = std::move(labels);
  m.counter.value = value;
  f.metric.push_back(std::move(m));
}

void add_gauge(MetricFamily& f, Labels labels, double value) {
  ClientMetric m;
  m.label = std::move(labels);
  m.gauge.value = value;
  f.metric.push_back(std::move(m));
}

// Sums of one route's stats over every worker.
struct RouteTotals {
  std::array<uint64_t, StatusCounts::kSlots + 1> codes{};
  std::array<uint64_t, 18> grpc{};
  uint64_t faults_delay = 0;
  uint64_t faults_abort = 0;
  std::array<uint64_t, kLatencyBuckets.size()> buckets{};
  uint64_t count = 0;
  uint64_t sum_ns = 0;
};

struct ListenerTotals {
  int64_t connections = 0;
  uint64_t connections_total = 0;
  uint64_t authz_denied = 0;
  uint64_t auth_failures = 0;
  uint64_t rate_limited = 0;
  std::map<std::pair<std::string, std::string>, RouteTotals> routes;  // by (route name, cluster)
};

struct ClusterTotals {
  std::array<uint64_t, StatusCounts::kSlots + 1> codes{};
  uint64_t reset = 0, connect_failure = 0, timeout = 0, retries = 0, budget_exhausted = 0, ejections = 0;
  int64_t connections = 0;
  std::array<uint64_t, 4> overflow{};
  std::array<uint64_t, 3> mirror{};
};

std::string code_label(size_t slot) {
  return slot == StatusCounts::kSlots ? std::string("other") : std::to_string(StatusCounts::kFirst + slot);
}

}  // namespace

// Merges every worker's numbers into Prometheus families at scrape time.
class StatsCollectable final : public prometheus::Collectable {
 public:
  explicit StatsCollectable(const MetricsRegistry& registry) : registry_(registry) {}
  std::vector<MetricFamily> Collect() const override;

 private:
  const MetricsRegistry& registry_;
};

std::vector<MetricFamily> StatsCollectable::Collect() const {
  std::map<std::string, ListenerTotals> listeners;
  std::map<std::string, ClusterTotals> clusters;
  for (const auto& slot : registry_.workers_) {
    std::lock_guard<std::mutex> lock(slot->mutex);
    for (const auto& [name, l] : slot->stats.listeners) {
      ListenerTotals& t = listeners[name];
      t.connections += l->connections.load();
      t.connections_total += l->connections_total.load();
      t.authz_denied += l->authz_denied.load();
      t.auth_failures += l->auth_failures.load();
      t.rate_limited += l->rate_limited.load();
      std::lock_guard<std::mutex> routes_lock(l->mutex);
      for (const auto& [key, r] : l->routes) {
        RouteTotals& rt = t.routes[key];
        for (size_t i = 0; i < rt.codes.size(); ++i) rt.codes[i] += r->codes.slots[i].load();
        for (size_t i = 0; i < rt.grpc.size(); ++i) rt.grpc[i] += r->grpc[i].load();
        rt.faults_delay += r->faults_delay.load();
        rt.faults_abort += r->faults_abort.load();
        for (size_t i = 0; i < rt.buckets.size(); ++i) rt.buckets[i] += r->buckets[i].load();
        rt.count += r->count.load();
        rt.sum_ns += r->sum_ns.load();
      }
    }
    for (const auto& [name, c] : slot->stats.clusters) {
      ClusterTotals& t = clusters[name];
      for (size_t i = 0; i < t.codes.size(); ++i) t.codes[i] += c->upstream_codes.slots[i].load();
      t.reset += c->upstream_reset.load();
      t.connect_failure += c->upstream_connect_failure.load();
      t.timeout += c->upstream_timeout.load();
      t.connections += c->upstream_connections.load();
      t.retries += c->retries.load();
      t.budget_exhausted += c->retry_budget_exhausted.load();
      t.ejections += c->outlier_ejections.load();
      for (size_t i = 0; i < 4; ++i) t.overflow[i] += c->breaker_overflow[i].load();
      for (size_t i = 0; i < 3; ++i) t.mirror[i] += c->mirror[i].load();
    }
  }

  std::vector<MetricFamily> out;
  auto requests = family("requests_total", "Responses sent downstream, pilotfish's own included.", MetricType::Counter);
  auto duration = family("request_duration_seconds", "Time from the first byte of a request to the end of its response.",
                         MetricType::Histogram);
  auto grpc = family("grpc_responses_total",
                     "gRPC calls answered, by grpc-status (the upstream's, or pilotfish's own; other: outside 0-16).",
                     MetricType::Counter);
  auto faults = family("faults_injected_total", "Faults a route's fault policy injected, by kind (delay, abort).",
                       MetricType::Counter);
  auto down_conns = family("downstream_connections", "Open client connections.", MetricType::Gauge);
  auto down_total = family("downstream_connections_total", "Client connections accepted.", MetricType::Counter);
  auto authz = family("authz_denied_total", "Requests or connections refused by a listener's allow list or authorization rules.",
                      MetricType::Counter);
  auto auth_failures = family("auth_failures_total", "Requests answered 401: no valid bearer token (auth).",
                              MetricType::Counter);
  auto rate_limited = family("rate_limited_total", "Requests answered 429 by a rate limit.", MetricType::Counter);
  for (const auto& [name, t] : listeners) {
    add_gauge(down_conns, {{"listener", name}}, static_cast<double>(t.connections));
    add_counter(down_total, {{"listener", name}}, static_cast<double>(t.connections_total));
    add_counter(authz, {{"listener", name}}, static_cast<double>(t.authz_denied));
    add_counter(auth_failures, {{"listener", name}}, static_cast<double>(t.auth_failures));
    add_counter(rate_limited, {{"listener", name}}, static_cast<double>(t.rate_limited));
    // gRPC answers are by listener and cluster (the contract's labels): summed over routes.
    std::map<std::string, std::array<uint64_t, 18>> grpc_by_cluster;
    std::map<std::string, std::pair<uint64_t, uint64_t>> faults_by_route;  // (delay, abort), summed over clusters
    for (const auto& [key, rt] : t.routes) {
      const auto& [route, cluster] = key;
      for (size_t i = 0; i < rt.codes.size(); ++i) {
        if (rt.codes[i] == 0) continue;
        add_counter(requests, {{"listener", name}, {"route", route}, {"cluster", cluster}, {"code", code_label(i)}},
                    static_cast<double>(rt.codes[i]));
      }
      if (rt.faults_delay || rt.faults_abort) {
        auto& f = faults_by_route[route];
        f.first += rt.faults_delay;
        f.second += rt.faults_abort;
      }
      auto& g = grpc_by_cluster[cluster];
      for (size_t i = 0; i < rt.grpc.size(); ++i) g[i] += rt.grpc[i];
      ClientMetric m;
      m.label = {{"listener", name}, {"route", route}, {"cluster", cluster}};
      m.histogram.sample_count = rt.count;
      m.histogram.sample_sum = static_cast<double>(rt.sum_ns) / 1e9;
      uint64_t cumulative = 0;
      for (size_t i = 0; i < kLatencyBuckets.size(); ++i) {
        cumulative += rt.buckets[i];
        m.histogram.bucket.push_back({cumulative, kLatencyBuckets[i]});
      }
      m.histogram.bucket.push_back({rt.count, std::numeric_limits<double>::infinity()});
      duration.metric.push_back(std::move(m));
    }
    for (const auto& [route, f] : faults_by_route) {
      add_counter(faults, {{"listener", name}, {"route", route}, {"kind", "delay"}}, static_cast<double>(f.first));
      add_counter(faults, {{"listener", name}, {"route", route}, {"kind", "abort"}}, static_cast<double>(f.second));
    }
    for (const auto& [cluster, g] : grpc_by_cluster) {
      for (size_t i = 0; i < g.size(); ++i) {
        if (g[i] == 0) continue;
        add_counter(grpc, {{"listener", name}, {"cluster", cluster}, {"grpc_code", i < 17 ? std::to_string(i) : "other"}},
                    static_cast<double>(g[i]));
      }
    }
  }

  auto upstream = family("upstream_requests_total",
                         "Attempts sent upstream, by response code (reset or connect_failure when there was none).",
                         MetricType::Counter);
  auto up_conns = family("upstream_connections", "Open upstream connections.", MetricType::Gauge);
  auto retries = family("retries_total", "Retries sent.", MetricType::Counter);
  auto budget = family("retry_budget_exhausted_total", "Retries not sent because the retry budget was spent.",
                       MetricType::Counter);
  auto overflow = family("circuit_breaker_overflow_total", "Requests refused by a circuit-breaker limit.",
                         MetricType::Counter);
  auto ejections = family("outlier_ejections_total", "Endpoints ejected by outlier detection.", MetricType::Counter);
  auto ejected = family("endpoints_ejected", "Endpoints ejected now.", MetricType::Gauge);
  auto mirror = family("mirror_requests_total",
                       "Copies of requests a route's mirror made for this cluster: sent (and answered), dropped "
                       "(not sent: over a bound, or the request was not completed or answered by pilotfish), "
                       "failed (the cluster did not answer).",
                       MetricType::Counter);
  static constexpr const char* kLimits[] = {"connections", "pending_requests", "requests", "retries"};
  static constexpr const char* kMirrorResults[] = {"sent", "dropped", "failed"};
  std::map<std::string, int64_t> ejected_now;
  {
    std::lock_guard<std::mutex> lock(registry_.info_mutex_);
    ejected_now = registry_.endpoints_ejected_;
  }
  for (const auto& [name, t] : clusters) {
    for (size_t i = 0; i < t.codes.size(); ++i) {
      if (t.codes[i] == 0) continue;
      add_counter(upstream, {{"cluster", name}, {"code", code_label(i)}}, static_cast<double>(t.codes[i]));
    }
    if (t.reset) add_counter(upstream, {{"cluster", name}, {"code", "reset"}}, static_cast<double>(t.reset));
    if (t.connect_failure)
      add_counter(upstream, {{"cluster", name}, {"code", "connect_failure"}}, static_cast<double>(t.connect_failure));
    if (t.timeout) add_counter(upstream, {{"cluster", name}, {"code", "timeout"}}, static_cast<double>(t.timeout));
    add_gauge(up_conns, {{"cluster", name}}, static_cast<double>(t.connections));
    add_counter(retries, {{"cluster", name}}, static_cast<double>(t.retries));
    add_counter(budget, {{"cluster", name}}, static_cast<double>(t.budget_exhausted));
    for (size_t i = 0; i < 4; ++i)
      add_counter(overflow, {{"cluster", name}, {"limit", kLimits[i]}}, static_cast<double>(t.overflow[i]));
    add_counter(ejections, {{"cluster", name}}, static_cast<double>(t.ejections));
    add_gauge(ejected, {{"cluster", name}}, static_cast<double>(ejected_now[name]));
    // Only for a cluster that has been sent copies: a mirror target.
    if (t.mirror[0] || t.mirror[1] || t.mirror[2])
      for (size_t i = 0; i < 3; ++i)
        add_counter(mirror, {{"cluster", name}, {"result", kMirrorResults[i]}}, static_cast<double>(t.mirror[i]));
  }

  const ProcessStats& ps = registry_.process_;
  auto tls = family("tls_handshakes_total", "TLS handshakes.", MetricType::Counter);
  static constexpr const char* kDirections[] = {"inbound", "outbound"};
  static constexpr const char* kResults[] = {"ok", "failed"};
  const TlsCounters& tc = tls_counters();
  for (int d = 0; d < 2; ++d)
    for (int r = 0; r < 2; ++r)
      add_counter(tls, {{"direction", kDirections[d]}, {"result", kResults[r]}},
                  static_cast<double>(tc.handshakes[d][r].load(std::memory_order_relaxed)));
  auto resumed = family("tls_sessions_resumed_total",
                        "Successful TLS handshakes that resumed a session (no certificate exchange).",
                        MetricType::Counter);
  for (int d = 0; d < 2; ++d)
    add_counter(resumed, {{"direction", kDirections[d]}},
                static_cast<double>(tc.resumed[d].load(std::memory_order_relaxed)));
  auto reloads = family("policy_reloads_total", "Policy reloads, applied or rejected.", MetricType::Counter);
  add_counter(reloads, {{"result", "applied"}}, static_cast<double>(ps.policy_reloads_applied.load()));
  add_counter(reloads, {{"result", "rejected"}}, static_cast<double>(ps.policy_reloads_rejected.load()));
  auto rotations = family("identity_rotations_total",
                          "Changes of the identity files seen: applied, or rejected (the material in use stays).",
                          MetricType::Counter);
  add_counter(rotations, {{"result", "applied"}}, static_cast<double>(ps.identity_rotations_applied.load()));
  add_counter(rotations, {{"result", "rejected"}}, static_cast<double>(ps.identity_rotations_rejected.load()));

  auto taps = family("tap_events_total",
                     "Requests taps (GET /tap) matched: streamed to the tap, dropped because its reader was behind, "
                     "or over the tap's rate.",
                     MetricType::Counter);
  add_counter(taps, {{"result", "streamed"}}, static_cast<double>(ps.tap_sent.load()));
  add_counter(taps, {{"result", "dropped"}}, static_cast<double>(ps.tap_dropped.load()));
  add_counter(taps, {{"result", "over_rate"}}, static_cast<double>(ps.tap_limited.load()));
  auto tap_streams = family("tap_streams", "Taps (GET /tap) open.", MetricType::Gauge);
  add_gauge(tap_streams, {}, static_cast<double>(ps.tap_streams.load()));

  auto cert = family("cert_expiry_timestamp_seconds", "When the workload certificate and the CA expire (Unix time).",
                     MetricType::Gauge);
  auto policy_info = family("policy_info", "The running policy.", MetricType::Gauge);
  {
    std::lock_guard<std::mutex> lock(registry_.info_mutex_);
    for (const auto& [name, when] : registry_.cert_expiry_) add_gauge(cert, {{"cert", name}}, when);
    add_gauge(policy_info, {{"version", std::to_string(registry_.policy_version_)}, {"sha256", registry_.policy_sha256_}},
              1);
  }
  auto build = family("build_info", "The pilotfish build.", MetricType::Gauge);
  add_gauge(build, {{"version", PILOTFISH_VERSION}}, 1);

  const DescriptorBudget& fds = DescriptorBudget::process();
  auto fd_refused = family("descriptor_exhaustion_total",
                           "Connections refused for want of file descriptors: side=downstream, clients answered 503 "
                           "overloaded (or closed) at accept; side=upstream, connects not attempted.",
                           MetricType::Counter);
  add_counter(fd_refused, {{"side", "downstream"}}, static_cast<double>(fds.refused_accepts()));
  add_counter(fd_refused, {{"side", "upstream"}}, static_cast<double>(fds.refused_connects()));
  auto fd_use = family("connection_descriptors", "File descriptors held by connections (both sides).",
                       MetricType::Gauge);
  add_gauge(fd_use, {}, static_cast<double>(fds.in_use()));
  auto fd_limit = family("connection_descriptors_limit",
                         "File descriptors connections may hold: RLIMIT_NOFILE less what the process holds for "
                         "itself and a reserve.",
                         MetricType::Gauge);
  if (fds.limit() != INT64_MAX) add_gauge(fd_limit, {}, static_cast<double>(fds.limit()));

  for (auto* f : {&requests, &duration, &grpc, &faults, &mirror, &upstream, &up_conns, &down_conns, &down_total, &retries, &budget, &overflow,
                  &ejections, &ejected, &tls, &resumed, &authz, &auth_failures, &rate_limited, &cert, &reloads, &rotations, &policy_info, &build,
                  &fd_refused, &fd_use, &fd_limit, &taps, &tap_streams})
    out.push_back(std::move(*f));
  return out;
}

std::map<MetricsRegistry::RouteKey, MetricsRegistry::RouteSample> MetricsRegistry::route_samples() const {
  std::map<RouteKey, RouteSample> out;
  for (const auto& slot : workers_) {
    std::lock_guard<std::mutex> lock(slot->mutex);
    for (const auto& [name, l] : slot->stats.listeners) {
      std::lock_guard<std::mutex> routes_lock(l->mutex);
      for (const auto& [key, r] : l->routes) {
        RouteSample& s = out[{name, key.first, key.second}];
        s.count += r->count.load();
        for (size_t i = 500 - StatusCounts::kFirst; i <= StatusCounts::kSlots; ++i) s.errors += r->codes.slots[i].load();
        // A gRPC call that failed is an error whatever its HTTP status (200, as gRPC answers).
        for (size_t i = 1; i < r->grpc.size(); ++i) s.errors += r->grpc[i].load();
        for (size_t i = 0; i < s.buckets.size(); ++i) s.buckets[i] += r->buckets[i].load();
      }
    }
  }
  return out;
}

std::string MetricsRegistry::render() const {
  StatsCollectable collectable(*this);
  std::ostringstream text;
  prometheus::TextSerializer().Serialize(text, collectable.Collect());
  return text.str();
}

}  // namespace pilotfish
