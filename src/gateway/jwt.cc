#include "gateway/jwt.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/param_build.h>
#include <yaml-cpp/yaml.h>

#include <array>
#include <fstream>
#include <sstream>

namespace pilotfish {

namespace {

// JSON is read with yaml-cpp (JSON is YAML); a document that is not an object is refused.
bool parse_json_object(const std::string& text, YAML::Node* out, std::string* error) {
  try {
    *out = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    *error = "not JSON";
    return false;
  }
  if (!out->IsMap()) {
    *error = "not a JSON object";
    return false;
  }
  return true;
}

std::string scalar(const YAML::Node& n, const char* key) {
  YAML::Node v = n[key];
  return v && v.IsScalar() ? v.Scalar() : std::string();
}

bool number(const YAML::Node& n, const char* key, int64_t* out) {
  YAML::Node v = n[key];
  // A JSON number, not a string that looks like one (yaml-cpp tags quoted scalars "!").
  if (!v || !v.IsScalar() || v.Tag() == "!") return false;
  try {
    *out = static_cast<int64_t>(v.as<double>());
    return true;
  } catch (const YAML::Exception&) {
    return false;
  }
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

std::string base64url_decode(std::string_view in, bool* ok) {
  static const auto table = [] {
    std::array<int8_t, 256> t;
    t.fill(-1);
    const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for (int i = 0; i < 64; ++i) t[static_cast<unsigned char>(alphabet[i])] = static_cast<int8_t>(i);
    return t;
  }();
  while (!in.empty() && in.back() == '=') in.remove_suffix(1);
  std::string out;
  out.reserve(in.size() * 3 / 4);
  uint32_t acc = 0;
  int bits = 0;
  *ok = in.size() % 4 != 1;
  for (char c : in) {
    int v = table[static_cast<unsigned char>(c)];
    if (v < 0) {
      *ok = false;
      return {};
    }
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xff);
    }
  }
  return out;
}

Jwks::~Jwks() {
  for (auto& k : keys_) EVP_PKEY_free(k.pkey);
}

std::shared_ptr<const Jwks> Jwks::parse(const std::string& json, std::string* error) {
  YAML::Node doc;
  if (!parse_json_object(json, &doc, error)) return nullptr;
  YAML::Node keys = doc["keys"];
  if (!keys || !keys.IsSequence()) {
    *error = "no \"keys\" array";
    return nullptr;
  }
  std::shared_ptr<Jwks> out(new Jwks());
  for (size_t i = 0; i < keys.size(); ++i) {
    const YAML::Node& k = keys[i];
    if (!k.IsMap()) continue;
    std::string kty = scalar(k, "kty"), use = scalar(k, "use");
    if (!use.empty() && use != "sig") continue;
    Key key;
    key.kid = scalar(k, "kid");
    if (kty == "RSA") {
      key.alg = "RS256";
      key.pkey = rsa_key(scalar(k, "n"), scalar(k, "e"));
    } else if (kty == "EC") {
      key.alg = "ES256";
      key.pkey = ec_key(scalar(k, "crv"), scalar(k, "x"), scalar(k, "y"));
    }
    std::string alg = scalar(k, "alg");
    if (!key.pkey || (!alg.empty() && alg != key.alg)) {
      EVP_PKEY_free(key.pkey);
      *error = "key " + std::to_string(i) + (key.kid.empty() ? "" : " (" + key.kid + ")") +
               " is not an RSA (2048 bits or more) or EC P-256 signing key";
      return nullptr;
    }
    out->keys_.push_back(key);
  }
  if (out->keys_.empty()) {
    *error = "no RS256 or ES256 key";
    return nullptr;
  }
  return out;
}

std::shared_ptr<const Jwks> Jwks::load(const std::string& path, std::string* error) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    *error = "cannot read " + path;
    return nullptr;
  }
  std::stringstream text;
  text << in.rdbuf();
  auto keys = parse(text.str(), error);
  if (!keys) *error = path + ": " + *error;
  return keys;
}

