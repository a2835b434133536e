#include "log/access_log.h"

#include <fcntl.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <ctime>

#include "json/json_writer.h"

namespace pilotfish {

namespace {
constexpr size_t kFlushBytes = 32 * 1024;
constexpr uint64_t kFlushMs = 200;
}  // namespace

AccessLogWriter::~AccessLogWriter() {
  if (fd_ >= 0 && config_.target == AccessLogTarget::file) ::close(fd_);
}

bool AccessLogWriter::open(std::string* error) {
  switch (config_.target) {
    case AccessLogTarget::off: return true;
    case AccessLogTarget::stdout_stream: fd_ = STDOUT_FILENO; return true;
    case AccessLogTarget::file:
      fd_ = ::open(config_.path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
      if (fd_ < 0) {
        *error = "access_log: cannot open " + config_.path + ": " + std::strerror(errno);
        return false;
      }
      return true;
  }
  return true;
}

bool AccessLogWriter::reopen(std::string* error) {
  if (config_.target != AccessLogTarget::file) return true;
  int fd = ::open(config_.path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) {
    *error = "access_log: cannot reopen " + config_.path + ": " + std::strerror(errno);
    return false;
  }
  // dup2 replaces the descriptor atomically: a worker's write goes to the old or the new file.
  ::dup3(fd, fd_, O_CLOEXEC);
  ::close(fd);
  return true;
}

void AccessLogWriter::write(std::string_view batch) const {
  const char* p = batch.data();
  size_t left = batch.size();
  while (left > 0) {
    ssize_t n = ::write(fd_, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;  // a full disk must not stop the proxy; the lines are lost
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
}

size_t utc_time_ms(char (&out)[32]) {
  timeval tv;
  gettimeofday(&tv, nullptr);
  // The date and time to the second, made once a second per thread: a line's time is then three
  // digits, not a gmtime and a printf.
  thread_local time_t cached_second = -1;
  thread_local char prefix[28];
  thread_local size_t prefix_length = 0;
  if (tv.tv_sec != cached_second) {
    tm t;
    gmtime_r(&tv.tv_sec, &t);
    int n = snprintf(prefix, sizeof prefix, "%04d-%02d-%02dT%02d:%02d:%02d.", t.tm_year + 1900, t.tm_mon + 1,
                     t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec);
    prefix_length = n > 0 && static_cast<size_t>(n) < sizeof prefix ? static_cast<size_t>(n) : 0;
    cached_second = tv.tv_sec;
  }
  std::memcpy(out, prefix, prefix_length);
  auto ms = static_cast<unsigned>(tv.tv_usec / 1000);
  out[prefix_length] = static_cast<char>('0' + ms / 100);
  out[prefix_length + 1] = static_cast<char>('0' + ms / 10 % 10);
  out[prefix_length + 2] = static_cast<char>('0' + ms % 10);
  out[prefix_length + 3] = 'Z';
  return prefix_length + 4;
}

size_t seconds_with_micros(char (&out)[24], double seconds) {
  uint64_t us = seconds > 0 ? static_cast<uint64_t>(seconds * 1e6 + 0.5) : 0;
  auto [end, ec] = std::to_chars(out, out + 16, us / 1'000'000);
  char* p = ec == std::errc() ? end : out;
  *p++ = '.';
  uint64_t frac = us % 1'000'000;
  for (int i = 5; i >= 0; --i, frac /= 10) p[i] = static_cast<char>('0' + frac % 10);
  return static_cast<size_t>(p + 6 - out);
}

void AccessLogBuffer::init(uv_loop_t* loop, AccessLogWriter* writer) {
  writer_ = writer;
  uv_timer_init(loop, &timer_);
  timer_.data = this;
  initialized_ = true;
}

void write_request_fields(JsonWriter& w, const AccessLogEntry& e) {
  char ts[32];
  size_t n = utc_time_ms(ts);
  char duration[24];
  size_t d = seconds_with_micros(duration, e.duration_seconds);
  w.key("time").str({ts, n});
  w.key("listener").str(e.listener).key("route").str(e.route).key("method").str(e.method).key("authority").str(e.authority);
  w.key("path").str(e.path).key("status").integer(e.status);
  w.key("duration").raw({duration, d});  // microseconds, not %.17g
}

void AccessLogBuffer::record(const AccessLogEntry& e) {
  if (!enabled()) return;
  JsonWriter w(buffer_);
  w.begin_object();
  write_request_fields(w, e);
  w.key("bytes_in").integer(static_cast<int64_t>(e.bytes_in)).key("bytes_out").integer(static_cast<int64_t>(e.bytes_out));
  w.key("attempts").integer(e.attempts);
  w.key("upstream").str(e.upstream).key("request_id").str(e.request_id).key("trace_id").str(e.trace_id);
  w.key("error").str(e.error);
  w.end_object();
  buffer_ += '\n';
  if (buffer_.size() >= kFlushBytes) {
    flush();
  } else if (!timer_armed_) {
    timer_armed_ = true;
    uv_timer_start(&timer_, timer_cb, kFlushMs, 0);
  }
}

void AccessLogBuffer::timer_cb(uv_timer_t* t) {
  auto* self = static_cast<AccessLogBuffer*>(t->data);
  self->timer_armed_ = false;
  self->flush();
}

void AccessLogBuffer::flush() {
  if (buffer_.empty() || writer_ == nullptr) return;
  writer_->write(buffer_);
  buffer_.clear();
}

void AccessLogBuffer::close() {
  flush();
  if (initialized_) {
    uv_timer_stop(&timer_);
    uv_close(reinterpret_cast<uv_handle_t*>(&timer_), nullptr);
    initialized_ = false;
  }
}

}  // namespace pilotfish
