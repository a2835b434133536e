// SHA-256 of a byte string, for the policy's fingerprint and the status page's CSP hashes.
#pragma once

#include <array>
#include <cstddef>
#include <string>
#include <string_view>

namespace pilotfish {

using Sha256Digest = std::array<unsigned char, 32>;

// OpenSSL's own SHA-256 code, called directly: the EVP interface would fetch the digest from a
// provider, and loading OpenSSL's default provider costs a process 1.4 MiB of resident memory
// (issue 18), which a sidecar that terminates no TLS should not pay just to hash its policy.
Sha256Digest sha256(std::string_view bytes);

std::string sha256_hex(std::string_view bytes);     // 64 lowercase hex digits
// A digest's bytes (this one's, or another from OpenSSL) as lowercase hex.
std::string digest_hex(const unsigned char* bytes, size_t length);
std::string sha256_base64(std::string_view bytes);  // standard base64, padded (44 characters)

}  // namespace pilotfish
