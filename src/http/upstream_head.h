#pragma once
// The head a request goes upstream with: the client's method, normalised target and fields,
// less the hop-by-hop ones and those only pilotfish may set (X-Forwarded-*, the auth subject
// header, x-pilotfish-attempt: in any spelling a server may read as the same name), plus what
// pilotfish adds (X-Forwarded-For/-Proto, X-Forwarded-Client-Cert for an mTLS peer, the verified
// token's subject, x-request-id, the WebSocket upgrade). Protocol-neutral: an HTTP/2 request
// turned into the same parts goes up the same way.

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
};

// Writes the head into `out` without its last lines (see append_attempt_head). Returns true
// when the request came from another pilotfish (it carried x-pilotfish-attempt).
bool build_upstream_head(std::string& out, const UpstreamHeadInput& in);

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
// The head for an HTTP/2 upstream: build_upstream_head's text (`head`, pilotfish's own, well
// formed) as a RequestHead with the attempt number; `te: trailers` when the client said so.
// `grpc_timeout`, when not empty, replaces the client's grpc-timeout (the time that is left).
void upstream_head_fields(RequestHead& out, std::string_view head, int attempt, bool te_trailers,
                          std::string_view grpc_timeout = {});
// A grpc-timeout value ("250m", "3S", "1H": 1-8 digits and a unit) in milliseconds, rounded
// up; 0 when it is not one.
uint64_t parse_grpc_timeout(std::string_view value);

}  // namespace pilotfish
