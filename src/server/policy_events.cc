#include "server/policy_events.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>

#include "log/logger.h"
#include "policy/policy_json.h"

namespace pilotfish {

std::string iso_time(std::time_t t) {
  std::tm tm;
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string iso_time_ms(int64_t unix_ms) {
  std::string s = iso_time(static_cast<std::time_t>(unix_ms / 1000));
  char ms[8];
  std::snprintf(ms, sizeof ms, ".%03dZ", static_cast<int>(unix_ms % 1000));
  s.pop_back();  // the Z
  return s + ms;
}

int64_t unix_time_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string PolicyEvent::to_json() const {
  std::string out;
  JsonWriter w(out);
  w.begin_object();
  w.key("version").integer(static_cast<int64_t>(version)).key("time").str(iso_time_ms(time_ms));
  w.key("trigger").str(trigger).key("sha256").str(sha256).key("outcome").str(outcome);
  if (!changes_json.empty()) w.key("changes").raw(changes_json);
  if (!errors.empty()) w.key("errors").strings(errors);
  if (!warnings.empty()) w.key("warnings").strings(warnings);
  w.end_object();
  return out;
}

void PolicyHistory::record(const PolicyEvent& event) {
  std::string json = event.to_json();
  if (event.trigger != "startup") last_reload_ = json;
  events_.push_back(json);
  if (events_.size() > kMaxEvents) events_.pop_front();
  if (path_.empty()) return;
  // Opened per event: a history file that was rotated or removed is simply started again.
  int fd = ::open(path_.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  bool ok = fd >= 0;
  if (ok) {
    json += '\n';
    ok = ::write(fd, json.data(), json.size()) == static_cast<ssize_t>(json.size());
    ::close(fd);
  }
  if (!ok && !write_failed_) {
    log_warn("policy history " + path_ + ": " + std::strerror(errno) +
             "; events are kept in memory only (GET /policy/history)");
  }
  write_failed_ = !ok;
}

std::string PolicyHistory::to_json() const {
  std::string out;
  JsonWriter w(out);
  w.begin_object().key("events").begin_array();
  for (const auto& e : events_) w.raw(e);
  w.end_array().end_object();
  out += '\n';
  return out;
}

}  // namespace pilotfish
