// OpenSSL 3 deprecates the low-level SHA256_* functions in favour of EVP, whose first use loads
// the default provider (see sha256.h); they remain part of OpenSSL 3's API and use the same
// assembly as the provider does.
#define OPENSSL_SUPPRESS_DEPRECATED
#include "text/sha256.h"

#include <openssl/evp.h>
#include <openssl/sha.h>

namespace pilotfish {

Sha256Digest sha256(std::string_view bytes) {
  Sha256Digest digest{};
  SHA256_CTX ctx;
  SHA256_Init(&ctx);
  SHA256_Update(&ctx, bytes.data(), bytes.size());
  SHA256_Final(digest.data(), &ctx);
  return digest;
}

std::string sha256_hex(std::string_view bytes) {
  Sha256Digest digest = sha256(bytes);
  return digest_hex(digest.data(), digest.size());
}

std::string digest_hex(const unsigned char* bytes, size_t length) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(length * 2, '\0');
  for (size_t i = 0; i < length; ++i) {
    out[2 * i] = kHex[bytes[i] >> 4];
    out[2 * i + 1] = kHex[bytes[i] & 0xf];
  }
  return out;
}

std::string sha256_base64(std::string_view bytes) {
  Sha256Digest digest = sha256(bytes);
  unsigned char b64[45];  // EVP_EncodeBlock is plain encoding: it fetches nothing
  int n = EVP_EncodeBlock(b64, digest.data(), static_cast<int>(digest.size()));
  return std::string(reinterpret_cast<char*>(b64), static_cast<size_t>(n));
}

}  // namespace pilotfish
