#include "gateway/jwt.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/param_build.h>

#include <array>
#include <fstream>
#include <sstream>

#include "json/json_reader.h"

namespace pilotfish {

namespace {

using json = nlohmann::json;

// A JSON object from outside (a token's header or payload, a JWKS file), or nullopt.
std::optional<json> parse_object(std::string_view text, size_t max_bytes) {
  std::string why;
  std::optional<json> doc = parse_json_strict(text, JsonLimits{max_bytes, 16}, &why);
  if (!doc || !doc->is_object()) return std::nullopt;
  return doc;
}

// The member `key` when it is a string, else nullptr.
const std::string* string_member(const json& object, const char* key) {
  auto it = object.find(key);
  return it != object.end() && it->is_string() ? it->get_ptr<const std::string*>() : nullptr;
}

std::string string_or_empty(const json& object, const char* key) {
  const std::string* s = string_member(object, key);
  return s ? *s : std::string();
}

enum class Claim { absent, ok, wrong_type };

// A NumericDate claim (RFC 7519 section 2): a JSON number, never a string that looks like one.
Claim numeric_date(const json& payload, const char* key, int64_t* out) {
  auto it = payload.find(key);
  if (it == payload.end()) return Claim::absent;
  if (!it->is_number()) return Claim::wrong_type;
  double v = it->get<double>();
  if (!(v > -1e15 && v < 1e15)) return Claim::wrong_type;  // also NaN: no date is that far away
  *out = static_cast<int64_t>(v);
  return Claim::ok;
}

struct PkeyCtxFree { void operator()(EVP_PKEY_CTX* c) const { EVP_PKEY_CTX_free(c); } };
struct BldFree { void operator()(OSSL_PARAM_BLD* b) const { OSSL_PARAM_BLD_free(b); } };
struct ParamFree { void operator()(OSSL_PARAM* p) const { OSSL_PARAM_free(p); } };
struct BnFree { void operator()(BIGNUM* b) const { BN_free(b); } };
struct MdCtxFree { void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); } };

EVP_PKEY* key_from_params(const char* type, OSSL_PARAM_BLD* bld) {
  std::unique_ptr<OSSL_PARAM, ParamFree> params(OSSL_PARAM_BLD_to_param(bld));
  std::unique_ptr<EVP_PKEY_CTX, PkeyCtxFree> ctx(EVP_PKEY_CTX_new_from_name(nullptr, type, nullptr));
  EVP_PKEY* pkey = nullptr;
  if (!params || !ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &pkey, EVP_PKEY_PUBLIC_KEY, params.get()) != 1)
    pkey = nullptr;
  ERR_clear_error();
  return pkey;
}

EVP_PKEY* rsa_key(const std::string& n64, const std::string& e64) {
  bool ok1 = false, ok2 = false;
  std::string n = base64url_decode(n64, &ok1), e = base64url_decode(e64, &ok2);
  if (!ok1 || !ok2 || n.size() < 256) return nullptr;  // RSA under 2048 bits is refused
  std::unique_ptr<BIGNUM, BnFree> bn_n(BN_bin2bn(reinterpret_cast<const unsigned char*>(n.data()),
                                                 static_cast<int>(n.size()), nullptr));
  std::unique_ptr<BIGNUM, BnFree> bn_e(BN_bin2bn(reinterpret_cast<const unsigned char*>(e.data()),
                                                 static_cast<int>(e.size()), nullptr));
  std::unique_ptr<OSSL_PARAM_BLD, BldFree> bld(OSSL_PARAM_BLD_new());
  if (!bn_n || !bn_e || !bld || OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, bn_n.get()) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, bn_e.get()) != 1)
    return nullptr;
  return key_from_params("RSA", bld.get());
}

