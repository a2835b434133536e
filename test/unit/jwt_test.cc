// JWT and JWKS strictness: strict JSON, one spelling per token, claim types, and what a JWKS
// file may hold. Tokens are signed here with a key made for the test.
#include <gtest/gtest.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>

#include <memory>
#include <string>

#include "gateway/jwt.h"
#include "json/json_reader.h"

namespace pilotfish {
namespace {

std::string b64url(std::string_view in) {
  static const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (unsigned char c : in) {
    acc = (acc << 8) | c;
    bits += 8;
    while (bits >= 6) {
      bits -= 6;
      out += alphabet[(acc >> bits) & 63];
    }
  }
  if (bits) out += alphabet[(acc << (6 - bits)) & 63];
  return out;
}

// An EC P-256 key, its JWKS entry, and ES256 signing.
class TestKey {
 public:
  TestKey() : key_(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256")) {}
  ~TestKey() { EVP_PKEY_free(key_); }

  std::string jwk(const std::string& kid) const {
    unsigned char point[65];
    size_t len = 0;
    EVP_PKEY_get_octet_string_param(key_, OSSL_PKEY_PARAM_PUB_KEY, point, sizeof point, &len);
    std::string x(reinterpret_cast<char*>(point) + 1, 32), y(reinterpret_cast<char*>(point) + 33, 32);
    return R"({"kty":"EC","crv":"P-256","kid":")" + kid + R"(","x":")" + b64url(x) + R"(","y":")" + b64url(y) +
           "\"}";
  }

  // Signs header.payload as they are given (raw JSON text, so that tests can write any JSON).
  std::string token(const std::string& header, const std::string& payload) const {
    std::string signing_input = b64url(header) + "." + b64url(payload);
    EVP_MD_CTX* md = EVP_MD_CTX_new();
    size_t der_len = 0;
    EVP_DigestSignInit(md, nullptr, EVP_sha256(), nullptr, key_);
    EVP_DigestSign(md, nullptr, &der_len, reinterpret_cast<const unsigned char*>(signing_input.data()),
                   signing_input.size());
    std::string der(der_len, '\0');
    EVP_DigestSign(md, reinterpret_cast<unsigned char*>(der.data()), &der_len,
                   reinterpret_cast<const unsigned char*>(signing_input.data()), signing_input.size());
    EVP_MD_CTX_free(md);
    const unsigned char* p = reinterpret_cast<const unsigned char*>(der.data());
    ECDSA_SIG* sig = d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(der_len));
    unsigned char rs[64];
    BN_bn2binpad(ECDSA_SIG_get0_r(sig), rs, 32);
    BN_bn2binpad(ECDSA_SIG_get0_s(sig), rs + 32, 32);
    ECDSA_SIG_free(sig);
    return signing_input + "." + b64url(std::string(reinterpret_cast<char*>(rs), 64));
  }

