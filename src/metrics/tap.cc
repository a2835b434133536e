#include "metrics/tap.h"

#include <uv.h>

#include <algorithm>
#include <array>
#include <charconv>

#include "json/json_writer.h"

namespace pilotfish {

namespace {

constexpr size_t kMaxFilterValue = 1024;

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// %XX decoded ('+' stays '+': a path prefix may hold one); false for a malformed escape.
bool percent_decode(std::string_view in, std::string* out) {
  out->clear();
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      *out += in[i];
      continue;
    }
    if (i + 2 >= in.size()) return false;
    int hi = hex_digit(in[i + 1]), lo = hex_digit(in[i + 2]);
    if (hi < 0 || lo < 0) return false;
    *out += static_cast<char>(hi * 16 + lo);
    i += 2;
  }
  return true;
}

bool status_matches(const TapFilter& f, int status) {
  if (f.status) return status == f.status;
  if (f.status_class) return status / 100 == f.status_class;
  return true;
}

}  // namespace

bool TapFilter::matches(const AccessLogEntry& e) const {
  if (listener && e.listener != *listener) return false;
  if (route && e.route != *route) return false;
  if (cluster && e.cluster != *cluster) return false;
  if (method && e.method != *method) return false;
  if (!status_matches(*this, e.status)) return false;
  return path_prefix.empty() || e.path.substr(0, path_prefix.size()) == path_prefix;
}

bool parse_tap_query(std::string_view query, TapFilter* out, std::string* error) {
  *out = TapFilter{};
  bool seen_status = false, seen_rate = false, seen_prefix = false;
  while (!query.empty()) {
    size_t amp = query.find('&');
    std::string_view pair = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    if (pair.empty()) continue;
    size_t eq = pair.find('=');
    std::string_view key = pair.substr(0, eq);
    std::string value;
    if (eq == std::string_view::npos || !percent_decode(pair.substr(eq + 1), &value)) {
      *error = "each filter is key=value, percent-encoded";
      return false;
    }
    if (value.size() > kMaxFilterValue) {
      *error = "a filter's value is longer than 1024 bytes";
      return false;
    }
    std::optional<std::string>* named = key == "listener" ? &out->listener
                                        : key == "route"  ? &out->route
                                        : key == "cluster" ? &out->cluster
                                        : key == "method" ? &out->method
                                                          : nullptr;
    bool repeated = false;
    if (named) {
      repeated = named->has_value();
      *named = std::move(value);
    } else if (key == "path_prefix") {
      repeated = seen_prefix;
      seen_prefix = true;
      if (!value.empty() && value[0] != '/') {
        *error = "path_prefix starts with '/'";
        return false;
      }
      out->path_prefix = std::move(value);
    } else if (key == "status") {
      repeated = seen_status;
      seen_status = true;
      bool ok = value.size() == 3;
      if (ok && value[1] == 'x' && value[2] == 'x') {
        ok = value[0] >= '1' && value[0] <= '5';
        out->status_class = value[0] - '0';
      } else if (ok) {
        auto [end, ec] = std::from_chars(value.data(), value.data() + 3, out->status);
        ok = ec == std::errc() && end == value.data() + 3 && out->status >= 100 && out->status <= 599;
      }
      if (!ok) {
        *error = "status is a class (1xx to 5xx) or a code (100 to 599)";
        return false;
      }
    } else if (key == "rate") {
      repeated = seen_rate;
      seen_rate = true;
      uint32_t rate = 0;
      auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), rate);
      if (value.empty() || ec != std::errc() || end != value.data() + value.size() || rate == 0 || rate > kTapMaxRate) {
        *error = "rate is events a second, 1 to 10000";
        return false;
      }
      out->rate = rate;
    } else {
      *error = "the filters are listener, route, cluster, status, method, path_prefix and rate";
      return false;
    }
    if (repeated) {
      *error = "a filter is given twice: " + std::string(key);
      return false;
    }
  }
  return true;
}

void format_tap_event(std::string& out, const AccessLogEntry& e) {
  JsonWriter w(out);
  w.begin_object();
  write_request_fields(w, e);
  w.key("cluster").str(e.cluster).key("endpoint").str(e.upstream).key("attempts").integer(e.attempts);
  w.key("peer").str(e.peer).key("error").str(e.error);
  w.key("trace_id").str(e.trace_id);  // not the request id: a client may send its own
  w.end_object();
}

std::shared_ptr<TapHub::Tap> TapHub::open(TapFilter filter) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (taps_.size() >= kMaxTaps) return nullptr;
  auto tap = std::make_shared<Tap>(std::move(filter));
  tap->tokens = tap->filter.rate;
  tap->refilled_ns = uv_hrtime();
  taps_.push_back(tap);
  stats_.tap_streams.add(1);
  open_.store(static_cast<int>(taps_.size()), std::memory_order_relaxed);
  return tap;
}

void TapHub::close(const std::shared_ptr<Tap>& tap) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = std::find(taps_.begin(), taps_.end(), tap);
  if (it == taps_.end()) return;
  taps_.erase(it);
  stats_.tap_streams.add(-1);
  open_.store(static_cast<int>(taps_.size()), std::memory_order_relaxed);
}

void TapHub::publish(const AccessLogEntry& e) {
  // Which taps take it (its filters, its rate), under the lock; then the line is formatted
  // outside it, only when some tap takes it; then queued where there is room. The other workers
  // and the admin loop take the lock too: it is held for no formatting and no copy but the line.
  std::array<std::shared_ptr<Tap>, kMaxTaps> takers;
  size_t n = 0;
  uint64_t now = uv_hrtime();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& tap : taps_) {
      Tap& t = *tap;
      if (!t.filter.matches(e)) continue;
      double rate = t.filter.rate;
      t.tokens = std::min(rate, t.tokens + static_cast<double>(now - std::min(now, t.refilled_ns)) * rate / 1e9);
      t.refilled_ns = now;
      if (t.tokens < 1) {
        ++t.limited;
        stats_.tap_limited.add();
        continue;
      }
      t.tokens -= 1;
      takers[n++] = tap;
    }
  }
  if (n == 0) return;
  thread_local std::string line;
  line.clear();
  format_tap_event(line, e);
  line += '\n';
  std::lock_guard<std::mutex> lock(mutex_);
  for (size_t i = 0; i < n; ++i) {
    Tap& t = *takers[i];  // closed meanwhile: its lines go with it
    if (t.lines.size() + line.size() > kTapQueueBytes) {
      ++t.dropped;
      stats_.tap_dropped.add();
      continue;
    }
    t.lines += line;
    stats_.tap_sent.add();
  }
}

void TapHub::take(Tap& tap, std::string* out) {
  std::string lines;
  uint64_t dropped, limited;
  {
    // Swapped out under the lock, copied after: a worker waits for no copy.
    std::lock_guard<std::mutex> lock(mutex_);
    lines.swap(tap.lines);
    dropped = tap.dropped;
    limited = tap.limited;
    tap.dropped = tap.limited = 0;
  }
  *out += lines;
  if (dropped == 0 && limited == 0) return;
  JsonWriter w(*out);
  w.begin_object();
  w.key("dropped").integer(dropped).key("over_rate").integer(limited);
  w.end_object();
  *out += '\n';
}

}  // namespace pilotfish
