#include "http/upstream_head.h"

#include "http/http1_codec.h"
#include "pilotfish/header_rules.h"
#include "tls/tls.h"

namespace pilotfish {

namespace {

// Headers pilotfish sets itself on the way to the upstream; what a client sent is replaced, in
// any spelling a server may read as the same header ("X_Forwarded_Client_Cert").
// x-forwarded-client-cert is only ever pilotfish's own: a client's is dropped on every listener,
// so no one can claim an identity they did not prove.
bool is_replaced_request_header(std::string_view name) {
  return same_field_name_folded(name, "x-forwarded-for") || same_field_name_folded(name, "x-forwarded-proto") ||
         same_field_name_folded(name, "x-forwarded-client-cert");
}

// A header name the listener's auth writes (any of them, on any route), in any spelling a
// server may read as the same header.
bool is_subject_header(const Listener& listener, std::string_view name) {
  for (const auto& h : listener.subject_headers)
    if (same_field_name_folded(name, h)) return true;
  return false;
}

// A field only pilotfish writes upstream.
bool is_pilotfish_field(const Listener& listener, std::string_view name) {
  return is_replaced_request_header(name) || is_subject_header(listener, name) ||
         same_field_name_folded(name, "x-pilotfish-attempt") || same_field_name_folded(name, "x-request-id");
}

}  // namespace

bool build_upstream_head(std::string& h, const UpstreamHeadInput& in) {
  h.clear();
  bool nested = false;
  h += in.method;
  h += ' ';
  h += in.target.path;
  h += in.target.query;
  h += " HTTP/1.1\r\n";
  std::string tokens = connection_tokens(in.headers);
  std::string forwarded_for;
  bool has_host = false;
  for (size_t i = 0; i < in.headers.size(); ++i) {
    std::string_view name = in.headers.name(i);
    if (is_hop_by_hop(name, tokens)) continue;
    if (is_replaced_request_header(name)) {
      if (iequals(name, "x-forwarded-for")) {  // the client's own chain is kept; X_Forwarded_For is not
        if (!forwarded_for.empty()) forwarded_for += ", ";
        forwarded_for += trim_ows(in.headers.value(i));
      }
      continue;
    }
    if (is_subject_header(in.listener, name)) continue;  // only ever pilotfish's
    if (same_field_name_folded(name, "x-pilotfish-attempt")) {
      nested = true;  // from another pilotfish: its hop retries, this one does not (by default)
      continue;
    }
    if (iequals(name, "host")) has_host = true;
    h += name;
    h += ": ";
    h += trim_ows(in.headers.value(i));
    h += "\r\n";
  }
  if (!has_host) {
    h += "host: ";
    h += in.listener.address.text;
    h += "\r\n";
  }
  if (in.chunked) h += "transfer-encoding: chunked\r\n";
  h += "x-forwarded-for: ";
  if (!forwarded_for.empty()) {
    h += forwarded_for;
    h += ", ";
  }
  h += in.client_address;
  if (const TlsState* t = in.tls) {
    h += "\r\nx-forwarded-proto: https\r\nx-forwarded-client-cert: By=";
    h += t->own_id();
    h += ";URI=";
    h += t->peer_id();
    h += ";Hash=";
    h += t->peer_cert_sha256();
    h += "\r\n";
  } else {
    h += "\r\nx-forwarded-proto: http\r\n";
  }
  if (in.auth) {
    h += in.auth->subject_header;
    h += ": ";
    h += in.subject;
    h += "\r\n";
  }
  if (in.headers.find("x-request-id") == HeaderList::npos) {
    h += "x-request-id: ";
    h += in.request_id;
    h += "\r\n";
  }
  if (in.websocket) {
    h += "connection: upgrade\r\nupgrade: ";
    h += trim_ows(in.headers.value(in.headers.find("upgrade")));
    h += "\r\n";
  }
  // The head ends with the attempt header, added per attempt (append_attempt_head()).
  return nested;
}

void append_attempt_head(std::string& out, std::string_view head, int attempt) {
  out += head;
  out += "x-pilotfish-attempt: ";
  append_uint(out, static_cast<uint64_t>(attempt));
  out += "\r\n\r\n";
}

void request_trailers_to_forward(HeaderList& out, const HeaderList& trailers, const std::string& connection_tokens,
                                 const Listener& listener) {
  for (size_t i = 0; i < trailers.size(); ++i) {
    std::string_view name = trailers.name(i);
    if (!allowed_in_trailers(name) || is_hop_by_hop(name, connection_tokens) || is_pilotfish_field(listener, name))
      continue;
    out.add(name, trim_ows(trailers.value(i)));
  }
}

uint64_t parse_grpc_timeout(std::string_view v) {
  v = trim_ows(v);
  if (v.size() < 2 || v.size() > 9) return 0;
  uint64_t n = 0;
  for (char c : v.substr(0, v.size() - 1)) {
    if (c < '0' || c > '9') return 0;
    n = n * 10 + static_cast<uint64_t>(c - '0');
  }
  switch (v.back()) {
    case 'H': return n * 3'600'000;
    case 'M': return n * 60'000;
    case 'S': return n * 1000;
    case 'm': return n;
    case 'u': return (n + 999) / 1000;
    case 'n': return (n + 999'999) / 1'000'000;
    default: return 0;
  }
}

void upstream_head_fields(RequestHead& out, std::string_view head, int attempt, bool te_trailers,
                          std::string_view grpc_timeout) {
  out.clear();
  size_t eol = head.find("\r\n");
  std::string_view line = head.substr(0, eol);
  size_t sp1 = line.find(' '), sp2 = line.rfind(' ');
  out.method.assign(line.substr(0, sp1));
  out.target.assign(line.substr(sp1 + 1, sp2 - sp1 - 1));
  head.remove_prefix(eol == std::string_view::npos ? head.size() : eol + 2);
  while (!head.empty()) {
    eol = head.find("\r\n");
    line = head.substr(0, eol);
    size_t colon = line.find(':');
    if (colon != std::string_view::npos && !(grpc_timeout.size() && iequals(line.substr(0, colon), "grpc-timeout")))
      out.fields.add(line.substr(0, colon), trim_ows(line.substr(colon + 1)));
    head.remove_prefix(eol == std::string_view::npos ? head.size() : eol + 2);
  }
  if (grpc_timeout.size()) out.fields.add("grpc-timeout", grpc_timeout);
  out.fields.add("x-pilotfish-attempt", std::to_string(attempt));
  if (te_trailers) out.fields.add("te", "trailers");
}

void append_request_last_chunk(std::string& out, const HeaderList& trailers, const std::string& connection_tokens,
                               const Listener& listener) {
  append_last_chunk(out, trailers, connection_tokens, [&](std::string_view name) { return !is_pilotfish_field(listener, name); });
}

}  // namespace pilotfish
