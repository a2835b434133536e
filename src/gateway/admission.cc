#include "gateway/admission.h"

#include <uv.h>

#include <ctime>
#include <optional>
#include <string>

#include "pilotfish/header_rules.h"
#include "pilotfish/path_normalizer.h"
#include "tls/tls.h"

namespace pilotfish {

bool peer_admitted(const Listener& listener, const TlsState* tls) {
  return tls && tls->established() && identity_allowed(listener.allow, tls->peer_id());
}

const RateLimitPolicy* rate_limit_for(const Listener& listener, const Route* route) {
  if (route && route->rate_limit) return &*route->rate_limit;
  if (!(route && route->rate_limit_off) && listener.rate_limit) return &*listener.rate_limit;
  return nullptr;
}

const AuthPolicy* auth_for(const Listener& listener, const Route* route) {
  if (route && route->auth) return &*route->auth;
  if (route && route->auth_off) return nullptr;
  return listener.auth ? &*listener.auth : nullptr;
}

namespace {

// The rate limit: false (and *out says how to answer) when the bucket is empty.
bool within_rate(const AdmissionInput& in, Admission* out) {
  const RateLimitPolicy* limit = rate_limit_for(in.listener, in.route);
  if (!in.limiter || !limit) return true;
  std::string_view key = in.client_address;
  if (limit->key == RateLimitPolicy::Key::peer_identity && !in.peer_id.empty()) {
    key = in.peer_id;
  } else if (limit->key == RateLimitPolicy::Key::header) {
    size_t i = in.headers.find(limit->header);
    if (i != HeaderList::npos) key = in.headers.value(i);
  }
  uint32_t retry_after = 1;
  // One clock for every worker (a loop's cached time can trail another's by a few ms).
  if (in.limiter->take(key, uv_hrtime() / 1'000'000, &retry_after)) return true;
  out->status = 429;
  out->error = "rate_limited";
  out->reply_headers = "retry-after: " + std::to_string(retry_after) + "\r\n";
  return false;
}

}  // namespace

Admission admit(const AdmissionInput& in) {
  Admission out;
  if (!within_rate(in, &out)) return out;
  out.auth = auth_for(in.listener, in.route);
  if (!out.auth) return out;
  const AuthPolicy& auth = *out.auth;
  size_t a = in.headers.find("authorization");
  std::string_view value = a == HeaderList::npos ? std::string_view() : trim_ows(in.headers.value(a));
  // What goes into WWW-Authenticate is one of pilotfish's fixed texts, never the token's.
  const char* error = nullptr;
  const char* why = "missing bearer token";
  if (in.headers.count("authorization") > 1) {
    // Which one would the service read? Neither gets through.
    error = "invalid_request";
    why = "more than one Authorization header";
  } else if (value.size() > 7 && iequals(value.substr(0, 7), "bearer ")) {
    error = "invalid_token";
    JwksPtr keys;
    if (in.jwks) {
      auto found = in.jwks->find(auth.jwks);
      if (found != in.jwks->end()) keys = found->second;
    }
    if (!keys) {
      why = "no keys loaded";
    } else {
      JwtRules rules{auth.issuer, auth.audiences, auth.clock_skew.count() / 1000};
      std::string_view token = trim_ows(value.substr(7));
      int64_t now = static_cast<int64_t>(std::time(nullptr));
      std::string rules_key = auth.issuer + '\n' + std::to_string(rules.clock_skew_seconds);
      for (const auto& audience : auth.audiences) rules_key += '\n' + audience;
      const JwtResult* verified = in.jwt_cache.find(token, keys, rules_key, now, rules.clock_skew_seconds);
      JwtResult r;
      if (!verified) {
        r = verify_jwt(token, *keys, rules, now);
        if (r.ok) in.jwt_cache.store(token, keys, rules_key, r);
        verified = &r;
      }
      if (verified->ok) {
        out.subject = verified->subject;
        out.has_subject = verified->has_subject;
        out.token_verified = true;
        out.scopes = verified->scopes;
        out.audiences = verified->audiences;
        return out;
      }
      why = verified->error;
    }
  }
  out.status = 401;
  out.error = "unauthorized";
  out.why = why;
  if (error) {
    out.reply_headers = "www-authenticate: Bearer realm=\"pilotfish\", error=\"";
    out.reply_headers += error;
    out.reply_headers += "\", error_description=\"";
    out.reply_headers += why;
    out.reply_headers += "\"\r\n";
  } else {
    out.reply_headers = "www-authenticate: Bearer realm=\"pilotfish\"\r\n";
  }
  return out;
}

namespace {

bool claim_matches(const std::string& name, const std::vector<std::string>& wanted, const Admission& token) {
  if (!token.token_verified) return false;
  auto any = [&](const std::vector<std::string>& held) {
    for (const auto& h : held)
      for (const auto& w : wanted)
        if (h == w) return true;
    return false;
  };
  if (name == "sub") return token.has_subject && any({token.subject});
  if (name == "scope") return any(token.scopes);
  return any(token.audiences);  // aud
}

bool rule_matches(const AuthzRule& rule, const AuthzRequest& q) {
  if (!rule.principals.empty() && (q.peer_id.empty() || !identity_allowed(rule.principals, q.peer_id))) return false;
  if (!rule.methods.empty()) {
    bool any = false;
    for (const auto& m : rule.methods) any = any || iequals(q.method, m);  // "delete" is not a way around DELETE
    if (!any) return false;
  }
  if (!rule.paths.empty()) {
    bool any = false;
    for (const auto& p : rule.paths) any = any || (p.prefix ? q.path.starts_with(p.path) : q.path == p.path);
    if (!any) return false;
  }
  for (const auto& [name, wanted] : rule.claims)
    if (!claim_matches(name, wanted, q.token)) return false;
  return true;
}

}  // namespace

bool authorized(const Authorization& rules, const AuthzRequest& q) {
  // A path with `;` parameters is judged both as it is and as servers that drop them see it:
  // a deny rule refuses when either matches, an allow rule admits only when both do.
  std::string stripped;
  std::optional<AuthzRequest> other;
  if (q.path.find(';') != std::string_view::npos) {
    stripped = without_path_parameters(q.path);
    other.emplace(AuthzRequest{q.peer_id, q.method, stripped, q.token});
  }
  for (const auto& rule : rules.deny)
    if (rule_matches(rule, q) || (other && rule_matches(rule, *other))) return false;
  if (rules.allow.empty()) return true;
  for (const auto& rule : rules.allow)
    if (rule_matches(rule, q) && (!other || rule_matches(rule, *other))) return true;
  return false;
}

}  // namespace pilotfish
