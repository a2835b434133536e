// text/sha256: OpenSSL's low-level SHA-256, which loads no provider, against the published test
// vectors and against EVP (the provider's implementation) on random inputs.
#include "text/sha256.h"

#include <gtest/gtest.h>
#include <openssl/evp.h>

#include <random>
#include <string>

namespace pilotfish {
namespace {

TEST(Sha256, PublishedVectors) {
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(sha256_hex(std::string(1000000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  EXPECT_EQ(sha256_base64("abc"), "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=");
}

TEST(Sha256, SameAsEvpOnRandomInputs) {
  std::mt19937 rng(18);
  for (int i = 0; i < 300; ++i) {
    std::string bytes(rng() % 3000, '\0');
    for (char& c : bytes) c = static_cast<char>(rng());
    unsigned char want[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    ASSERT_EQ(EVP_Digest(bytes.data(), bytes.size(), want, &length, EVP_sha256(), nullptr), 1);
    ASSERT_EQ(length, 32u);
    Sha256Digest got = sha256(bytes);
    ASSERT_EQ(std::string(reinterpret_cast<char*>(want), length), std::string(got.begin(), got.end())) << i;
    unsigned char b64[64];
    int n = EVP_EncodeBlock(b64, want, static_cast<int>(length));
    ASSERT_EQ(sha256_base64(bytes), std::string(reinterpret_cast<char*>(b64), static_cast<size_t>(n))) << i;
  }
}

}  // namespace
}  // namespace pilotfish
