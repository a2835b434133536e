#pragma once
// The head a request goes upstream with: the client's method, normalised target and fields,
// less the hop-by-hop ones and those only pilotfish may set (X-Forwarded-*, the auth subject
// header, x-pilotfish-attempt, the trace context: in any spelling a server may read as the same
// name), plus what pilotfish adds (X-Forwarded-For/-Proto, X-Forwarded-Client-Cert for an mTLS
// peer, the verified token's subject, x-request-id, traceparent and tracestate, the WebSocket
// upgrade). Protocol-neutral: an HTTP/2 request
// turned into the same parts goes up the same way.

#include <initializer_list>
#include <string>
#include <string_view>

#include "http/message_head.h"
#include "pilotfish/header_list.h"
#include "pilotfish/path_normalizer.h"
#include "pilotfish/policy.h"

namespace pilotfish {

class TlsState;

struct UpstreamHeadInput {
  std::string_view method;
  const NormalizedTarget& target;
  const HeaderList& headers;
  bool chunked;                    // the body goes up chunked
  bool websocket;                  // a WebSocket upgrade
  const Listener& listener;
  std::string_view client_address;
  const TlsState* tls;             // the client's TLS, or null
  const AuthPolicy* auth;          // the auth that verified a token with a subject, or null
  std::string_view subject;
  std::string_view request_id;     // added when the client sent none
  const HeaderRules* rules = nullptr;  // the route's request_headers, or null
  std::string_view route_name;
  // W3C trace context: replaces the client's fields (none written when empty).
  std::string_view traceparent;
  std::string_view tracestate;
};

// What ${peer_identity}, ${request_id} and ${route} stand for in a header rule's value.
struct HeaderVariables {
  std::string_view peer_identity;
  std::string_view request_id;
  std::string_view route;
};
// `value` with its variables replaced, into `out` (replaced); false when the result is empty or
// not a valid field value (the field is then left out).
bool expand_header_value(std::string& out, std::string_view value, const HeaderVariables& vars);
// A rule sets or removes this header, or adds it with the peer's identity (any spelling a
// server may read as the same name): the message's own copies go.
bool rules_replace(const HeaderRules& rules, std::string_view name);
// `fields` with a route's rules applied: removed and set names dropped, set and add appended.
void apply_header_rules(HeaderList& fields, const HeaderRules& rules, const HeaderVariables& vars, HeaderList& scratch);

// Where build_upstream_head writes the head: as HTTP/1.1 text, or as the parts of an HTTP/2
// stream's head. Each field is written once; its value is `value`'s pieces one after another.
class UpstreamHeadWriter {
 public:
  virtual ~UpstreamHeadWriter() = default;
  virtual void request_line(std::string_view method, std::string_view path, std::string_view query) = 0;
  virtual void field(std::string_view name, std::initializer_list<std::string_view> value) = 0;
};

// The HTTP/1.1 text, into `out` (replaced).
class Http1HeadWriter final : public UpstreamHeadWriter {
 public:
  explicit Http1HeadWriter(std::string& out) : out_(out) {}
  void request_line(std::string_view method, std::string_view path, std::string_view query) override;
  void field(std::string_view name, std::initializer_list<std::string_view> value) override;

 private:
  std::string& out_;
};

// Method, target and fields, into `out` (replaced), leaving out a field named `drop` (the
// client's grpc-timeout, when each attempt says the time that is left).
class Http2HeadWriter final : public UpstreamHeadWriter {
 public:
  Http2HeadWriter(RequestHead& out, std::string_view drop) : out_(out), drop_(drop) {}
  void request_line(std::string_view method, std::string_view path, std::string_view query) override;
  void field(std::string_view name, std::initializer_list<std::string_view> value) override;

 private:
  RequestHead& out_;
  std::string_view drop_;
};

// Writes the head without the attempt's own fields (append_attempt_head, h2_attempt_fields).
// Returns true when the request came from another pilotfish (it carried x-pilotfish-attempt).
bool build_upstream_head(UpstreamHeadWriter& out, const UpstreamHeadInput& in);

// An HTTP/2 head that build_upstream_head wrote (its first `fields` fields, without an attempt's
// own), as HTTP/1.1 text, as Http1HeadWriter would have written it: for an `auto` cluster's
// endpoint that turned out to speak HTTP/1.1 only.
void render_http1_head(std::string& out, const RequestHead& head, size_t fields);

// `head`, then `x-pilotfish-attempt: N` and the blank line that ends it.
void append_attempt_head(std::string& out, std::string_view head, int attempt);

// The end of a chunked request body: the last chunk with the client's trailer fields that may
// travel in trailers (append_last_chunk), less those the head builder keeps for pilotfish
// (x-forwarded-*, the subject headers, x-pilotfish-attempt, x-request-id, in any spelling): an
// application that merges trailers into its headers is not told an identity or a chain
// nobody proved. The fields must be valid (fields_valid).
void append_request_last_chunk(std::string& out, const HeaderList& trailers, const std::string& connection_tokens,
                               const Listener& listener);
// The same trailer fields as a list, for an HTTP/2 upstream.
void request_trailers_to_forward(HeaderList& out, const HeaderList& trailers, const std::string& connection_tokens,
                                 const Listener& listener);
// An HTTP/2 head's attempt fields: `head` keeps its first `base` fields (what
// build_upstream_head wrote), then gets `grpc-timeout` when not empty (the time that is left),
// `x-pilotfish-attempt`, and `te: trailers` when the client said so.
void h2_attempt_fields(RequestHead& head, size_t base, int attempt, bool te_trailers, std::string_view grpc_timeout = {});
// A grpc-timeout value ("250m", "3S", "1H": 1-8 digits and a unit) in milliseconds, rounded
// up; 0 when it is not one.
uint64_t parse_grpc_timeout(std::string_view value);

}  // namespace pilotfish
