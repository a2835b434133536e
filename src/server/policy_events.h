#pragma once
// The policy event log: every policy the process applied or rejected, as one JSON object each,
// kept in memory for GET /policy/history and appended as JSON lines to the history file, so an
// operator can tell what the sidecar ran at any moment and what changed when.

#include <cstdint>
#include <ctime>
#include <deque>
#include <string>
#include <vector>

namespace pilotfish {

struct PolicyEvent {
  int version = 0;          // the applied-policy counter after this event
  int64_t time_ms = 0;      // Unix time in milliseconds
  std::string trigger;      // startup | file | sighup | admin
  std::string sha256;       // of the file that was read
  std::string outcome;      // applied | rejected
  std::string changes_json; // diff_to_json() of an applied reload; empty for startup/rejected
  std::vector<std::string> errors;    // rejected: FILE:LINE:COL: message
  std::vector<std::string> warnings;  // applied: what the loader warned about, what needs a restart

  std::string to_json() const;
};

std::string iso_time(std::time_t t);
// 2026-11-26T09:08:10.335Z
std::string iso_time_ms(int64_t unix_ms);
int64_t unix_time_ms();

class PolicyHistory {
 public:
  static constexpr size_t kMaxEvents = 1000;  // in memory; the file keeps every event

  // "" = no file. The path may change with a reload.
  void set_path(std::string path) { path_ = std::move(path); }
  const std::string& path() const { return path_; }
  void record(const PolicyEvent& event);
  // {"events":[...]} oldest first.
  std::string to_json() const;
  // The last event that was not the startup one, or "null".
  const std::string& last_reload_json() const { return last_reload_; }

 private:
  std::string path_;
  std::deque<std::string> events_;
  std::string last_reload_ = "null";
  bool write_failed_ = false;
};

}  // namespace pilotfish
