#include "http/local_reply.h"

#include <cstdio>
#include <cstring>

#include "http/http1_codec.h"

namespace pilotfish {

uint64_t append_local_reply(std::string& out, const LocalReply& reply) {
  char body[96];
  int body_len = snprintf(body, sizeof body, "%d %s\n", reply.status, reply.error);
  if (body_len < 0) body_len = 0;
  if (static_cast<size_t>(body_len) >= sizeof body) body_len = sizeof body - 1;
  out += "HTTP/1.1 ";
  append_uint(out, static_cast<uint64_t>(reply.status));
  out += ' ';
  out += reason_phrase(reply.status);
  out += "\r\ncontent-type: text/plain\r\ncontent-length: ";
  append_uint(out, static_cast<uint64_t>(body_len));
  out += "\r\nx-pilotfish-error: ";
  out += reply.error;
  out += "\r\n";
  if (reply.status == 503 && std::strcmp(reply.error, "overloaded") == 0) out += "x-pilotfish-overloaded: true\r\n";
  out += reply.extra_headers;
  if (!reply.keep_alive)
    out += "connection: close\r\n";
  else if (reply.http10)
    out += "connection: keep-alive\r\n";
  out += "\r\n";
  if (!reply.head_request) out.append(body, static_cast<size_t>(body_len));
  return static_cast<uint64_t>(body_len);
}

}  // namespace pilotfish
