#include "http/local_reply.h"

#include <cstdio>
#include <cstring>

#include "http/http1_codec.h"
#include "pilotfish/header_rules.h"

namespace pilotfish {

namespace {

// "404 no_route\n" into `body`; its length.
int reply_body(const LocalReply& reply, char (&body)[96]) {
  int body_len = snprintf(body, sizeof body, "%d %s\n", reply.status, reply.error);
  if (body_len < 0) body_len = 0;
  if (static_cast<size_t>(body_len) >= sizeof body) body_len = sizeof body - 1;
  return body_len;
}

bool overloaded(const LocalReply& reply) { return reply.status == 503 && std::strcmp(reply.error, "overloaded") == 0; }

}  // namespace

uint64_t local_reply_parts(const LocalReply& reply, HeaderList& fields, std::string& body) {
  char text[96];
  int body_len = reply_body(reply, text);
  fields.add("content-type", "text/plain");
  fields.add("content-length", std::to_string(body_len));
  fields.add("x-pilotfish-error", reply.error);
  if (overloaded(reply)) fields.add("x-pilotfish-overloaded", "true");
  // The extra lines are pilotfish's own ("name: value\r\n" each).
  std::string_view extra = reply.extra_headers;
  while (!extra.empty()) {
    size_t end = extra.find("\r\n");
    std::string_view line = extra.substr(0, end);
    size_t colon = line.find(':');
    if (colon != std::string_view::npos) fields.add(line.substr(0, colon), trim_ows(line.substr(colon + 1)));
    if (end == std::string_view::npos) break;
    extra.remove_prefix(end + 2);
  }
  if (!reply.head_request) body.assign(text, static_cast<size_t>(body_len));
  return static_cast<uint64_t>(body_len);
}

bool is_grpc_request(const HeaderList& fields) {
  size_t t = fields.find("content-type");
  if (t == HeaderList::npos) return false;
  std::string_view v = trim_ows(fields.value(t));
  if (v.size() < 16) return false;
  std::string_view head = v.substr(0, 16);
  if (!iequals(head, "application/grpc")) return false;
  return v.size() == 16 || v[16] == '+' || v[16] == ';';
}

int grpc_status_of(int http_status, const char* error) {
  switch (http_status) {
    case 401: return 16;  // UNAUTHENTICATED
    case 403: return 7;   // PERMISSION_DENIED
    case 404: return 12;  // UNIMPLEMENTED
    case 408: return 4;   // DEADLINE_EXCEEDED (the client's body did not come in time)
    case 413: return 8;   // RESOURCE_EXHAUSTED
    case 429: return 8;
    case 504: return 4;
    case 502:
    case 503:
      return std::strcmp(error, "invalid_response") == 0 ? 13 : 14;  // INTERNAL : UNAVAILABLE
    default: return 13;  // INTERNAL: 400, 405, 431, ...
  }
}

void grpc_local_reply_fields(const LocalReply& reply, HeaderList& fields) {
  std::string body;
  HeaderList plain;
  local_reply_parts(reply, plain, body);
  fields.add("content-type", "application/grpc");
  fields.add("grpc-status", std::to_string(grpc_status_of(reply.status, reply.error)));
  fields.add("grpc-message", reply.error);
  for (size_t i = 0; i < plain.size(); ++i) {
    std::string_view n = plain.name(i);
    if (iequals(n, "content-type") || iequals(n, "content-length")) continue;
    fields.add(n, plain.value(i));
  }
}

uint64_t append_local_reply(std::string& out, const LocalReply& reply) {
  char body[96];
  int body_len = reply_body(reply, body);
  out += "HTTP/1.1 ";
  append_uint(out, static_cast<uint64_t>(reply.status));
  out += ' ';
  out += reason_phrase(reply.status);
  out += "\r\ncontent-type: text/plain\r\ncontent-length: ";
  append_uint(out, static_cast<uint64_t>(body_len));
  out += "\r\nx-pilotfish-error: ";
  out += reply.error;
  out += "\r\n";
  if (overloaded(reply)) out += "x-pilotfish-overloaded: true\r\n";
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