 private:
  EVP_PKEY* key_;
};

constexpr int64_t kNow = 1'800'000'000;
const std::string kHeader = R"({"alg":"ES256","kid":"k1"})";

class JwtClaims : public ::testing::Test {
 protected:
  JwtClaims() {
    std::string err;
    keys_ = Jwks::parse("{\"keys\":[" + key_.jwk("k1") + "]}", &err);
  }
  JwtResult verify(const std::string& payload, const std::string& header = kHeader) {
    return verify_jwt(key_.token(header, payload), *keys_, JwtRules{}, kNow);
  }
  TestKey key_;
  JwksPtr keys_;
};

TEST_F(JwtClaims, AGoodTokenCarriesItsSubject) {
  ASSERT_TRUE(keys_);
  JwtResult r = verify(R"({"sub":"carol","exp":1800000600})");
  EXPECT_TRUE(r.ok) << r.error;
  EXPECT_TRUE(r.has_subject);
  EXPECT_EQ(r.subject, "carol");
}

TEST_F(JwtClaims, WithoutSubNoSubjectAtAll) {
  JwtResult r = verify(R"({"exp":1800000600})");
  EXPECT_TRUE(r.ok) << r.error;
  EXPECT_FALSE(r.has_subject);
}

TEST_F(JwtClaims, SubMustBeANonEmptyStringWithoutControls) {
  for (const char* payload : {R"({"sub":["a","b"],"exp":1800000600})", R"({"sub":{"a":1},"exp":1800000600})",
                              R"({"sub":42,"exp":1800000600})", R"({"sub":"","exp":1800000600})",
                              R"({"sub":"a\r\nx: y","exp":1800000600})", R"({"sub":"a\u0000b","exp":1800000600})",
                              R"({"sub":null,"exp":1800000600})"}) {
    JwtResult r = verify(payload);
    EXPECT_FALSE(r.ok) << payload;
    EXPECT_STREQ(r.error, "invalid sub claim") << payload;
  }
}

TEST_F(JwtClaims, DatesMustBeNumbers) {
  EXPECT_STREQ(verify(R"({"sub":"a","exp":"1800000600"})").error, "invalid exp claim");
  EXPECT_STREQ(verify(R"({"sub":"a","exp":1800000600,"nbf":"1700000000"})").error, "invalid nbf claim");
  EXPECT_STREQ(verify(R"({"sub":"a","exp":1800000600,"nbf":true})").error, "invalid nbf claim");
  EXPECT_TRUE(verify(R"({"sub":"a","exp":1800000600.5,"nbf":1700000000})").ok);
  EXPECT_STREQ(verify(R"({"sub":"a","exp":1800000600,"nbf":1800000600})").error, "token not valid yet");
  EXPECT_STREQ(verify(R"({"sub":"a"})").error, "no exp claim");
}

TEST_F(JwtClaims, OnlyStrictJson) {
  // YAML that yaml-cpp took for JSON, duplicate keys (which parsers resolve differently),
  // trailing garbage, comments: each is a malformed token.
  for (const char* payload : {"sub: bob\nexp: 1800000600", R"({"sub":"alice","sub":"bob","exp":1800000600})",
                              R"({"sub":"a","exp":1800000600} x)", R"({"sub":"a", /* c */ "exp":1800000600})",
                              R"({"sub":'a',"exp":1800000600})", R"({"sub":"a","exp":1800000600,})",
                              "{\"sub\":\"\xff\",\"exp\":1800000600}"}) {
    JwtResult r = verify(payload);
    EXPECT_FALSE(r.ok) << payload;
    EXPECT_STREQ(r.error, "malformed token") << payload;
  }
  EXPECT_STREQ(verify(R"({"sub":"a","exp":1800000600})", R"({"alg":"ES256","alg":"none"})").error, "malformed token");
}

TEST_F(JwtClaims, TheErrorNeverCarriesTheTokensText) {
  // The alg of an unverified header once reached WWW-Authenticate as it was.
  JwtResult r = verify(R"({"sub":"a","exp":1800000600})", R"({"alg":"x\r\nSet-Cookie: s=1"})");
  EXPECT_STREQ(r.error, "unsupported alg");
  r = verify(R"({"sub":"a","exp":1800000600})", R"({"alg":"ES256","crit":["b64"]})");
  EXPECT_STREQ(r.error, "unsupported crit header");
  r = verify(R"({"sub":"a","exp":1800000600})", R"({"alg":"ES256","kid":7})");
  EXPECT_STREQ(r.error, "malformed token");
}

TEST_F(JwtClaims, OneSpellingPerToken) {
  std::string good = key_.token(kHeader, R"({"sub":"a","exp":1800000600})");
  ASSERT_TRUE(verify_jwt(good, *keys_, JwtRules{}, kNow).ok);
  // Padding, and a last character whose unused bits are set, spell the same bytes differently.
  size_t dot = good.find('.');
  std::string padded = good.substr(0, dot) + "=" + good.substr(dot);
  EXPECT_FALSE(verify_jwt(padded, *keys_, JwtRules{}, kNow).ok);
  bool ok = true;
  EXPECT_EQ(base64url_decode("aGVsbG8", &ok), "hello");
  EXPECT_TRUE(ok);
  base64url_decode("aGVsbG9", &ok);  // '9' leaves bits set past the last byte
  EXPECT_FALSE(ok);
  base64url_decode("aGVsbG8=", &ok);
  EXPECT_FALSE(ok);
}

TEST(Jwks, AnEmptySetIsValidAndRefusesEveryToken) {
  std::string err;
  std::vector<std::string> warnings;
  JwksPtr keys = Jwks::parse(R"({"keys": []})", &err, &warnings);
  ASSERT_TRUE(keys) << err;
  EXPECT_TRUE(keys->keys().empty());
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("every token is refused"), std::string::npos);
  TestKey key;
  EXPECT_STREQ(verify_jwt(key.token(kHeader, R"({"exp":1800000600})"), *keys, JwtRules{}, kNow).error,
               "no key for this token");
}

