#pragma once
// Admission: a listener's checks of a request before it is routed on, in their documented order:
// the peer allow list (mTLS listeners), then the route's (else the listener's) rate limit, then
// its auth. Each either lets the request pass or says how to answer it locally; the answer's
// header lines are pilotfish's fixed texts and numbers, never the request's text.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "gateway/jwt.h"
#include "gateway/rate_limit.h"
#include "pilotfish/header_list.h"
#include "pilotfish/policy.h"

namespace pilotfish {

class TlsState;

// The peer allow list: may this connection's peer (`tls`: null without TLS) use the listener?
// Read at each request: a reload that changes it applies to a connection already open.
bool peer_admitted(const Listener& listener, const TlsState* tls);

struct AdmissionInput {
  const Listener& listener;
  const Route* route;           // null: none matched (an intercepted request's destination)
  RateLimiter* limiter;         // the limit that applies (route's, else listener's), or null
  std::string_view client_address;
  std::string_view peer_id;     // the verified mTLS peer, or empty
  const HeaderList& headers;
  const JwksSet* jwks;          // the keys of every JWKS file, by path
  JwtCache& jwt_cache;          // the worker's
};

struct Admission {
  int status = 0;               // 0: admitted; else 429 or 401
  const char* error = "";       // the error token of the local answer
  std::string reply_headers;    // Retry-After, WWW-Authenticate
  const char* why = "";         // a 401's reason, for a debug line (fixed texts)
  const AuthPolicy* auth = nullptr;  // the auth that applied, if any
  std::string subject;          // the verified token's `sub`
  bool has_subject = false;
  bool token_verified = false;  // `auth` verified a token: its claims are below
  std::vector<std::string> scopes;
  std::vector<std::string> audiences;
  bool admitted() const { return status == 0; }
};

// The rate limit that applies to `route` on `listener` (its own, else the listener's unless
// the route turns it off): null when none.
const RateLimitPolicy* rate_limit_for(const Listener& listener, const Route* route);
// The auth that applies to `route` on `listener` (its own, else the listener's unless the route
// turns it off): null when none.
const AuthPolicy* auth_for(const Listener& listener, const Route* route);
Admission admit(const AdmissionInput& in);

// What an authorization rule looks at.
struct AuthzRequest {
  const std::string& peer_id;  // the verified mTLS peer, or empty
  std::string_view method;
  std::string_view path;       // normalised
  const Admission& token;      // the claims, when token_verified
};
// Deny rules first (any match refuses), then allow rules (when given, one must match).
bool authorized(const Authorization& rules, const AuthzRequest& request);

}  // namespace pilotfish
