#pragma once
// Bearer JWT verification for `auth` on a listener or route: RS256 and ES256 signatures checked
// with OpenSSL against the keys of a JWKS file, then `exp`, `nbf`, `iss` and `aud` with a small
// clock skew. The JWKS is parsed once per version of the file (the process loads it and hands the keys
// to the workers: server/process_keys.cc); a request
// costs one base64url decode, two small strict JSON parses (json/json_reader.h) and one
// signature check, unless the worker's JwtCache has seen the token.

#include <openssl/evp.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace pilotfish {

// The public keys of one JWKS file: by `kid` (a key without one matches any token's kid).
class Jwks {
 public:
  // Parses a JWKS document ({"keys": [...]}, strict JSON); RSA keys (n, e) of 2048 bits or more
  // and EC P-256 keys (x, y) are used. Refused (nullptr and *error) only when the document is
  // not a JSON object with a "keys" array: a key that cannot be used is skipped with a line in
  // *warnings naming its kid, and an empty set is valid (every token is then refused).
  static std::shared_ptr<const Jwks> parse(const std::string& json, std::string* error,
                                           std::vector<std::string>* warnings = nullptr);
  static std::shared_ptr<const Jwks> load(const std::string& path, std::string* error,
                                          std::vector<std::string>* warnings = nullptr);
  ~Jwks();
  struct Key {
    std::string kid;
    std::string alg;  // "RS256" or "ES256"
    EVP_PKEY* pkey = nullptr;
  };
  const std::vector<Key>& keys() const { return keys_; }

 private:
  std::vector<Key> keys_;
};
using JwksPtr = std::shared_ptr<const Jwks>;
// The keys of each JWKS file the policy names, by path, as last loaded.
using JwksSet = std::map<std::string, JwksPtr>;

struct JwtRules {
  std::string issuer;                  // empty: not checked
  std::vector<std::string> audiences;  // empty: not checked; else the token's aud must hold one
  int64_t clock_skew_seconds = 30;
};

struct JwtResult {
  bool ok = false;
  std::string subject;       // `sub`, when the token has one
  bool has_subject = false;  // without `sub`, no subject header is sent at all
  // For authorization rules: `scope` split at spaces, and `aud` (a string or a list of them).
  std::vector<std::string> scopes;
  std::vector<std::string> audiences;
  const char* error = "";    // why not: a fixed text (for the log and WWW-Authenticate)
  int64_t exp = 0;      // of a verified token
  int64_t nbf = 0;      // 0: none
};

// Tokens verified recently, per worker (so without a lock): a client sends the same token many
// times, and a token seen again skips the JSON parsing and the signature check while it is
// within its exp/nbf, for the same keys (held, so never a stale match) and the same rules.
// Failures are not cached. Bounded: emptied when it holds 4 MiB of tokens.
class JwtCache {
 public:
  // The verified result, if `token` was verified against `keys` under `rules_key` and is
  // still valid.
  const JwtResult* find(std::string_view token, const JwksPtr& keys, const std::string& rules_key, int64_t now,
                          int64_t skew);
  void store(std::string_view token, const JwksPtr& keys, const std::string& rules_key, const JwtResult& result);

 private:
  struct Entry {
    JwksPtr keys;
    std::string rules_key;
    JwtResult result;
  };
  std::map<std::string, Entry, std::less<>> entries_;
  size_t bytes_ = 0;
};

// Verifies a compact JWS (the token after "Bearer ").
JwtResult verify_jwt(std::string_view token, const Jwks& keys, const JwtRules& rules, int64_t now_unix);

std::string base64url_decode(std::string_view in, bool* ok);

}  // namespace pilotfish