EVP_PKEY* ec_key(const std::string& crv, const std::string& x64, const std::string& y64) {
  if (crv != "P-256") return nullptr;
  bool ok1 = false, ok2 = false;
  std::string x = base64url_decode(x64, &ok1), y = base64url_decode(y64, &ok2);
  if (!ok1 || !ok2 || x.size() != 32 || y.size() != 32) return nullptr;
  std::string point = "\x04" + x + y;
  std::unique_ptr<OSSL_PARAM_BLD, BldFree> bld(OSSL_PARAM_BLD_new());
  char group[] = "prime256v1";
  if (!bld || OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, group, 0) != 1 ||
      OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(), point.size()) != 1)
    return nullptr;
  return key_from_params("EC", bld.get());
}

bool verify_signature(const Jwks::Key& key, std::string_view signed_part, const std::string& signature) {
  std::string der;
  const std::string* sig = &signature;
  if (key.alg == "ES256") {
    // JWS carries r || s (32 bytes each); OpenSSL wants a DER ECDSA-Sig-Value.
    if (signature.size() != 64) return false;
    ECDSA_SIG* s = ECDSA_SIG_new();
    BIGNUM* r = BN_bin2bn(reinterpret_cast<const unsigned char*>(signature.data()), 32, nullptr);
    BIGNUM* ss = BN_bin2bn(reinterpret_cast<const unsigned char*>(signature.data()) + 32, 32, nullptr);
    if (!s || !r || !ss || ECDSA_SIG_set0(s, r, ss) != 1) {
      BN_free(r);
      BN_free(ss);
      ECDSA_SIG_free(s);
      return false;
    }
    unsigned char* out = nullptr;
    int len = i2d_ECDSA_SIG(s, &out);
    ECDSA_SIG_free(s);
    if (len <= 0) return false;
    der.assign(reinterpret_cast<char*>(out), static_cast<size_t>(len));
    OPENSSL_free(out);
    sig = &der;
  }
  std::unique_ptr<EVP_MD_CTX, MdCtxFree> md(EVP_MD_CTX_new());
  bool ok = md && EVP_DigestVerifyInit(md.get(), nullptr, EVP_sha256(), nullptr, key.pkey) == 1 &&
            EVP_DigestVerify(md.get(), reinterpret_cast<const unsigned char*>(sig->data()), sig->size(),
                             reinterpret_cast<const unsigned char*>(signed_part.data()), signed_part.size()) == 1;
  ERR_clear_error();
  return ok;
}

}  // namespace

// RFC 7515 base64url: the URL-safe alphabet, no padding, and unused trailing bits zero, so
// that one token has exactly one spelling (a cache key or a log line cannot be dodged by
// re-spelling it).
std::string base64url_decode(std::string_view in, bool* ok) {
  static const auto table = [] {
    std::array<int8_t, 256> t;
    t.fill(-1);
    const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for (int i = 0; i < 64; ++i) t[static_cast<unsigned char>(alphabet[i])] = static_cast<int8_t>(i);
    return t;
  }();
  *ok = false;
  if (in.size() % 4 == 1) return {};
  std::string out;
  out.reserve(in.size() * 3 / 4);
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    int v = table[static_cast<unsigned char>(c)];
    if (v < 0) return {};  // also '=': no padding
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xff);
    }
  }
  if (acc & ((1u << bits) - 1)) return {};  // the bits left over must be zero
  *ok = true;
  return out;
}

Jwks::~Jwks() {
  for (auto& k : keys_) EVP_PKEY_free(k.pkey);
}

