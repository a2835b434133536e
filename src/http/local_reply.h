#pragma once
// Every response pilotfish makes itself on the data path (a 404 no_route, a 503 overloaded, a
// 401 with its WWW-Authenticate, ...) is built here, the same way: text/plain, a body of
// "STATUS ERROR\n", `x-pilotfish-error: ERROR` (a fixed token, never outside text), the
// overloaded marker on a 503 overloaded, the caller's extra header lines (fixed texts and
// numbers only), and connection handling for HTTP/1.0 and 1.1 clients.

#include <cstdint>
#include <string>
#include <string_view>

#include "pilotfish/header_list.h"

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
// The same answer for HTTP/2: its fields (no connection handling) and its body (empty for
// HEAD). Returns the body's length.
uint64_t local_reply_parts(const LocalReply& reply, HeaderList& fields, std::string& body);

// A request with content-type application/grpc (or application/grpc+proto, ...): pilotfish's
// own answers to it are gRPC's, so that a gRPC client reads the reason as a status.
bool is_grpc_request(const HeaderList& fields);
// The gRPC status code (grpc/doc/statuscodes.md) of a local answer: 14 UNAVAILABLE for
// overload, no healthy upstream and failed connections, 4 DEADLINE_EXCEEDED for timeouts, 16
// UNAUTHENTICATED, 7 PERMISSION_DENIED, 8 RESOURCE_EXHAUSTED for rate limits and size limits,
// 12 UNIMPLEMENTED for no route, 13 INTERNAL for a malformed request or response.
int grpc_status_of(int http_status, const char* error);
// Its fields: a trailers-only gRPC response (HTTP 200, content-type application/grpc,
// grpc-status, grpc-message: the error token, x-pilotfish-error and the extra lines), no body.
void grpc_local_reply_fields(const LocalReply& reply, HeaderList& fields);

}  // namespace pilotfish
