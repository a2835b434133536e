#pragma once
// Bearer JWT verification for `auth` on a listener or route: RS256 and ES256 signatures checked
// with OpenSSL against the keys of a JWKS file, then `exp`, `nbf`, `iss` and `aud` with a small
// clock skew. The JWKS is parsed once per version of the file (see JwksRegistry); a request
// costs one base64url decode, two small JSON parses and one signature check.

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
  // Parses a JWKS document ({"keys": [...]}); RSA keys (n, e) and EC P-256 keys (x, y).
  static std::shared_ptr<const Jwks> parse(const std::string& json, std::string* error);
  static std::shared_ptr<const Jwks> load(const std::string& path, std::string* error);
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

struct JwtRules {
  std::string issuer;                  // empty: not checked
  std::vector<std::string> audiences;  // empty: not checked; else the token's aud must hold one
  int64_t clock_skew_seconds = 30;
};

struct JwtResult {
  bool ok = false;
  std::string subject;  // `sub`
  std::string error;    // why not (for the log and the WWW-Authenticate description)
  int64_t exp = 0;      // of a verified token
  int64_t nbf = 0;      // 0: none
};

// Tokens verified recently, per worker (so without a lock): a client sends the same token many
// times, and a token seen again skips the JSON parsing and the signature check while it is
// within its exp/nbf, for the same keys (held, so never a stale match) and the same rules.
// Failures are not cached. Bounded: emptied when it holds 4 MiB of tokens.
class JwtCache {
 public:
  // The subject, if `token` was verified against `keys` under `rules_key` and is still valid.
  const std::string* find(std::string_view token, const JwksPtr& keys, const std::string& rules_key, int64_t now,
                          int64_t skew);
  void store(std::string_view token, const JwksPtr& keys, const std::string& rules_key, const JwtResult& result);

 private:
  struct Entry {
    JwksPtr keys;
    std::string rules_key;
    std::string subject;
    int64_t exp = 0;
    int64_t nbf = 0;
  };
  std::map<std::string, Entry, std::less<>> entries_;
  size_t bytes_ = 0;
};

// Verifies a compact JWS (the token after "Bearer ").
JwtResult verify_jwt(std::string_view token, const Jwks& keys, const JwtRules& rules, int64_t now_unix);

// JWKS files by path, process-wide: loaded at startup and on reload, watched like the identity
// files; workers read the current keys (one mutex-free generation check per request).
class JwksRegistry {
 public:
  static JwksRegistry& instance();
  // Loads or reloads `path`; false and *error when it does not parse (the old keys stay).
  bool load(const std::string& path, std::string* error);
  JwksPtr get(const std::string& path) const;
  uint64_t generation() const { return generation_.load(std::memory_order_acquire); }

 private:
  mutable std::mutex mutex_;
  std::map<std::string, JwksPtr> by_path_;
  std::atomic<uint64_t> generation_{0};
};

std::string base64url_decode(std::string_view in, bool* ok);

}  // namespace pilotfish
