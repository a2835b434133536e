#pragma once
// Operational log lines on stderr ("2026-11-26T06:10:00.123Z info message"). Thread-safe; not
// for per-request records (those go to the access log, batched per worker).

#include <atomic>
#include <string>
#include <string_view>

#include "pilotfish/policy.h"

namespace pilotfish {

void set_log_level(LogLevel level);
bool log_enabled(LogLevel level);
void log_line(LogLevel level, const std::string& message);

inline void log_debug(const std::string& m) { if (log_enabled(LogLevel::debug)) log_line(LogLevel::debug, m); }
inline void log_info(const std::string& m) { if (log_enabled(LogLevel::info)) log_line(LogLevel::info, m); }
inline void log_warn(const std::string& m) { if (log_enabled(LogLevel::warn)) log_line(LogLevel::warn, m); }
inline void log_error(const std::string& m) { log_line(LogLevel::error, m); }

// Appends `text` for a log line: valid UTF-8 as it is; control characters, DEL, bytes that are not
// UTF-8 and the backslash itself as \xNN or \\, so that nothing from outside can end a line or
// fake another one.
void append_log_safe(std::string& out, std::string_view text);

// "2026-11-26T06:10:00.123Z"
std::string utc_timestamp();

}  // namespace pilotfish
