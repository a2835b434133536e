#include "log/access_log.h"

#include <fcntl.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>

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

void AccessLogBuffer::init(uv_loop_t* loop, AccessLogWriter* writer) {
  writer_ = writer;
  uv_timer_init(loop, &timer_);
  timer_.data = this;
  initialized_ = true;
}

void append_json_string(std::string& out, std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  out += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20 || c >= 0x7f) {
          out += "\\u00";
          out += kHex[c >> 4];
          out += kHex[c & 15];
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += '"';
}

void AccessLogBuffer::record(const AccessLogEntry& e) {
  if (!enabled()) return;
  timeval tv;
  gettimeofday(&tv, nullptr);
  tm t;
  gmtime_r(&tv.tv_sec, &t);
  char ts[64];
  snprintf(ts, sizeof ts, "{\"time\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03dZ\"", t.tm_year + 1900, t.tm_mon + 1,
           t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, static_cast<int>(tv.tv_usec / 1000));
  buffer_ += ts;
  buffer_ += ",\"listener\":";
  append_json_string(buffer_, e.listener);
  buffer_ += ",\"method\":";
  append_json_string(buffer_, e.method);
  buffer_ += ",\"authority\":";
  append_json_string(buffer_, e.authority);
  buffer_ += ",\"path\":";
  append_json_string(buffer_, e.path);
  char nums[160];
  snprintf(nums, sizeof nums, ",\"status\":%d,\"duration\":%.6f,\"bytes_in\":%llu,\"bytes_out\":%llu,\"attempts\":%d",
           e.status, e.duration_seconds, static_cast<unsigned long long>(e.bytes_in),
           static_cast<unsigned long long>(e.bytes_out), e.attempts);
  buffer_ += nums;
  buffer_ += ",\"upstream\":";
  append_json_string(buffer_, e.upstream);
  buffer_ += ",\"request_id\":";
  append_json_string(buffer_, e.request_id);
  buffer_ += ",\"error\":";
  append_json_string(buffer_, e.error);
  buffer_ += "}\n";
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
