#pragma once
// Live taps (GET /tap on the admin listener): each request's summary, as the access log has it,
// streamed as JSON lines to the operators watching, filtered by each tap's own filters.
//
// Workers publish as requests end; the admin loop takes what each tap gathered and writes it
// out. A tap never slows the data path: what a tap holds is bounded (kTapQueueBytes), and an
// event that would pass the bound, or the tap's rate, is dropped and counted, never waited for.
// With no tap open a worker pays one relaxed atomic load per request (TapHub::active).
//
// Never in a line: bodies, headers (authorization, cookie and every other), the query string.

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "log/access_log.h"
#include "metrics/stats.h"

namespace pilotfish {

// What one tap lets through. An absent field matches every request.
struct TapFilter {
  std::optional<std::string> listener, route, cluster, method;
  std::string path_prefix;
  int status_class = 0;  // 1..5 (status=5xx), or 0
  int status = 0;        // an exact code (status=503), or 0
  uint32_t rate = 100;   // events a second, at most; a burst of one second's worth

  bool matches(const AccessLogEntry& e) const;
};

constexpr uint32_t kTapMaxRate = 10'000;
constexpr size_t kMaxTaps = 8;
// Bytes of lines a tap holds for its reader before new events are dropped.
constexpr size_t kTapQueueBytes = 256 * 1024;

// The query of GET /tap ("listener=a&status=5xx&rate=10", without '?'): values percent-decoded;
// an unknown or repeated key, or a bad value, is an error (a fixed text naming the key).
bool parse_tap_query(std::string_view query, TapFilter* out, std::string* error);

class TapHub {
 public:
  explicit TapHub(ProcessStats& stats) : stats_(stats) {}

  struct Tap {
    explicit Tap(TapFilter f) : filter(std::move(f)) {}
    TapFilter filter;
    std::string lines;      // gathered, not yet taken
    uint64_t dropped = 0;   // since the last take: no room (the reader is behind)
    uint64_t limited = 0;   // since the last take: over the tap's rate
    double tokens = 0;
    uint64_t refilled_ns = 0;
  };

  // True while some tap is open: the one check a worker makes per request.
  bool active() const { return open_.load(std::memory_order_relaxed) != 0; }
  size_t open_count() const { return static_cast<size_t>(open_.load(std::memory_order_relaxed)); }

  // A new tap, or null when kMaxTaps are open.
  std::shared_ptr<Tap> open(TapFilter filter);
  void close(const std::shared_ptr<Tap>& tap);

  // A request ended (any worker's thread): a line for every open tap it matches. `cluster` and
  // `peer` (the client's identity, "" without mTLS) are the entry's too.
  void publish(const AccessLogEntry& e);

  // What `tap` gathered since the last take (admin loop): its lines (JSON, one per line), then,
  // when some were dropped or over its rate since, a line saying how many.
  void take(Tap& tap, std::string* out);

 private:
  ProcessStats& stats_;
  std::mutex mutex_;
  std::vector<std::shared_ptr<Tap>> taps_;
  std::atomic<int> open_{0};
};

// One event as /tap writes it (without its newline); for tests and the tap itself.
void format_tap_event(std::string& out, const AccessLogEntry& e);

}  // namespace pilotfish
