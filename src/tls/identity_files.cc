#include "tls/identity_files.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <cerrno>
#include <cstring>
#include <memory>

#include "tls/tls.h"

namespace pilotfish {

namespace {

constexpr int64_t kWarnWithinSeconds = 7 * 24 * 3600;

struct BioFree { void operator()(BIO* b) const { BIO_free(b); } };
struct X509Free { void operator()(X509* x) const { X509_free(x); } };
struct KeyFree { void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); } };
struct StoreFree { void operator()(X509_STORE* s) const { X509_STORE_free(s); } };
struct StoreCtxFree { void operator()(X509_STORE_CTX* c) const { X509_STORE_CTX_free(c); } };
using X509Ptr = std::unique_ptr<X509, X509Free>;

std::unique_ptr<BIO, BioFree> open_file(const std::string& path, std::string* why) {
  std::unique_ptr<BIO, BioFree> bio(BIO_new_file(path.c_str(), "r"));
  if (!bio) *why = "cannot read " + path + ": " + std::strerror(errno ? errno : ENOENT);
  ERR_clear_error();
  return bio;
}

std::vector<X509Ptr> read_certs(BIO* bio) {
  std::vector<X509Ptr> out;
  while (X509* x = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr)) out.emplace_back(x);
  ERR_clear_error();  // the end of the file reads as an error
  return out;
}

int64_t unix_time(const ASN1_TIME* t) {
  std::tm tm{};
  if (ASN1_TIME_to_tm(t, &tm) != 1) return 0;
  return static_cast<int64_t>(timegm(&tm));
}

std::string date_text(int64_t unix_seconds) {
  std::time_t t = static_cast<std::time_t>(unix_seconds);
  std::tm tm;
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace

std::vector<std::string> certificate_uri_sans(X509* cert) {
  std::vector<std::string> out;
  auto* names = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  if (!names) return out;
  for (int i = 0; i < sk_GENERAL_NAME_num(names); ++i) {
    const GENERAL_NAME* name = sk_GENERAL_NAME_value(names, i);
    if (name->type != GEN_URI) continue;
    const ASN1_IA5STRING* uri = name->d.uniformResourceIdentifier;
    out.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(uri)),
                     static_cast<size_t>(ASN1_STRING_length(uri)));
  }
  GENERAL_NAMES_free(names);
  return out;
}

IdentityCheck check_identity_files(const Identity& identity, std::time_t now) {
  IdentityCheck result;
  using File = IdentityCheck::File;
  auto error = [&](File f, std::string m) { result.errors.push_back({f, std::move(m)}); };
  auto warn = [&](File f, std::string m) { result.warnings.push_back({f, std::move(m)}); };
  std::string why;

  // The certificate chain: the leaf first, then any intermediates.
  std::vector<X509Ptr> chain;
  if (auto bio = open_file(identity.cert, &why)) {
    chain = read_certs(bio.get());
    if (chain.empty()) error(File::cert, identity.cert + " holds no PEM certificate");
  } else {
    error(File::cert, why);
  }
  X509* leaf = chain.empty() ? nullptr : chain.front().get();

  if (auto bio = open_file(identity.key, &why)) {
    std::unique_ptr<EVP_PKEY, KeyFree> key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
    ERR_clear_error();
    if (!key)
      error(File::key, identity.key + " holds no PEM private key (or it is encrypted)");
    else if (leaf && X509_check_private_key(leaf, key.get()) != 1)
      error(File::key, identity.key + " does not match the certificate in " + identity.cert);
    ERR_clear_error();
  } else {
    error(File::key, why);
  }

  std::vector<X509Ptr> bundle;
  if (auto bio = open_file(identity.ca, &why)) {
    bundle = read_certs(bio.get());
    if (bundle.empty()) error(File::ca, identity.ca + " holds no PEM certificate");
  } else {
    error(File::ca, why);
  }
  for (const auto& ca : bundle) {
    int64_t t = unix_time(X509_get0_notAfter(ca.get()));
    if (t && (result.ca_not_after == 0 || t < result.ca_not_after)) result.ca_not_after = t;
  }
  if (result.ca_not_after && result.ca_not_after <= now)
    warn(File::ca, identity.ca + " holds a certificate that expired on " + date_text(result.ca_not_after));
  else if (result.ca_not_after && result.ca_not_after - now < kWarnWithinSeconds)
    warn(File::ca, identity.ca + " holds a certificate that expires on " + date_text(result.ca_not_after));

  if (!leaf) return result;

  // An X.509-SVID: exactly one URI SAN, a spiffe:// ID (never the CN).
  std::vector<std::string> uris = certificate_uri_sans(leaf);
  if (uris.empty())
    error(File::cert, identity.cert + ": the certificate has no URI SAN; an X.509-SVID carries its spiffe:// ID there");
  else if (uris.size() > 1)
    error(File::cert, identity.cert + ": the certificate has " + std::to_string(uris.size()) +
                          " URI SANs; an X.509-SVID has exactly one");
  else if (uris[0].rfind("spiffe://", 0) != 0)
    error(File::cert, identity.cert + ": its URI SAN '" + uris[0] + "' is not a spiffe:// ID");
  else if (!spiffe_id_valid(uris[0]))
    // Every peer would refuse it (they check the same syntax), so the sidecar would start and
    // then fail every mTLS connection.
    error(File::cert, identity.cert + ": its URI SAN '" + uris[0] +
                          "' is not a valid SPIFFE ID: the trust domain is lower-case letters, digits, '.', '-' "
                          "and '_' (no port, no user), and no path segment is empty, '.' or '..'");
  else
    result.spiffe_id = uris[0];

  result.cert_not_after = unix_time(X509_get0_notAfter(leaf));
  int64_t not_before = unix_time(X509_get0_notBefore(leaf));
  if (result.cert_not_after && result.cert_not_after <= now)
    error(File::cert, identity.cert + ": the certificate expired on " + date_text(result.cert_not_after));
  else if (not_before > now)
    error(File::cert, identity.cert + ": the certificate is not valid before " + date_text(not_before));
  else if (result.cert_not_after && result.cert_not_after - now < kWarnWithinSeconds)
    warn(File::cert, identity.cert + ": the certificate expires on " + date_text(result.cert_not_after) +
                         ", within 7 days");

  if (!bundle.empty()) {
    std::unique_ptr<X509_STORE, StoreFree> store(X509_STORE_new());
    for (const auto& ca : bundle) X509_STORE_add_cert(store.get(), ca.get());
    STACK_OF(X509)* intermediates = sk_X509_new_null();
    for (size_t i = 1; i < chain.size(); ++i) sk_X509_push(intermediates, chain[i].get());
    std::unique_ptr<X509_STORE_CTX, StoreCtxFree> ctx(X509_STORE_CTX_new());
    if (ctx && X509_STORE_CTX_init(ctx.get(), store.get(), leaf, intermediates) == 1) {
      // Validity in time is reported above, on its own; here only the chain is in question.
      X509_VERIFY_PARAM_set_flags(X509_STORE_CTX_get0_param(ctx.get()), X509_V_FLAG_NO_CHECK_TIME);
      if (X509_verify_cert(ctx.get()) != 1) {
        int err = X509_STORE_CTX_get_error(ctx.get());
        error(File::cert, identity.cert + " does not chain to " + identity.ca + ": " +
                              X509_verify_cert_error_string(err));
      }
    }
    sk_X509_free(intermediates);
    ERR_clear_error();
  }
  return result;
}

}  // namespace pilotfish