JwtResult verify_jwt(std::string_view token, const Jwks& keys, const JwtRules& rules, int64_t now) {
  JwtResult r;
  size_t dot1 = token.find('.');
  size_t dot2 = dot1 == std::string_view::npos ? dot1 : token.find('.', dot1 + 1);
  if (dot2 == std::string_view::npos || token.find('.', dot2 + 1) != std::string_view::npos || token.size() > 16384) {
    r.error = "malformed token";
    return r;
  }
  bool ok1 = false, ok2 = false, ok3 = false;
  std::string header = base64url_decode(token.substr(0, dot1), &ok1);
  std::string payload = base64url_decode(token.substr(dot1 + 1, dot2 - dot1 - 1), &ok2);
  std::string signature = base64url_decode(token.substr(dot2 + 1), &ok3);
  YAML::Node h, p;
  std::string why;
  if (!ok1 || !ok2 || !ok3 || !parse_json_object(header, &h, &why) || !parse_json_object(payload, &p, &why)) {
    r.error = "malformed token";
    return r;
  }
  std::string alg = scalar(h, "alg"), kid = scalar(h, "kid");
  if (alg != "RS256" && alg != "ES256") {
    r.error = "unsupported alg '" + alg.substr(0, 16) + "'";  // "none" and HMAC never
    return r;
  }
  bool verified = false, candidate = false;
  for (const auto& key : keys.keys()) {
    if (key.alg != alg || (!kid.empty() && !key.kid.empty() && key.kid != kid)) continue;
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
  if (!number(p, "exp", &exp)) {
    r.error = "no exp claim";
    return r;
  }
  if (now > exp + rules.clock_skew_seconds) {
    r.error = "token expired";
    return r;
  }
  if (number(p, "nbf", &nbf) && now + rules.clock_skew_seconds < nbf) {
    r.error = "token not valid yet";
    return r;
  }
  if (!rules.issuer.empty() && scalar(p, "iss") != rules.issuer) {
    r.error = "wrong issuer";
    return r;
  }
  if (!rules.audiences.empty()) {
    YAML::Node aud = p["aud"];
    bool match = false;
    auto check = [&](const std::string& a) {
      for (const auto& want : rules.audiences) match = match || a == want;
    };
    if (aud && aud.IsScalar()) check(aud.Scalar());
    if (aud && aud.IsSequence())
      for (size_t i = 0; i < aud.size(); ++i)
        if (aud[i].IsScalar()) check(aud[i].Scalar());
    if (!match) {
      r.error = "wrong audience";
      return r;
    }
  }
  r.subject = scalar(p, "sub");
  r.exp = exp;
  r.nbf = number(p, "nbf", &nbf) ? nbf : 0;
  for (char c : r.subject)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      r.error = "invalid sub claim";  // it becomes a header value
      return r;
    }
  r.ok = true;
  return r;
}

const std::string* JwtCache::find(std::string_view token, const JwksPtr& keys, const std::string& rules_key,
                                  int64_t now, int64_t skew) {
  auto it = entries_.find(token);
  if (it == entries_.end()) return nullptr;
  const Entry& e = it->second;
  if (e.keys != keys || e.rules_key != rules_key || now > e.exp + skew || (e.nbf && now + skew < e.nbf))
    return nullptr;
  return &e.subject;
}

void JwtCache::store(std::string_view token, const JwksPtr& keys, const std::string& rules_key,
                     const JwtResult& result) {
  if (bytes_ + token.size() > 4 * 1024 * 1024) {
    entries_.clear();
    bytes_ = 0;
  }
  auto [it, inserted] = entries_.insert_or_assign(std::string(token), Entry{keys, rules_key, result.subject,
                                                                             result.exp, result.nbf});
  if (inserted) bytes_ += token.size();
}

JwksRegistry& JwksRegistry::instance() {
  static JwksRegistry registry;
  return registry;
}

bool JwksRegistry::load(const std::string& path, std::string* error) {
  JwksPtr keys = Jwks::load(path, error);
  if (!keys) return false;
  std::lock_guard<std::mutex> lock(mutex_);
  by_path_[path] = keys;
  generation_.fetch_add(1, std::memory_order_release);
  return true;
}

JwksPtr JwksRegistry::get(const std::string& path) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = by_path_.find(path);
  return it == by_path_.end() ? nullptr : it->second;
}

}  // namespace pilotfish
