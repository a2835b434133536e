// SPIFFE IDs and X.509-SVID identities from outside (tls/tls.h, tls/identity_files.h). A peer's
// certificate is what a handshake hands to svid_id(); the ID it yields is then matched against a
// listener's allow list (identity_allowed) or a cluster's expected server identity (exactly).
// Every input is used three ways:
//  - as text: spiffe_id_valid() must agree with an independent reading of the syntax its
//    comment states, and identity_allowed() with the matching rule of the policy (an exact
//    entry matches itself only, "prefix*" exactly the IDs that start with prefix). Lines: the
//    last is the ID, the lines before it the allow list.
//  - when it starts with 'X': as a recipe for a certificate (URI, DNS, email and IP SANs, a CN,
//    basic constraints, key usage, extended key usage; see build_certificate), self-signed with
//    a key made once, written as DER and read back as a handshake would: svid_id() may yield an
//    ID only when the certificate has exactly one URI SAN and it is a valid SPIFFE ID (never
//    the CN), and must yield it for a plain workload certificate.
//  - as DER given to d2i_X509: when it parses, the extraction must not crash and holds to the
//    same rule.
// Any broken rule aborts.
#include <openssl/asn1.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tls/identity_files.h"
#include "tls/tls.h"

namespace {

void check(bool ok) {
  if (!ok) std::abort();
}

// ---- the SPIFFE ID syntax, read afresh from spiffe_id_valid's comment --------------------------
// "spiffe://TRUST-DOMAIN/PATH: the trust domain [a-z0-9.-_], path segments [A-Za-z0-9.-_], none
// empty, "." or ".."; nothing else (no port, user, query, fragment, escapes, controls)", at most
// 2048 bytes (the spec's limit). Written as one left-to-right pass, unlike the implementation.

bool trust_domain_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_';
}
bool path_char(char c) { return trust_domain_char(c) || (c >= 'A' && c <= 'Z'); }

bool reference_valid(std::string_view id) {
  constexpr std::string_view kScheme = "spiffe://";
  if (id.size() > 2048 || id.substr(0, kScheme.size()) != kScheme) return false;
  enum { domain, segment_start, segment } at = domain;
  size_t domain_length = 0, segment_length = 0, dots = 0;
  for (char c : id.substr(kScheme.size())) {
    if (at == domain) {
      if (c == '/') {
        at = segment_start;
      } else if (trust_domain_char(c)) {
        ++domain_length;
      } else {
        return false;
      }
    } else if (c == '/') {
      if (at == segment_start || segment_length == dots) return false;  // empty, "." or ".."
      at = segment_start;
    } else if (path_char(c)) {
      if (at == segment_start) segment_length = dots = 0;
      at = segment;
      ++segment_length;
      if (c == '.' && dots + 1 == segment_length && dots < 2) ++dots;
    } else {
      return false;
    }
  }
  if (domain_length == 0 || at == segment_start) return false;  // no trust domain; a trailing '/'
  return at == domain || segment_length != dots;
}

// Bytes a valid ID may hold: the scheme's, the alphabets', the separators.
bool id_byte(char c) { return path_char(c) || c == '/' || c == ':'; }

void check_id_syntax(const std::string& id) {
  bool valid = pilotfish::spiffe_id_valid(id);
  check(valid == reference_valid(id));
  if (!valid) return;
  check(id.starts_with("spiffe://") && std::all_of(id.begin(), id.end(), id_byte));
  // The trust domain has no capitals, no port and no user; what follows a valid ID's last
  // segment can only be more segments.
  size_t slash = id.find('/', 9);
  std::string_view domain = std::string_view(id).substr(9, slash == std::string::npos ? std::string::npos : slash - 9);
  check(!domain.empty() && domain.find_first_of(":@ABCDEFGHIJKLMNOPQRSTUVWXYZ") == std::string_view::npos);
  static const std::string kNotAfterAnId[] = {"/",  "//x", "/.",   "/..", "?q",
                                              "#f", "%2F", ":443", " ",   std::string(1, '\0')};
  for (const auto& tail : kNotAfterAnId) check(!pilotfish::spiffe_id_valid(id + tail));
  if (id.size() + 2 <= 2048) check(pilotfish::spiffe_id_valid(id + "/a"));
  std::string upper = id;
  upper.replace(0, 6, "SPIFFE");
  check(!pilotfish::spiffe_id_valid(upper));
}

