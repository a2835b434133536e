#pragma once
// Checks the workload identity files a policy names (identity.cert/key/ca) the way a TLS
// handshake will use them: the files exist and parse, the key matches the certificate, the leaf
// is an X.509-SVID (exactly one URI SAN, a spiffe:// ID), it chains to the trust bundle, and it
// is valid now. `pilotfish check`, startup and every reload go through it, so a broken file is
// refused with a clear message before anything uses it.

#include <cstdint>
#include <ctime>
#include <string>
#include <vector>

#include "pilotfish/policy.h"

struct x509_st;  // OpenSSL's X509

namespace pilotfish {

struct IdentityCheck {
  enum class File { cert, key, ca };
  struct Problem {
    File file;
    std::string message;
  };
  std::vector<Problem> errors;
  std::vector<Problem> warnings;  // e.g. expires within 7 days
  std::string spiffe_id;          // of the leaf, when it has exactly one
  int64_t cert_not_after = 0;     // Unix seconds; 0 when unknown
  int64_t ca_not_after = 0;       // the earliest in the bundle
};

IdentityCheck check_identity_files(const Identity& identity, std::time_t now);

// The URI SANs of a certificate, in order.
std::vector<std::string> certificate_uri_sans(x509_st* cert);

}  // namespace pilotfish
