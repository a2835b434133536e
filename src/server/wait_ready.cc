// `pilotfish wait-ready`: polls a sidecar's GET /ready until it answers 200. An app container
// runs it before its own process so that the app starts after its sidecar can carry traffic.
// `pilotfish drain` and `pilotfish top` are the same kind of small admin client.

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>

#include "pilotfish/server.h"
#include "server/admin_client.h"

namespace pilotfish {

namespace {

using Clock = std::chrono::steady_clock;

}  // namespace

int admin_request(const SocketAddress& admin, const char* method, const std::string& path,
                  std::chrono::milliseconds budget, std::string* why) {
  int fd = ::socket(admin.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *why = std::strerror(errno);
    return -1;
  }
  auto deadline = Clock::now() + budget;
  std::string request = std::string(method) + " " + path + " HTTP/1.1\r\nContent-Length: 0\r\nHost: " + admin.text + "\r\nConnection: close\r\n\r\n";
  if (::connect(fd, admin.sa(), admin.length) != 0 && errno != EINPROGRESS) {
    *why = std::strerror(errno);
  } else if (!wait_for(fd, POLLOUT, deadline)) {
    *why = "connect timed out";
  } else {
    int err = 0;
    socklen_t len = sizeof err;
    ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0)
      *why = std::strerror(err);
    else if (::send(fd, request.data(), request.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(request.size()))
      *why = std::strerror(errno);
    else
      return fd;
  }
  ::close(fd);
  return -1;
}

bool wait_for(int fd, short events, std::chrono::steady_clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  if (left <= 0) return false;
  pollfd p{fd, events, 0};
  return ::poll(&p, 1, static_cast<int>(left)) == 1;
}

namespace {

// One request (`method` `path`, no body), bounded by `budget`. Returns the status code, or 0
// with *why set; with `body`, the answer's body too (read to the close, up to 1 MiB).
int probe(const SocketAddress& admin, const char* method, const std::string& path, std::chrono::milliseconds budget,
          std::string* why, std::string* body = nullptr) {
  auto deadline = Clock::now() + budget;
  int fd = admin_request(admin, method, path, budget, why);
  if (fd < 0) return 0;
  int status = 0;
  std::string response;
  auto wait = [&](short events) { return wait_for(fd, events, deadline); };
  char buf[512];
  size_t limit = body ? 1 << 20 : 4096;
  while ((body || response.find("\r\n") == std::string::npos) && response.size() < limit && wait(POLLIN)) {
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    response.append(buf, static_cast<size_t>(n));
  }
  size_t head_end = response.find("\r\n\r\n");
  if (body && head_end != std::string::npos) body->assign(response, head_end + 4);
  // "HTTP/1.1 200 OK"
  if (response.size() >= 12 && response.compare(0, 5, "HTTP/") == 0) status = std::atoi(response.c_str() + 9);
  if (status == 0) *why = "no HTTP answer";
  ::close(fd);
  return status;
}

}  // namespace

int wait_ready(const SocketAddress& admin, Duration timeout, const std::string& path) {
  auto deadline = Clock::now() + timeout;
  std::string last;
  for (;;) {
    std::string why;
    int status = probe(admin, "GET", path, std::chrono::milliseconds(1000), &why);
    if (status == 200) {
      std::fprintf(stdout, "pilotfish at %s answers %s: 200\n", admin.text.c_str(), path.c_str());
      return 0;
    }
    last = status ? "GET " + path + " answered " + std::to_string(status) : why;
    if (Clock::now() + std::chrono::milliseconds(100) >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  std::fprintf(stderr, "pilotfish wait-ready: %s %s not 200 after %lld ms (last: %s)\n", admin.text.c_str(),
               path.c_str(), static_cast<long long>(timeout.count()), last.c_str());
  return 1;
}

int top(const SocketAddress& admin, bool once) {
  // (An answer over 1 MiB would be cut; a table is about 130 bytes a route.)
  bool terminal = ::isatty(STDOUT_FILENO) == 1;
  for (;;) {
    std::string why, table;
    int status = probe(admin, "GET", "/stats?format=table", std::chrono::milliseconds(2000), &why, &table);
    if (status != 200) {
      std::fprintf(stderr, "pilotfish top: GET /stats at %s: %s\n", admin.text.c_str(),
                   status ? ("answered " + std::to_string(status)).c_str() : why.c_str());
      if (once) return 1;
      // A sidecar restarting, or its main loop busy: the monitor waits for it.
      std::this_thread::sleep_for(std::chrono::seconds(1));
      continue;
    }
    if (terminal && !once) std::fputs("\033[H", stdout);  // redrawn in place
    std::fprintf(stdout, "pilotfish at %s: the last 10 s and 1 min, busiest routes first\n%s", admin.text.c_str(),
                 table.c_str());
    if (terminal && !once) std::fputs("\033[J", stdout);  // what the last table had below
    std::fflush(stdout);
    if (once) return 0;
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
}

int request_drain(const SocketAddress& admin) {
  std::string why;
  int status = probe(admin, "POST", "/drain", std::chrono::milliseconds(5000), &why);
  if (status == 202) {
    std::fprintf(stdout, "pilotfish at %s is draining\n", admin.text.c_str());
    return 0;
  }
  std::fprintf(stderr, "pilotfish drain: POST /drain to %s: %s\n", admin.text.c_str(),
               status ? ("answered " + std::to_string(status)).c_str() : why.c_str());
  return 1;
}

}  // namespace pilotfish
