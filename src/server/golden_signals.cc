#include "server/golden_signals.h"

#include <algorithm>
#include <cstdio>

#include "json/json_writer.h"

namespace pilotfish {

namespace {

constexpr uint64_t kKeepMs = 61'000;

using Counts = MetricsRegistry::RouteSample;

// What a window saw: `now` less `then`, or `now` whole when the counters started again from zero
// since `then` (a route or cluster removed by a reload and added back), as Prometheus's rate()
// takes a counter reset.
Counts minus(const Counts& now, const Counts& then) {
  bool reset = now.count < then.count || now.errors < then.errors;
  for (size_t i = 0; i < now.buckets.size(); ++i) reset = reset || now.buckets[i] < then.buckets[i];
  if (reset) return now;
  Counts d;
  d.count = now.count - then.count;
  d.errors = now.errors - then.errors;
  for (size_t i = 0; i < d.buckets.size(); ++i) d.buckets[i] = now.buckets[i] - then.buckets[i];
  return d;
}

void write_window(JsonWriter& w, const GoldenSignals::Window& win) {
  auto num = [&](const char* key, double v) {
    w.key(key);
    if (v < 0)
      w.raw("null");
    else
      w.num(v);
  };
  w.begin_object();
  w.key("seconds").num(win.seconds).key("requests").integer(static_cast<int64_t>(win.requests)).key("rate").num(win.rate);
  num("success_rate", win.success_rate);
  num("p50_ms", win.p50_ms);
  num("p95_ms", win.p95_ms);
  num("p99_ms", win.p99_ms);
  w.end_object();
}

}  // namespace

double bucket_quantile(double q, const std::array<uint64_t, kLatencyBuckets.size()>& buckets, uint64_t count) {
  if (count == 0) return -1;
  double rank = q * static_cast<double>(count);
  uint64_t below = 0;
  for (size_t i = 0; i < buckets.size(); ++i) {
    if (static_cast<double>(below + buckets[i]) >= rank && buckets[i] > 0) {
      double lower = i == 0 ? 0 : kLatencyBuckets[i - 1];
      double upper = kLatencyBuckets[i];
      double into = (rank - static_cast<double>(below)) / static_cast<double>(buckets[i]);
      return (lower + (upper - lower) * std::clamp(into, 0.0, 1.0)) * 1000;
    }
    below += buckets[i];
  }
  return kLatencyBuckets.back() * 1000;  // in the +Inf bucket: the top finite bound
}

void GoldenSignals::add_sample(uint64_t now_ms, std::map<MetricsRegistry::RouteKey, Counts> routes) {
  samples_.push_back({now_ms, std::move(routes)});
  while (samples_.size() > 2 && now_ms - samples_[1].ms >= kKeepMs) samples_.pop_front();
}

GoldenSignals::Window GoldenSignals::window(const MetricsRegistry::RouteKey& key, uint64_t span_ms) const {
  Window win;
  if (samples_.size() < 2) return win;
  const auto& newest = samples_.back();
  // The newest sample at least `span_ms` older, else the oldest there is.
  const auto* base = &samples_.front();
  for (auto it = samples_.rbegin() + 1; it != samples_.rend(); ++it) {
    if (newest.ms - it->ms >= span_ms) {
      base = &*it;
      break;
    }
  }
  win.seconds = static_cast<double>(newest.ms - base->ms) / 1000;
  auto now = newest.routes.find(key);
  if (now == newest.routes.end() || win.seconds <= 0) return win;
  auto then = base->routes.find(key);
  Counts d = then == base->routes.end() ? now->second : minus(now->second, then->second);
  win.requests = d.count;
  win.rate = static_cast<double>(d.count) / win.seconds;
  if (d.count > 0) {
    win.success_rate = static_cast<double>(d.count - std::min(d.errors, d.count)) / static_cast<double>(d.count);
    win.p50_ms = bucket_quantile(0.50, d.buckets, d.count);
    win.p95_ms = bucket_quantile(0.95, d.buckets, d.count);
    win.p99_ms = bucket_quantile(0.99, d.buckets, d.count);
  }
  return win;
}

std::vector<GoldenSignals::Row> GoldenSignals::rows() const {
  std::vector<Row> out;
  if (samples_.empty()) return out;
  for (const auto& [key, sample] : samples_.back().routes) {
    (void)sample;
    out.push_back({key, window(key, 10'000), window(key, 60'000)});
  }
  std::stable_sort(out.begin(), out.end(), [](const Row& a, const Row& b) {
    return a.last_1m.requests != b.last_1m.requests ? a.last_1m.requests > b.last_1m.requests
                                                    : a.last_10s.requests > b.last_10s.requests;
  });
  return out;
}

std::string GoldenSignals::json() const {
  std::string body;
  JsonWriter w(body);
  w.begin_object().key("routes").begin_array();
  for (const Row& r : rows()) {
    const auto& [listener, route, cluster] = r.key;
    w.begin_object().key("listener").str(listener).key("route").str(route).key("cluster").str(cluster);
    w.key("10s");
    write_window(w, r.last_10s);
    w.key("1m");
    write_window(w, r.last_1m);
    w.end_object();
  }
  w.end_array().end_object();
  body += '\n';
  return body;
}

std::string GoldenSignals::table() const {
  std::string out;
  char line[512];
  std::snprintf(line, sizeof line, "%-14s %-16s %-20s %9s %8s %10s %10s %10s %9s %8s\n", "LISTENER", "ROUTE", "CLUSTER",
                "RPS(10s)", "OK(10s)", "P50ms(10s)", "P95ms(10s)", "P99ms(10s)", "RPS(1m)", "OK(1m)");
  out += line;
  auto pct = [](double v, char* buf, size_t n) {
    if (v < 0)
      std::snprintf(buf, n, "-");
    else
      std::snprintf(buf, n, "%.1f%%", v * 100);
  };
  auto ms = [](double v, char* buf, size_t n) {
    if (v < 0)
      std::snprintf(buf, n, "-");
    else
      std::snprintf(buf, n, "%.2f", v);
  };
  for (const Row& r : rows()) {
    const auto& [listener, route, cluster] = r.key;
    char ok10[16], ok60[16], p50[16], p95[16], p99[16];
    pct(r.last_10s.success_rate, ok10, sizeof ok10);
    pct(r.last_1m.success_rate, ok60, sizeof ok60);
    ms(r.last_10s.p50_ms, p50, sizeof p50);
    ms(r.last_10s.p95_ms, p95, sizeof p95);
    ms(r.last_10s.p99_ms, p99, sizeof p99);
    // Names are the policy's (listener and route names are bounded to letters, digits and -_.;
    // cluster names are printed as the policy has them, cut to the column).
    // A name longer than its column ends in '~' where it was cut; an empty one is '-'.
    auto cell = [](const std::string& name, size_t width) {
      if (name.empty()) return std::string("-");
      return name.size() <= width ? name : name.substr(0, width - 1) + "~";
    };
    std::snprintf(line, sizeof line, "%-14s %-16s %-20s %9.1f %8s %10s %10s %10s %9.1f %8s\n", cell(listener, 14).c_str(),
                  cell(route, 16).c_str(), cell(cluster, 20).c_str(), r.last_10s.rate, ok10, p50, p95, p99,
                  r.last_1m.rate, ok60);
    out += line;
  }
  return out;
}

}  // namespace pilotfish