// ---- allow lists: an exact entry matches itself only, "prefix*" what starts with prefix ---------

bool entry_matches(const std::string& entry, const std::string& id) {
  if (!entry.empty() && entry.back() == '*')
    return std::string_view(id).starts_with(std::string_view(entry).substr(0, entry.size() - 1));
  return entry == id;
}

void check_allow_list(const std::vector<std::string>& allow, const std::string& id) {
  using pilotfish::identity_allowed;
  bool any = false;
  for (const auto& entry : allow) {
    bool one = identity_allowed({entry}, id);
    check(one == entry_matches(entry, id));
    any = any || one;
  }
  check(identity_allowed(allow, id) == (allow.empty() || any));
  std::vector<std::string> reversed(allow.rbegin(), allow.rend());
  check(identity_allowed(reversed, id) == identity_allowed(allow, id));
  check(identity_allowed({}, id));
  check(identity_allowed({id}, id) && identity_allowed({id + "*"}, id));
  // An entry that is the ID with one byte more, or less, is another ID (unless it is a prefix).
  check(!identity_allowed({id + "x"}, id));
  if (!id.empty()) {
    std::string shorter = id.substr(0, id.size() - 1);
    if (shorter.empty() || shorter.back() != '*') check(!identity_allowed({shorter}, id));
  }
}

void check_text(std::string_view text) {
  std::string whole(text);
  check_id_syntax(whole);
  static const std::vector<std::string> kPolicy = {"spiffe://shop.local/ns/shop/sa/orders-*", "spiffe://a/b",
                                                   "spiffe://mesh.local/ns/*", "spiffe://*"};
  check_allow_list(kPolicy, whole);
  // Lines: the allow list, then the ID.
  std::vector<std::string> lines;
  size_t start = 0;
  while (lines.size() < 16) {
    size_t end = text.find('\n', start);
    lines.emplace_back(text.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start));
    if (end == std::string_view::npos) break;
    start = end + 1;
  }
  if (lines.size() < 2) return;
  std::string id = std::move(lines.back());
  lines.pop_back();
  check_id_syntax(id);
  check_allow_list(lines, id);
}

// ---- certificates ------------------------------------------------------------------------------

struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
using X509Ptr = std::unique_ptr<X509, X509Free>;

// What a built certificate holds, for the oracle.
struct Recipe {
  std::vector<std::vector<std::string>> san_uris;  // per subjectAltName extension: its URIs
  std::string cn;
  bool has_cn = false;
  int basic_constraints = 0;   // 0 none, 1 CA:FALSE, 2 CA:TRUE
  int key_usage = 0;           // 0 none, 1 digitalSignature, 2 keyCertSign and cRLSign
  int extended_key_usage = 0;  // 0 none, 1 serverAuth and clientAuth, 2 serverAuth, 3 clientAuth, 4 codeSigning
};

// The input after 'X', as operations: an op byte, a length byte (255: the rest of the input),
// the value. op % 8: 0 URI SAN, 1 URI SAN "spiffe://" + value, 2 DNS SAN, 3 email SAN, 4 IP
// SAN (the bytes as they are), 5 the CN, 6 the value's first byte picks basic constraints, key
// usage and extended key usage, 7 later SANs go into another subjectAltName extension.
struct Cursor {
  const uint8_t* p;
  size_t n;
  bool empty() const { return n == 0; }
  uint8_t byte() {
    if (n == 0) return 0;
    --n;
    return *p++;
  }
  std::string value() {
    size_t length = byte();
    if (length == 255 || length > n) length = n;
    std::string v(reinterpret_cast<const char*>(p), length);
    p += length;
    n -= length;
    return v;
  }
};

