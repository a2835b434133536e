// `pilotfish tap`: a sidecar's GET /tap, a line per request for a person at a terminal.
// Everything shown came from outside (paths, authorities, identities): it is printed with
// control characters escaped, so a request cannot move the cursor or recolour the terminal.

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include "json/json_reader.h"
#include "pilotfish/server.h"
#include "server/admin_client.h"

namespace pilotfish {

namespace {

constexpr size_t kMaxLine = 64 * 1024;

// `s` with C0 and C1 control characters and DEL as \xNN, C1 controls and the bidirectional
// overrides and isolates (U+202A..U+202E, U+2066..U+2069) as \uNNNN, for a terminal. A JSON
// line stays valid JSON (C0 and DEL are escaped in it already; \uNNNN is JSON's own escape).
std::string printable(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  char buf[8];
  for (size_t i = 0; i < s.size(); ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) {
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else if (c == 0xc2 && i + 1 < s.size() && static_cast<unsigned char>(s[i + 1]) >= 0x80 &&
               static_cast<unsigned char>(s[i + 1]) <= 0x9f) {
      std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned char>(s[i + 1]));
      out += buf;
      ++i;
    } else if (c == 0xe2 && i + 2 < s.size() && ((static_cast<unsigned char>(s[i + 1]) == 0x80 &&
                                                  static_cast<unsigned char>(s[i + 2]) >= 0xaa &&
                                                  static_cast<unsigned char>(s[i + 2]) <= 0xae) ||
                                                 (static_cast<unsigned char>(s[i + 1]) == 0x81 &&
                                                  static_cast<unsigned char>(s[i + 2]) >= 0xa6 &&
                                                  static_cast<unsigned char>(s[i + 2]) <= 0xa9))) {
      unsigned code = 0x2000 + ((static_cast<unsigned char>(s[i + 1]) & 0x3f) << 6) + (static_cast<unsigned char>(s[i + 2]) & 0x3f);
      std::snprintf(buf, sizeof buf, "\\u%04x", code);
      out += buf;
      i += 2;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

std::string text_of(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? printable(it->get<std::string>()) : std::string();
}

long integer_of(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_number_integer() ? it->get<long>() : 0;
}

struct Colours {
  bool on;
  const char* status(long code) const {
    if (!on) return "";
    if (code >= 200 && code < 300) return "\033[32m";
    if (code >= 300 && code < 400) return "\033[36m";
    if (code >= 400 && code < 500) return "\033[33m";
    return "\033[31m";  // 5xx, and 0: the client left before an answer
  }
  const char* dim() const { return on ? "\033[2m" : ""; }
  const char* reset() const { return on ? "\033[0m" : ""; }
};

// One event, for a person: false when the line is not one of the tap's.
bool print_event(std::string_view line, const Colours& c) {
  std::string error;
  auto doc = parse_json_strict(line, JsonLimits{kMaxLine, 4}, &error);
  if (!doc || !doc->is_object()) return false;
  const nlohmann::json& j = *doc;
  if (j.contains("dropped")) {
    std::fprintf(stdout, "%s... not shown: %ld dropped (this tap fell behind), %ld over its rate%s\n", c.dim(),
                 integer_of(j, "dropped"), integer_of(j, "over_rate"), c.reset());
    return true;
  }
  std::string time = text_of(j, "time");
  // "2026-12-06T15:04:05.123Z": the time of day
  std::string clock = time.size() >= 23 ? time.substr(11, 12) : time;
  long status = integer_of(j, "status");
  double seconds = 0;
  if (auto it = j.find("duration"); it != j.end() && it->is_number()) seconds = it->get<double>();
  std::string out = clock + "  " + text_of(j, "method") + " " + text_of(j, "authority") + text_of(j, "path");
  char numbers[64];
  std::snprintf(numbers, sizeof numbers, "  %s%ld%s %.1f ms", c.status(status), status, c.reset(), seconds * 1000);
  out += numbers;
  std::string route = text_of(j, "route"), cluster = text_of(j, "cluster"), endpoint = text_of(j, "endpoint");
  if (!route.empty()) out += "  route=" + route;
  if (!cluster.empty()) out += "  -> " + cluster + (endpoint.empty() ? "" : " " + endpoint);
  if (long attempts = integer_of(j, "attempts"); attempts > 1) out += " (" + std::to_string(attempts) + " attempts)";
  if (std::string peer = text_of(j, "peer"); !peer.empty()) out += "  peer=" + peer;
  if (std::string err = text_of(j, "error"); !err.empty()) out += std::string("  ") + c.status(500) + err + c.reset();
  if (std::string trace = text_of(j, "trace_id"); !trace.empty()) out += std::string("  ") + c.dim() + "trace=" + trace + c.reset();
  std::fprintf(stdout, "%s\n", out.c_str());
  return true;
}

}  // namespace

int tap(const SocketAddress& admin, const std::string& query, long count, bool json) {
  std::string why;
  std::string path = query.empty() ? "/tap" : "/tap?" + query;
  int fd = admin_request(admin, "GET", path, std::chrono::milliseconds(5000), &why);
  if (fd < 0) {
    std::fprintf(stderr, "pilotfish tap: GET /tap at %s: %s\n", admin.text.c_str(), why.c_str());
    return 1;
  }
  Colours colours{!json && ::isatty(STDOUT_FILENO) == 1 && std::getenv("NO_COLOR") == nullptr};
  std::string buffer;
  bool head_seen = false;
  long shown = 0;
  auto head_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  char chunk[16384];
  for (;;) {
    if (!head_seen && !wait_for(fd, POLLIN, head_deadline)) {
      std::fprintf(stderr, "pilotfish tap: %s did not answer GET /tap\n", admin.text.c_str());
      break;
    }
    if (head_seen) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, -1) < 0 && errno != EINTR) break;  // a tap waits for traffic as long as it takes
    }
    ssize_t n = ::recv(fd, chunk, sizeof chunk, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (n <= 0) {
      if (head_seen) std::fprintf(stderr, "pilotfish tap: %s ended the tap\n", admin.text.c_str());
      break;
    }
    buffer.append(chunk, static_cast<size_t>(n));
    if (!head_seen) {
      size_t end = buffer.find("\r\n\r\n");
      if (end == std::string::npos) {
        if (buffer.size() > kMaxLine) break;
        continue;
      }
      int status = buffer.size() >= 12 && buffer.compare(0, 5, "HTTP/") == 0 ? std::atoi(buffer.c_str() + 9) : 0;
      if (status != 200) {
        // The refusal's reason (a line of pilotfish's own text), read to the close.
        std::string body = buffer.substr(end + 4);
        while (body.size() < 4096 && wait_for(fd, POLLIN, head_deadline) && (n = ::recv(fd, chunk, sizeof chunk, 0)) > 0)
          body.append(chunk, static_cast<size_t>(n));
        std::fprintf(stderr, "pilotfish tap: GET /tap at %s answered %d: %s", admin.text.c_str(), status,
                     printable(body.substr(0, 4096)).c_str());
        if (body.empty() || body.back() != '\n') std::fputc('\n', stderr);
        ::close(fd);
        return 1;
      }
      head_seen = true;
      buffer.erase(0, end + 4);
    }
    size_t start = 0;
    for (size_t nl; (nl = buffer.find('\n', start)) != std::string::npos; start = nl + 1) {
      std::string_view line(buffer.data() + start, nl - start);
      bool request = !line.starts_with("{\"dropped\":");  // the tap's count of what it left out
      if (json)
        std::fprintf(stdout, "%s\n", printable(line).c_str());
      else if (!print_event(line, colours))
        std::fprintf(stdout, "(a line the tap did not understand)\n");
      if (request && count > 0 && ++shown >= count) {
        std::fflush(stdout);
        ::close(fd);
        return 0;
      }
    }
    buffer.erase(0, start);
    std::fflush(stdout);
    if (buffer.size() > kMaxLine) break;  // no line is this long
  }
  ::close(fd);
  return 1;
}

}  // namespace pilotfish
