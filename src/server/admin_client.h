#pragma once
// What the small admin clients (wait-ready, drain, top, tap) share: a request to a sidecar's
// admin listener over a plain blocking-with-deadline socket.

#include <chrono>
#include <string>

#include "pilotfish/socket_address.h"

namespace pilotfish {

// Connects to `admin` and sends `method` `path` (no body, connection: close) within `budget`:
// the socket (non-blocking; the caller closes it), or -1 with *why set.
int admin_request(const SocketAddress& admin, const char* method, const std::string& path,
                  std::chrono::milliseconds budget, std::string* why);
// poll() for `events` until `deadline`: true when they came.
bool wait_for(int fd, short events, std::chrono::steady_clock::time_point deadline);

}  // namespace pilotfish
