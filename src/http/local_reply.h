#pragma once
// Every response pilotfish makes itself on the data path (a 404 no_route, a 503 overloaded, a
// 401 with its WWW-Authenticate, ...) is built here, the same way: text/plain, a body of
// "STATUS ERROR\n", `x-pilotfish-error: ERROR` (a fixed token, never outside text), the
// overloaded marker on a 503 overloaded, the caller's extra header lines (fixed texts and
// numbers only), and connection handling for HTTP/1.0 and 1.1 clients.

#include <cstdint>
#include <string>
#include <string_view>

namespace pilotfish {

struct LocalReply {
  int status = 0;
  const char* error = "";           // one of pilotfish's error tokens ("no_route")
  std::string_view extra_headers;   // whole header lines ("retry-after: 1\r\n"), or empty
  bool keep_alive = true;
  bool http10 = false;              // the client spoke HTTP/1.0: keep-alive must be said
  bool head_request = false;        // no body is written
};

// Appends the response to `out`; returns the body's length (written or, for HEAD, not).
uint64_t append_local_reply(std::string& out, const LocalReply& reply);

}  // namespace pilotfish
