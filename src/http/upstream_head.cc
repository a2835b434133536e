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
         same_field_name_folded(name, "x-forwarded-client-cert") ||
         (!name.empty() && (name[0] | 0x20) == 't' && (iequals(name, "traceparent") || iequals(name, "tracestate")));
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

bool expand_header_value(std::string& out, std::string_view value, const HeaderVariables& vars) {
  out.clear();
  while (!value.empty()) {
    size_t at = value.find("${");
    out += value.substr(0, at);
    if (at == std::string_view::npos) break;
    value.remove_prefix(at);
    size_t end = value.find('}');
    std::string_view var = value.substr(2, end - 2);  // the loader let only the three through
    out += var == "peer_identity" ? vars.peer_identity : var == "request_id" ? vars.request_id : vars.route;
    value.remove_prefix(end + 1);
  }
  // A peer identity or request id comes from outside: it never makes a field invalid.
  return !out.empty() && is_valid_field_value(out);
}

bool rules_replace(const HeaderRules& rules, std::string_view name) {
  for (const auto& r : rules.remove)
    if (same_field_name_folded(name, r)) return true;
  for (const auto& [n, v] : rules.set)
    if (same_field_name_folded(name, n)) return true;
  // A field that carries the peer's identity is never beside a client's forged copy.
  for (const auto& [n, v] : rules.add)
    if (v.find("${peer_identity}") != std::string::npos && same_field_name_folded(name, n)) return true;
  return false;
}

void apply_header_rules(HeaderList& fields, const HeaderRules& rules, const HeaderVariables& vars, HeaderList& scratch) {
  scratch.clear();
  for (size_t i = 0; i < fields.size(); ++i)
    if (!rules_replace(rules, fields.name(i))) scratch.add(fields.name(i), fields.value(i));
  std::string value;
  for (const auto* list : {&rules.set, &rules.add})
    for (const auto& [name, text] : *list)
      if (expand_header_value(value, text, vars)) scratch.add(name, value);
  std::swap(fields, scratch);
}

void Http1HeadWriter::request_line(std::string_view method, std::string_view path, std::string_view query) {
  using namespace std::string_view_literals;
  out_.clear();
  out_ += method;
  out_ += ' ';
  out_ += path;
  out_ += query;
  out_ += " HTTP/1.1\r\n"sv;
}

void Http1HeadWriter::field(std::string_view name, std::initializer_list<std::string_view> value) {
  using namespace std::string_view_literals;  // no strlen per piece
  out_ += name;
  out_ += ": "sv;
  for (auto piece : value) out_ += piece;
  out_ += "\r\n"sv;
}

void Http2HeadWriter::request_line(std::string_view method, std::string_view path, std::string_view query) {
  out_.clear();
  out_.method.assign(method);
  out_.target.assign(path);
  out_.target += query;
}

void Http2HeadWriter::field(std::string_view name, std::initializer_list<std::string_view> value) {
  if (!drop_.empty() && iequals(name, drop_)) return;
  out_.fields.append_name(name);
  for (auto piece : value) out_.fields.append_value(piece);
  out_.fields.end_header();
}

bool build_upstream_head(UpstreamHeadWriter& out, const UpstreamHeadInput& in) {
  bool nested = false;
  out.request_line(in.method, in.target.path, in.target.query);
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
    if (in.rules && rules_replace(*in.rules, name)) continue;  // the route's rules say what goes
    if (iequals(name, "host")) has_host = true;
    out.field(name, {trim_ows(in.headers.value(i))});
  }
  if (in.rules) {
    HeaderVariables vars{in.tls ? std::string_view(in.tls->peer_id()) : std::string_view(), in.request_id, in.route_name};
    std::string value;
    for (const auto* list : {&in.rules->set, &in.rules->add}) {
      for (const auto& [name, text] : *list) {
        // Never one of pilotfish's own (the loader refuses them; a subject header of a route
        // read later is caught here).
        if (is_pilotfish_field(in.listener, name)) continue;
        if (expand_header_value(value, text, vars)) out.field(name, {value});
      }
    }
  }
  if (!has_host) out.field("host", {in.listener.address.text});
  if (in.chunked) out.field("transfer-encoding", {"chunked"});
  if (forwarded_for.empty())
    out.field("x-forwarded-for", {in.client_address});
  else
    out.field("x-forwarded-for", {forwarded_for, ", ", in.client_address});
  if (const TlsState* t = in.tls) {
    out.field("x-forwarded-proto", {"https"});
    out.field("x-forwarded-client-cert", {"By=", t->own_id(), ";URI=", t->peer_id(), ";Hash=", t->peer_cert_sha256()});
  } else {
    out.field("x-forwarded-proto", {"http"});
  }
  if (in.auth) out.field(in.auth->subject_header, {in.subject});
  if (in.headers.find("x-request-id") == HeaderList::npos) out.field("x-request-id", {in.request_id});
  if (!in.traceparent.empty()) out.field("traceparent", {in.traceparent});
  if (!in.tracestate.empty()) out.field("tracestate", {in.tracestate});
  if (in.websocket) {
    out.field("connection", {"upgrade"});
    out.field("upgrade", {trim_ows(in.headers.value(in.headers.find("upgrade")))});
  }
  // The head ends with the attempt's own fields (append_attempt_head, h2_attempt_fields).
  return nested;
}

void render_http1_head(std::string& out, const RequestHead& head, size_t fields) {
  Http1HeadWriter w(out);
  size_t query = head.target.find('?');
  std::string_view target = head.target;
  w.request_line(head.method, target.substr(0, query), query == std::string::npos ? std::string_view() : target.substr(query));
  for (size_t i = 0; i < fields && i < head.fields.size(); ++i) w.field(head.fields.name(i), {head.fields.value(i)});
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

void h2_attempt_fields(RequestHead& head, size_t base, int attempt, bool te_trailers, std::string_view grpc_timeout) {
  head.fields.truncate(base);
  if (grpc_timeout.size()) head.fields.add("grpc-timeout", grpc_timeout);
  head.fields.add("x-pilotfish-attempt", std::to_string(attempt));
  if (te_trailers) head.fields.add("te", "trailers");
}

void append_request_last_chunk(std::string& out, const HeaderList& trailers, const std::string& connection_tokens,
                               const Listener& listener) {
  append_last_chunk(out, trailers, connection_tokens, [&](std::string_view name) { return !is_pilotfish_field(listener, name); });
}

}  // namespace pilotfish
