#pragma once
// One JSON line per request. Each worker collects lines in its own buffer and writes them in
// batches (when the buffer passes 32 KiB, or every 200 ms), never a system call per request.
// The file is reopened on SIGUSR1 for log rotation: the new file is dup2()ed over the old
// descriptor, so workers never see a closed descriptor and need no lock.

#include <uv.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "pilotfish/policy.h"

namespace pilotfish {

class AccessLogWriter {
 public:
  explicit AccessLogWriter(AccessLog config) : config_(std::move(config)) {}
  ~AccessLogWriter();
  // Opens the target; false with *error set when a file cannot be opened.
  bool open(std::string* error);
  // Reopens a file target (log rotation). Safe while workers write.
  bool reopen(std::string* error);
  bool enabled() const { return config_.target != AccessLogTarget::off; }
  void write(std::string_view batch) const;

 private:
  AccessLog config_;
  int fd_ = -1;
};

struct AccessLogEntry {
  std::string_view listener;
  std::string_view route;  // its name; "" when unnamed or none matched
  std::string_view method;
  std::string_view authority;
  std::string_view path;
  int status = 0;
  double duration_seconds = 0;
  std::string_view upstream;
  uint64_t bytes_in = 0;
  uint64_t bytes_out = 0;
  int attempts = 0;
  std::string_view error;
  std::string_view request_id;
  std::string_view trace_id;  // W3C trace context's, "" when the request never got that far
  // For taps (metrics/tap.h), not the access log: the cluster's name ("" for none) and the client's
  // identity ("" without mTLS).
  std::string_view cluster;
  std::string_view peer;
};

// Now, as "2026-12-06T15:04:05.123Z" (UTC, milliseconds): its length.
size_t utc_time_ms(char (&out)[32]);
// `seconds` as "0.012345" (microseconds, as printf's %.6f): its length.
size_t seconds_with_micros(char (&out)[24], double seconds);

class JsonWriter;
// The fields an access-log line and a tap's line (metrics/tap.h) both begin with: time (now),
// listener, route, method, authority, path, status, duration. `w` is inside the line's object.
void write_request_fields(JsonWriter& w, const AccessLogEntry& e);

class AccessLogBuffer {
 public:
  void init(uv_loop_t* loop, AccessLogWriter* writer);
  bool enabled() const { return writer_ != nullptr && writer_->enabled(); }
  void record(const AccessLogEntry& entry);
  void flush();
  void close();

 private:
  static void timer_cb(uv_timer_t* t);
  AccessLogWriter* writer_ = nullptr;
  uv_timer_t timer_;
  bool timer_armed_ = false;
  bool initialized_ = false;
  std::string buffer_;
};

}  // namespace pilotfish