std::shared_ptr<const Jwks> Jwks::parse(const std::string& text, std::string* error,
                                        std::vector<std::string>* warnings) {
  std::optional<json> doc = parse_object(text, 1024 * 1024);
  if (!doc) {
    *error = "not a JSON object (strict JSON, no duplicate keys)";
    return nullptr;
  }
  auto keys = doc->find("keys");
  if (keys == doc->end() || !keys->is_array()) {
    *error = "no \"keys\" array";
    return nullptr;
  }
  std::shared_ptr<Jwks> out(new Jwks());
  // An empty set is valid (an operator revoking every key), and a key pilotfish cannot use is
  // skipped rather than refusing the file, so that a rotation can bring in a key of another
  // kind beside the ones in use.
  for (size_t i = 0; i < keys->size(); ++i) {
    const json& k = (*keys)[i];
    std::string kid = k.is_object() ? string_or_empty(k, "kid") : std::string();
    auto skip = [&](const char* why) {
      if (warnings)
        warnings->push_back("key " + std::to_string(i) + (kid.empty() ? "" : " (kid " + kid + ")") + " skipped: " + why);
    };
    if (!k.is_object()) {
      skip("not an object");
      continue;
    }
    std::string kty = string_or_empty(k, "kty"), use = string_or_empty(k, "use"), alg = string_or_empty(k, "alg");
    if (!use.empty() && use != "sig") {
      skip("not a signing key (use is not \"sig\")");
      continue;
    }
    Key key;
    key.kid = kid;
    if (kty == "RSA") {
      key.alg = "RS256";
      key.pkey = rsa_key(string_or_empty(k, "n"), string_or_empty(k, "e"));
    } else if (kty == "EC") {
      key.alg = "ES256";
      key.pkey = ec_key(string_or_empty(k, "crv"), string_or_empty(k, "x"), string_or_empty(k, "y"));
    } else {
      skip("kty is not RSA or EC");
      continue;
    }
    if (!key.pkey || (!alg.empty() && alg != key.alg)) {
      EVP_PKEY_free(key.pkey);
      skip("not an RS256 (RSA of 2048 bits or more) or ES256 (EC P-256) key");
      continue;
    }
    out->keys_.push_back(key);
  }
  if (out->keys_.empty() && warnings) warnings->push_back("no usable key: every token is refused");
  return out;
}

std::shared_ptr<const Jwks> Jwks::load(const std::string& path, std::string* error,
                                       std::vector<std::string>* warnings) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    *error = "cannot read " + path;
    return nullptr;
  }
  std::stringstream text;
  text << in.rdbuf();
  auto keys = parse(text.str(), error, warnings);
  if (!keys) *error = path + ": " + *error;
  return keys;
}