TEST(Jwks, KeysItCannotUseAreSkippedAndTheRestLoad) {
  TestKey key;
  // A P-384 key being rotated in, an HMAC key, a short RSA key, an encryption key.
  std::string doc = R"({"keys": [{"kty":"EC","crv":"P-384","kid":"new-384","x":"AAAA","y":"AAAA"},)"
                    R"({"kty":"oct","kid":"hmac","k":"c2VjcmV0"},)"
                    R"({"kty":"RSA","kid":"short","n":"AQAB","e":"AQAB"},)"
                    R"({"kty":"EC","use":"enc","kid":"enc","crv":"P-256","x":"AAAA","y":"AAAA"},)" +
                    key.jwk("k1") + "]}";
  std::string err;
  std::vector<std::string> warnings;
  JwksPtr keys = Jwks::parse(doc, &err, &warnings);
  ASSERT_TRUE(keys) << err;
  ASSERT_EQ(keys->keys().size(), 1u);
  EXPECT_EQ(keys->keys()[0].kid, "k1");
  ASSERT_EQ(warnings.size(), 4u);
  for (const char* kid : {"new-384", "hmac", "short", "enc"}) {
    bool named = false;
    for (const auto& w : warnings) named = named || w.find(std::string("kid ") + kid) != std::string::npos;
    EXPECT_TRUE(named) << kid;
  }
  EXPECT_TRUE(verify_jwt(key.token(kHeader, R"({"exp":1800000600})"), *keys, JwtRules{}, kNow).ok);
}

TEST(Jwks, ADocumentThatIsNotAKeySetIsRefused) {
  std::string err;
  EXPECT_EQ(Jwks::parse("{not json", &err), nullptr);
  EXPECT_EQ(Jwks::parse("keys: []", &err), nullptr);  // YAML, not JSON
  EXPECT_EQ(Jwks::parse(R"({"keys": {}})", &err), nullptr);
  EXPECT_EQ(Jwks::parse(R"({"keys": [], "keys": []})", &err), nullptr);
  EXPECT_EQ(Jwks::parse("[]", &err), nullptr);
}

TEST(StrictJson, LimitsAndDuplicates) {
  std::string err;
  EXPECT_TRUE(parse_json_strict(R"({"a":[1,2,{"b":null}],"c":"\u00e9"})", JsonLimits{}, &err));
  EXPECT_FALSE(parse_json_strict(R"({"a":1,"a":2})", JsonLimits{}, &err));
  EXPECT_EQ(err, "duplicate key");
  EXPECT_TRUE(parse_json_strict(R"({"a":{"x":1},"b":{"x":2}})", JsonLimits{}, &err));  // same key, two objects
  std::string deep(40, '['), closing(40, ']');
  EXPECT_FALSE(parse_json_strict(deep + closing, JsonLimits{}, &err));
  EXPECT_EQ(err, "nested too deeply");
  EXPECT_FALSE(parse_json_strict(std::string(100, ' ') + "{}", JsonLimits{64, 16}, &err));
  EXPECT_EQ(err, "too large");
  EXPECT_FALSE(parse_json_strict("", JsonLimits{}, &err));
  EXPECT_FALSE(parse_json_strict("{} {}", JsonLimits{}, &err));
  EXPECT_FALSE(parse_json_strict("\"\xc3\x28\"", JsonLimits{}, &err));  // not UTF-8
}

}  // namespace
}  // namespace pilotfish