// An Ed25519 key made once. OpenSSL 3 decodes a key again each time X509_set_pubkey or
// EVP_DigestSignInit is given one (provider look-ups, most of a certificate's cost): each
// certificate takes the raw public key instead, and a copy of a signing context set up here.
struct Signer {
  EVP_PKEY* key = EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519");
  unsigned char public_key[32] = {};
  EVP_MD_CTX* context = EVP_MD_CTX_new();
  Signer() {
    size_t length = sizeof public_key;
    if (!key || !context || EVP_PKEY_get_raw_public_key(key, public_key, &length) != 1 || length != 32 ||
        EVP_DigestSignInit(context, nullptr, nullptr, nullptr, key) != 1)
      std::abort();
  }
  bool set_public_key(X509* x) const {
    auto* copy = static_cast<unsigned char*>(OPENSSL_memdup(public_key, sizeof public_key));
    if (!copy) return false;
    if (X509_PUBKEY_set0_param(X509_get_X509_PUBKEY(x), OBJ_nid2obj(NID_ED25519), V_ASN1_UNDEF, nullptr, copy,
                               sizeof public_key) == 1)
      return true;
    OPENSSL_free(copy);
    return false;
  }
  bool sign(X509* x) const {
    EVP_MD_CTX* c = EVP_MD_CTX_new();
    bool ok = c && EVP_MD_CTX_copy_ex(c, context) == 1 && X509_sign_ctx(x, c) > 0;
    EVP_MD_CTX_free(c);
    return ok;
  }
};

const Signer& signer() {
  static const Signer* s = new Signer;
  return *s;
}

bool add_general_name(GENERAL_NAMES* names, int type, const std::string& value) {
  GENERAL_NAME* name = GENERAL_NAME_new();
  ASN1_IA5STRING* text = type == GEN_IPADD ? ASN1_OCTET_STRING_new() : ASN1_IA5STRING_new();
  if (!name || !text || ASN1_STRING_set(text, value.data(), static_cast<int>(value.size())) != 1) {
    GENERAL_NAME_free(name);
    ASN1_STRING_free(text);
    return false;
  }
  GENERAL_NAME_set0_value(name, type, text);
  sk_GENERAL_NAME_push(names, name);
  return true;
}

bool add_extension(X509* x, int nid, const char* value) {
  X509_EXTENSION* e = X509V3_EXT_conf_nid(nullptr, nullptr, nid, value);
  bool ok = e && X509_add_ext(x, e, -1) == 1;
  X509_EXTENSION_free(e);
  return ok;
}

X509Ptr build_certificate(Cursor in, Recipe* r) {
  X509Ptr x(X509_new());
  std::vector<GENERAL_NAMES*> sans(1, sk_GENERAL_NAME_new_null());
  r->san_uris.assign(1, {});
  size_t entries = 0;
  while (!in.empty() && entries++ < 32) {
    uint8_t op = in.byte() % 8;
    std::string v = op == 7 ? std::string() : in.value();
    switch (op) {
      case 0:
      case 1:
        if (op == 1) v = "spiffe://" + v;
        if (add_general_name(sans.back(), GEN_URI, v)) r->san_uris.back().push_back(v);
        break;
      case 2:
        add_general_name(sans.back(), GEN_DNS, v);
        break;
      case 3:
        add_general_name(sans.back(), GEN_EMAIL, v);
        break;
      case 4:
        add_general_name(sans.back(), GEN_IPADD, v);
        break;
      case 5:
        r->cn = v;
        r->has_cn = true;
        break;
      case 6: {
        uint8_t f = v.empty() ? 0 : static_cast<uint8_t>(v[0]);
        r->basic_constraints = f % 3;
        r->key_usage = f / 3 % 3;
        r->extended_key_usage = f / 9 % 5;
        break;
      }
      case 7:
        sans.push_back(sk_GENERAL_NAME_new_null());
        r->san_uris.emplace_back();
        break;
    }
  }
  bool ok = x && X509_set_version(x.get(), X509_VERSION_3) && ASN1_INTEGER_set(X509_get_serialNumber(x.get()), 1) &&
            ASN1_TIME_set(X509_getm_notBefore(x.get()), 1'700'000'000) &&
            ASN1_TIME_set(X509_getm_notAfter(x.get()), 1'900'000'000);
  // T61String: any bytes (a UTF8String that is not UTF-8 would not be read back).
  if (ok && r->has_cn)
    ok = X509_NAME_add_entry_by_txt(X509_get_subject_name(x.get()), "CN", V_ASN1_T61STRING,
                                    reinterpret_cast<const unsigned char*>(r->cn.data()),
                                    static_cast<int>(r->cn.size()), -1, 0) == 1;
  ok = ok && X509_set_issuer_name(x.get(), X509_get_subject_name(x.get())) && signer().set_public_key(x.get());
  for (GENERAL_NAMES* names : sans) {
    // No subjectAltName without names, unless several were asked for (then empty ones too).
    if (ok && (sk_GENERAL_NAME_num(names) > 0 || sans.size() > 1))
      ok = X509_add1_ext_i2d(x.get(), NID_subject_alt_name, names, 0, X509V3_ADD_APPEND) == 1;
    GENERAL_NAMES_free(names);
  }
  static const char* kBasic[] = {nullptr, "critical,CA:FALSE", "critical,CA:TRUE"};
  static const char* kUsage[] = {nullptr, "critical,digitalSignature", "critical,keyCertSign,cRLSign"};
  static const char* kExtended[] = {nullptr, "serverAuth,clientAuth", "serverAuth", "clientAuth", "codeSigning"};
  if (ok && kBasic[r->basic_constraints])
    ok = add_extension(x.get(), NID_basic_constraints, kBasic[r->basic_constraints]);
  if (ok && kUsage[r->key_usage]) ok = add_extension(x.get(), NID_key_usage, kUsage[r->key_usage]);
  if (ok && kExtended[r->extended_key_usage])
    ok = add_extension(x.get(), NID_ext_key_usage, kExtended[r->extended_key_usage]);
  if (!ok || !signer().sign(x.get())) return nullptr;
  return x;
}

// Printable ASCII only: a refusal's reason reaches the log.
bool printable(const std::string& s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c >= 0x20 && c < 0x7f; });
}

