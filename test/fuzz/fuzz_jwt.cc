// Bearer tokens and JWKS documents from outside: strict JSON, base64url, claims. No crash, and
// an error is always one of pilotfish's fixed texts (it reaches a response header).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "gateway/jwt.h"
#include "json/json_reader.h"
#include "tls/tls.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  std::string error;
  std::vector<std::string> warnings;
  auto keys = pilotfish::Jwks::parse(text, &error, &warnings);
  static const auto empty = pilotfish::Jwks::parse(R"({"keys": []})", &error);
  pilotfish::JwtRules rules{"https://issuer", {"aud"}, 30};
  auto r = pilotfish::verify_jwt(text, keys ? *keys : *empty, rules, 1'800'000'000);
  if (!r.ok) {
    static const char* kFixed[] = {"malformed token", "unsupported alg", "unsupported crit header", "bad signature",
                                   "no key for this token", "no exp claim", "invalid exp claim", "token expired",
                                   "invalid nbf claim", "token not valid yet", "wrong issuer", "wrong audience",
                                   "invalid sub claim"};
    bool fixed = false;
    for (const char* f : kFixed) fixed = fixed || std::strcmp(f, r.error) == 0;
    if (!fixed) std::abort();
  }
  bool ok = false;
  pilotfish::base64url_decode(text, &ok);
  pilotfish::parse_json_strict(text, pilotfish::JsonLimits{}, &error);
  pilotfish::spiffe_id_valid(text);
  pilotfish::identity_allowed({"spiffe://shop.local/ns/shop/sa/orders-*", "spiffe://a/b"}, text);
  return 0;
}