JwtResult verify_jwt(std::string_view token, const Jwks& keys, const JwtRules& rules, int64_t now) {
  // Every error is one of these fixed texts: the token is the client's, and what it holds must
  // never reach a response header or a log line.
  JwtResult r;
  size_t dot1 = token.find('.');
  size_t dot2 = dot1 == std::string_view::npos ? dot1 : token.find('.', dot1 + 1);
  if (dot2 == std::string_view::npos || token.find('.', dot2 + 1) != std::string_view::npos || token.size() > 16384) {
    r.error = "malformed token";
    return r;
  }
  bool ok1 = false, ok2 = false, ok3 = false;
  std::string header_text = base64url_decode(token.substr(0, dot1), &ok1);
  std::string payload_text = base64url_decode(token.substr(dot1 + 1, dot2 - dot1 - 1), &ok2);
  std::string signature = base64url_decode(token.substr(dot2 + 1), &ok3);
  std::optional<json> h, p;
  if (!ok1 || !ok2 || !ok3 || !(h = parse_object(header_text, 16384)) || !(p = parse_object(payload_text, 16384))) {
    r.error = "malformed token";
    return r;
  }
  const std::string* alg = string_member(*h, "alg");
  if (!alg || (*alg != "RS256" && *alg != "ES256")) {
    r.error = "unsupported alg";  // "none" and HMAC never
    return r;
  }
  if (h->contains("crit")) {
    r.error = "unsupported crit header";  // RFC 7515 4.1.11: extensions we do not know
    return r;
  }
  auto kid_it = h->find("kid");
  if (kid_it != h->end() && !kid_it->is_string()) {
    r.error = "malformed token";
    return r;
  }
  std::string kid = string_or_empty(*h, "kid");
  bool verified = false, candidate = false;
  for (const auto& key : keys.keys()) {
    if (key.alg != *alg || (!kid.empty() && !key.kid.empty() && key.kid != kid)) continue;
    candidate = true;
    if (verify_signature(key, token.substr(0, dot2), signature)) {
      verified = true;
      break;
    }
  }
  if (!verified) {
    r.error = candidate ? "bad signature" : "no key for this token";
    return r;
  }
  int64_t exp = 0, nbf = 0;
  Claim exp_claim = numeric_date(*p, "exp", &exp);
  if (exp_claim != Claim::ok) {
    r.error = exp_claim == Claim::absent ? "no exp claim" : "invalid exp claim";
    return r;
  }
  if (now > exp + rules.clock_skew_seconds) {
    r.error = "token expired";
    return r;
  }
  Claim nbf_claim = numeric_date(*p, "nbf", &nbf);
  if (nbf_claim == Claim::wrong_type) {
    r.error = "invalid nbf claim";
    return r;
  }
  if (nbf_claim == Claim::ok && now + rules.clock_skew_seconds < nbf) {
    r.error = "token not valid yet";
    return r;
  }
  if (!rules.issuer.empty()) {
    const std::string* iss = string_member(*p, "iss");
    if (!iss || *iss != rules.issuer) {
      r.error = "wrong issuer";
      return r;
    }
  }
  if (!rules.audiences.empty()) {
    bool match = false;
    auto check = [&](const json& a) {
      if (!a.is_string()) return;
      for (const auto& want : rules.audiences) match = match || a.get_ref<const std::string&>() == want;
    };
    auto aud = p->find("aud");
    if (aud != p->end() && aud->is_string()) check(*aud);
    if (aud != p->end() && aud->is_array())
      for (const auto& a : *aud) check(a);
    if (!match) {
      r.error = "wrong audience";
      return r;
    }
  }
  auto sub = p->find("sub");
  if (sub != p->end()) {
    // It becomes a header value: a string, not empty, without control characters.
    if (!sub->is_string() || sub->get_ref<const std::string&>().empty()) {
      r.error = "invalid sub claim";
      return r;
    }
    for (char c : sub->get_ref<const std::string&>())
      if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
        r.error = "invalid sub claim";
        return r;
      }
    r.subject = sub->get_ref<const std::string&>();
    r.has_subject = true;
  }
  if (const std::string* scope = string_member(*p, "scope")) {
    std::string_view rest = *scope;
    while (!rest.empty()) {
      size_t end = rest.find(' ');
      if (end != 0) r.scopes.emplace_back(rest.substr(0, end));
      if (end == std::string_view::npos) break;
      rest.remove_prefix(end + 1);
    }
  }
  auto aud = p->find("aud");
  if (aud != p->end() && aud->is_string()) r.audiences.push_back(aud->get_ref<const std::string&>());
  if (aud != p->end() && aud->is_array())
    for (const auto& a : *aud)
      if (a.is_string()) r.audiences.push_back(a.get_ref<const std::string&>());
  r.exp = exp;
  r.nbf = nbf_claim == Claim::ok ? nbf : 0;
  r.ok = true;
  return r;
}

const JwtResult* JwtCache::find(std::string_view token, const JwksPtr& keys, const std::string& rules_key,
                                  int64_t now, int64_t skew) {
  auto it = entries_.find(token);
  if (it == entries_.end()) return nullptr;
  const Entry& e = it->second;
  if (e.keys != keys || e.rules_key != rules_key || now > e.result.exp + skew ||
      (e.result.nbf && now + skew < e.result.nbf))
    return nullptr;
  return &e.result;
}

void JwtCache::store(std::string_view token, const JwksPtr& keys, const std::string& rules_key,
                     const JwtResult& result) {
  if (bytes_ + token.size() > 4 * 1024 * 1024) {
    entries_.clear();
    bytes_ = 0;
  }
  auto [it, inserted] = entries_.insert_or_assign(std::string(token), Entry{keys, rules_key, result});
  if (inserted) bytes_ += token.size();
}

}  // namespace pilotfish