// The rule for any certificate: an ID only from exactly one URI SAN that is a valid SPIFFE ID.
// Returns what svid_id gave for {server, client}.
std::pair<std::string, std::string> check_extraction(X509* x) {
  std::vector<std::string> uris = pilotfish::certificate_uri_sans(x);
  std::string ids[2];
  for (bool server : {true, false}) {
    std::string why;
    std::string id = pilotfish::svid_id(x, server, &why);
    if (id.empty()) {
      check(!why.empty() && printable(why));
    } else {
      check(why.empty() && uris.size() == 1 && id == uris[0] && reference_valid(id));
    }
    ids[server ? 0 : 1] = std::move(id);
  }
  ERR_clear_error();
  return {ids[0], ids[1]};
}

void check_certificate(const uint8_t* data, size_t size) {
  Recipe r;
  X509Ptr built = build_certificate(Cursor{data, size}, &r);
  ERR_clear_error();
  if (!built) return;
  unsigned char* der = nullptr;
  int der_length = i2d_X509(built.get(), &der);
  if (der_length <= 0) std::abort();  // what OpenSSL just signed, it can write
  const unsigned char* p = der;
  X509Ptr x(d2i_X509(nullptr, &p, der_length));
  OPENSSL_free(der);
  ERR_clear_error();
  check(x != nullptr);  // and read back

  // The URI SANs, byte for byte (NULs and all), in order; none when there are two extensions.
  std::vector<std::string> uris = pilotfish::certificate_uri_sans(x.get());
  check(uris == (r.san_uris.size() == 1 ? r.san_uris[0] : std::vector<std::string>{}));
  check(pilotfish::certificate_uri_sans(built.get()) == uris);

  auto [server_id, client_id] = check_extraction(x.get());
  bool one_valid_uri = r.san_uris.size() == 1 && r.san_uris[0].size() == 1 && reference_valid(r.san_uris[0][0]);
  // Never the CN: with no URI SAN there is no ID, whatever the CN says.
  if (uris.empty()) check(server_id.empty() && client_id.empty());
  // A plain workload certificate with one valid URI SAN is that identity, in both roles.
  bool plain = r.basic_constraints < 2 && r.key_usage < 2 && r.extended_key_usage < 2;
  if (one_valid_uri && plain) check(server_id == r.san_uris[0][0] && client_id == server_id);
  // A CA (CA:TRUE, with no key usage or one that allows certificate signing) is no identity.
  if (r.basic_constraints == 2 && r.key_usage != 1) check(server_id.empty() && client_id.empty());
  // An extended key usage is held to the role.
  if (r.extended_key_usage == 4) check(server_id.empty() && client_id.empty());
  if (r.extended_key_usage == 2) check(client_id.empty());
  if (r.extended_key_usage == 3) check(server_id.empty());
}

void check_der(const uint8_t* data, size_t size) {
  const unsigned char* p = data;
  X509Ptr x(d2i_X509(nullptr, &p, static_cast<long>(size)));
  ERR_clear_error();
  if (x) check_extraction(x.get());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  check_text(std::string_view(reinterpret_cast<const char*>(data), size));
  if (size > 0 && data[0] == 'X') check_certificate(data + 1, size - 1);
  check_der(data, size);
  return 0;
}
