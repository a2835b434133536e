#include "tls/tls.h"

#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <cstring>
#include <ctime>
#include <mutex>
#include <string_view>

#include "text/sha256.h"
#include "tls/identity_files.h"

namespace pilotfish {

namespace {

// TLS 1.2 suites: ECDHE key exchange with AEAD only (no CBC, no RSA key exchange). TLS 1.3's
// suites are all AEAD; OpenSSL's default list stands.
constexpr const char* kTls12Ciphers =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";
constexpr const char* kGroups = "X25519:P-256:P-384";
constexpr unsigned char kAlpnHttp11[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
constexpr unsigned char kAlpnH2Http11[] = {2, 'h', '2', 8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
constexpr unsigned char kAlpnH2[] = {2, 'h', '2'};
constexpr unsigned char kSessionIdContext[] = "pilotfish";
// A resumed session skips the certificate exchange: it may not outlive this by much.
constexpr long kSessionLifetimeSeconds = 3600;

std::atomic<uint64_t> g_next_generation{1};

std::string openssl_error(const char* fallback) {
  unsigned long e = ERR_peek_last_error();
  std::string out;
  if (e) {
    const char* reason = ERR_reason_error_string(e);
    out = reason ? reason : "error " + std::to_string(e);
  } else {
    out = fallback;
  }
  ERR_clear_error();
  return out;
}

TlsState* state_of(SSL* ssl) { return static_cast<TlsState*>(SSL_get_app_data(ssl)); }

// ---- the BIO: ciphertext in from the read buffer, out into the stream's output string ----------

int bio_write(BIO* bio, const char* data, int length) {
  auto* t = static_cast<TlsState*>(BIO_get_data(bio));
  BIO_clear_retry_flags(bio);
  t->cipher_out()->append(data, static_cast<size_t>(length));
  return length;
}

int bio_read(BIO* bio, char* out, int capacity) {
  auto* t = static_cast<TlsState*>(BIO_get_data(bio));
  BIO_clear_retry_flags(bio);
  if (t->in_length == 0) {
    BIO_set_retry_read(bio);
    return -1;
  }
  size_t n = std::min(t->in_length, static_cast<size_t>(capacity));
  std::memcpy(out, t->in_data, n);
  t->in_data += n;
  t->in_length -= n;
  return static_cast<int>(n);
}

long bio_ctrl(BIO* bio, int cmd, long, void*) {
  auto* t = static_cast<TlsState*>(BIO_get_data(bio));
  switch (cmd) {
    case BIO_CTRL_FLUSH: return 1;
    case BIO_CTRL_PENDING: return t ? static_cast<long>(t->in_length) : 0;
    case BIO_CTRL_WPENDING: return 0;
    default: return 0;
  }
}

int bio_create(BIO* bio) {
  BIO_set_init(bio, 1);
  return 1;
}

int bio_destroy(BIO*) { return 1; }

BIO_METHOD* bio_method() {
  static BIO_METHOD* method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "pilotfish stream");
    BIO_meth_set_write(m, bio_write);
    BIO_meth_set_read(m, bio_read);
    BIO_meth_set_ctrl(m, bio_ctrl);
    BIO_meth_set_create(m, bio_create);
    BIO_meth_set_destroy(m, bio_destroy);
    return m;
  }();
  return method;
}

// ---- OpenSSL callbacks -------------------------------------------------------------------------

// The chain is verified by OpenSSL against identity.ca (with the role's purpose: a client
// certificate must allow client authentication); the leaf is then held to the SVID rules, and a
// server's identity to the one the cluster expects.
int verify_callback(int ok, X509_STORE_CTX* store) {
  SSL* ssl = static_cast<SSL*>(X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx()));
  TlsState* t = ssl ? state_of(ssl) : nullptr;
  if (!t) return ok;
  if (!ok) {
    int err = X509_STORE_CTX_get_error(store);
    t->set_error(std::string("peer certificate refused: ") + X509_verify_cert_error_string(err));
    return 0;
  }
  if (X509_STORE_CTX_get_error_depth(store) != 0) return 1;
  X509* leaf = X509_STORE_CTX_get_current_cert(store);
  std::string why;
  std::string id = svid_id(leaf, /*server=*/!t->server(), &why);
  if (id.empty()) {
    t->set_error("peer certificate refused: " + why);
    X509_STORE_CTX_set_error(store, X509_V_ERR_APPLICATION_VERIFICATION);
    return 0;
  }
  if (!t->server() && id != t->options().expected_peer) {
    t->set_error("the server presented " + id + ", expected " + t->options().expected_peer);
    X509_STORE_CTX_set_error(store, X509_V_ERR_APPLICATION_VERIFICATION);
    return 0;
  }
  return 1;
}

int alpn_select(SSL* ssl, const unsigned char** out, unsigned char* out_length, const unsigned char* in,
                unsigned in_length, void*) {
  TlsState* t = state_of(ssl);
  if (!t || !t->options().http) return SSL_TLSEXT_ERR_NOACK;
  unsigned char* selected = nullptr;
  bool h2 = t->options().h2;
  if (SSL_select_next_proto(&selected, out_length, h2 ? kAlpnH2Http11 : kAlpnHttp11,
                            h2 ? sizeof kAlpnH2Http11 : sizeof kAlpnHttp11, in, in_length) == OPENSSL_NPN_NEGOTIATED) {
    *out = selected;
    return SSL_TLSEXT_ERR_OK;
  }
  t->set_error(h2 ? "the client offered no ALPN protocol this listener speaks (h2, http/1.1)"
                  : "the client offered no ALPN protocol this listener speaks (http/1.1)");
  return SSL_TLSEXT_ERR_ALERT_FATAL;
}

int new_session(SSL* ssl, SSL_SESSION* session) {
  TlsState* t = state_of(ssl);
  if (t) t->confirm();  // the server sends tickets once it has accepted our certificate
  if (!t || !t->options().sessions || !t->material()) return 0;
  t->options().sessions->store(session, t->material()->generation());
  return 1;  // the slot keeps the reference
}

bool configure_common(SSL_CTX* ctx, const Identity& identity, std::string* error) {
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE);
  // Idle keep-alive connections give their record buffers back.
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  if (SSL_CTX_set_cipher_list(ctx, kTls12Ciphers) != 1 || SSL_CTX_set1_groups_list(ctx, kGroups) != 1) {
    *error = "cannot set the TLS cipher suites: " + openssl_error("unknown");
    return false;
  }
  if (SSL_CTX_use_certificate_chain_file(ctx, identity.cert.c_str()) != 1) {
    *error = "cannot use " + identity.cert + ": " + openssl_error("unreadable");
    return false;
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, identity.key.c_str(), SSL_FILETYPE_PEM) != 1) {
    *error = "cannot use " + identity.key + ": " + openssl_error("unreadable");
    return false;
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    *error = identity.key + " does not match the certificate in " + identity.cert;
    ERR_clear_error();
    return false;
  }
  if (SSL_CTX_load_verify_file(ctx, identity.ca.c_str()) != 1) {
    *error = "cannot use " + identity.ca + ": " + openssl_error("unreadable");
    return false;
  }
  return true;
}

}  // namespace

// ---- identities --------------------------------------------------------------------------------

bool spiffe_id_valid(const std::string& id) {
  // spiffe://TRUST-DOMAIN/PATH: the trust domain [a-z0-9.-_], path segments [A-Za-z0-9.-_],
  // none empty, "." or ".."; nothing else (no port, user, query, fragment, escapes, controls).
  constexpr std::string_view kScheme = "spiffe://";
  if (id.size() <= kScheme.size() || id.size() > 2048 || id.compare(0, kScheme.size(), kScheme) != 0) return false;
  size_t slash = id.find('/', kScheme.size());
  std::string_view domain(id.data() + kScheme.size(), (slash == std::string::npos ? id.size() : slash) - kScheme.size());
  if (domain.empty()) return false;
  for (char c : domain)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_')) return false;
  if (slash == std::string::npos) return true;
  std::string_view path(id.data() + slash, id.size() - slash);
  size_t start = 1;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string_view::npos) end = path.size();
    std::string_view segment = path.substr(start, end - start);
    if (segment.empty() || segment == "." || segment == "..") return false;
    for (char c : segment)
      if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '-' ||
            c == '_'))
        return false;
    start = end + 1;
  }
  return true;
}

std::string svid_id(X509* leaf, bool server, std::string* why) {
  std::vector<std::string> uris = certificate_uri_sans(leaf);
  if (uris.empty()) {
    *why = "it has no URI SAN (an X.509-SVID carries its spiffe:// ID there, never in the CN)";
    return {};
  }
  if (uris.size() > 1) {
    *why = "it has " + std::to_string(uris.size()) + " URI SANs; an X.509-SVID has exactly one";
    return {};
  }
  if (!spiffe_id_valid(uris[0])) {
    std::string shown;
    for (char c : uris[0].substr(0, 200)) shown += (c >= 0x20 && c < 0x7f) ? c : '?';
    *why = "its URI SAN '" + shown + "' is not a valid spiffe:// ID";
    return {};
  }
  if (X509_check_ca(leaf) != 0) {
    *why = "it is a CA certificate, not a workload's";
    return {};
  }
  if (X509_check_purpose(leaf, server ? X509_PURPOSE_SSL_SERVER : X509_PURPOSE_SSL_CLIENT, 0) != 1) {
    *why = std::string("its key usage does not allow TLS ") + (server ? "server" : "client") + " authentication";
    ERR_clear_error();
    return {};
  }
  return uris[0];
}

bool identity_allowed(const std::vector<std::string>& allow, const std::string& id) {
  if (allow.empty()) return true;
  for (const auto& a : allow) {
    if (!a.empty() && a.back() == '*') {
      if (id.size() >= a.size() - 1 && id.compare(0, a.size() - 1, a, 0, a.size() - 1) == 0) return true;
    } else if (a == id) {
      return true;
    }
  }
  return false;
}

// ---- material ----------------------------------------------------------------------------------

std::shared_ptr<const TlsMaterial> TlsMaterial::build(const Identity& identity, std::string* error) {
  IdentityCheck check = check_identity_files(identity, std::time(nullptr));
  if (!check.errors.empty()) {
    *error = check.errors.front().message;
    for (size_t i = 1; i < check.errors.size(); ++i) *error += "; " + check.errors[i].message;
    return nullptr;
  }
  std::shared_ptr<TlsMaterial> m(new TlsMaterial());
  m->identity_ = identity;
  m->spiffe_id_ = check.spiffe_id;
  m->cert_not_after_ = check.cert_not_after;
  m->ca_not_after_ = check.ca_not_after;
  m->identity_.spiffe_id = check.spiffe_id;
  m->identity_.cert_not_after = check.cert_not_after;
  m->identity_.ca_not_after = check.ca_not_after;
  m->generation_ = g_next_generation.fetch_add(1);
  m->server_ = SSL_CTX_new(TLS_server_method());
  m->client_ = SSL_CTX_new(TLS_client_method());
  if (!m->server_ || !m->client_) {
    *error = "cannot create a TLS context: " + openssl_error("out of memory");
    return nullptr;
  }
  if (!configure_common(m->server_, identity, error) || !configure_common(m->client_, identity, error)) return nullptr;

  SSL_CTX_set_verify(m->server_, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, verify_callback);
  SSL_CTX_set_session_id_context(m->server_, kSessionIdContext, sizeof kSessionIdContext - 1);
  SSL_CTX_set_timeout(m->server_, kSessionLifetimeSeconds);
  SSL_CTX_set_num_tickets(m->server_, 1);
  SSL_CTX_set_alpn_select_cb(m->server_, alpn_select, nullptr);

  SSL_CTX_set_verify(m->client_, SSL_VERIFY_PEER, verify_callback);
  SSL_CTX_set_session_cache_mode(m->client_, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
  SSL_CTX_sess_set_new_cb(m->client_, new_session);
  SSL_CTX_set_timeout(m->client_, kSessionLifetimeSeconds);
  return m;
}

TlsMaterial::~TlsMaterial() {
  SSL_CTX_free(server_);
  SSL_CTX_free(client_);
}

TlsCounters& tls_counters() {
  static TlsCounters counters;
  return counters;
}

// ---- sessions ----------------------------------------------------------------------------------

TlsSessionSlot::~TlsSessionSlot() { SSL_SESSION_free(session_); }

void TlsSessionSlot::store(SSL_SESSION* session, uint64_t generation) {
  SSL_SESSION_free(session_);
  session_ = session;
  generation_ = generation;
}

SSL_SESSION* TlsSessionSlot::get(uint64_t generation) const {
  if (!session_ || generation_ != generation) return nullptr;
  if (SSL_SESSION_is_resumable(session_) != 1) return nullptr;
  return session_;
}

// ---- one connection ----------------------------------------------------------------------------

TlsState::TlsState(TlsMaterialPtr material, TlsOptions options, std::string* cipher_out)
    : material_(std::move(material)), options_(std::move(options)), cipher_out_(cipher_out) {
  ssl_ = SSL_new(options_.server ? material_->server_ctx() : material_->client_ctx());
  if (!ssl_) {
    set_error("cannot create a TLS connection: " + openssl_error("out of memory"));
    failed_ = true;
    return;
  }
  BIO* bio = BIO_new(bio_method());
  BIO_set_data(bio, this);
  SSL_set_bio(ssl_, bio, bio);
  SSL_set_app_data(ssl_, this);
  if (options_.server) {
    SSL_set_accept_state(ssl_);
    return;
  }
  SSL_set_connect_state(ssl_);
  if (options_.h2 && options_.http)
    SSL_set_alpn_protos(ssl_, kAlpnH2Http11, sizeof kAlpnH2Http11);
  else if (options_.h2)
    SSL_set_alpn_protos(ssl_, kAlpnH2, sizeof kAlpnH2);
  else if (options_.http)
    SSL_set_alpn_protos(ssl_, kAlpnHttp11, sizeof kAlpnHttp11);
  if (!options_.sni.empty()) SSL_set_tlsext_host_name(ssl_, options_.sni.c_str());
  if (options_.sessions)
    if (SSL_SESSION* s = options_.sessions->get(material_->generation())) SSL_set_session(ssl_, s);
}

bool TlsState::alpn_h2() const {
  const unsigned char* p = nullptr;
  unsigned int n = 0;
  if (ssl_) SSL_get0_alpn_selected(ssl_, &p, &n);
  return n == 2 && p[0] == 'h' && p[1] == '2';
}

TlsState::~TlsState() {
  if (unconfirmed_) count(true);  // closed by us before the server said more: it did not refuse
  if (ssl_) SSL_free(ssl_);
}

void TlsState::feed(const char* data, size_t length) {
  in_data = data;
  in_length = length;
  if (length) saw_input_ = true;
}

TlsState::Step TlsState::handshake() {
  if (failed_) return Step::failed;
  if (established_) return Step::done;
  ERR_clear_error();
  int r = SSL_do_handshake(ssl_);
  if (r == 1) {
    if (!finish_handshake()) {
      failed_ = true;
      count(false);
      return Step::failed;
    }
    established_ = true;
    // TLS 1.3: a client's side is done before the server has checked the client's certificate;
    // a refusal comes as an alert after. The handshake counts once the server has said more.
    if (!options_.server && SSL_version(ssl_) >= TLS1_3_VERSION) unconfirmed_ = true;
    else count(true);
    return Step::done;
  }
  int e = SSL_get_error(ssl_, r);
  if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return Step::again;
  set_error(openssl_error(e == SSL_ERROR_SYSCALL ? "the peer closed the connection" : "handshake failed"));
  ERR_clear_error();
  failed_ = true;
  count(false);
  return Step::failed;
}

bool TlsState::finish_handshake() {
  resumed_ = SSL_session_reused(ssl_) == 1;
  X509* peer = SSL_get0_peer_certificate(ssl_);
  if (!peer) {
    set_error("the peer presented no certificate");
    return false;
  }
  std::string why;
  peer_id_ = svid_id(peer, /*server=*/!options_.server, &why);
  if (peer_id_.empty()) {
    set_error("peer certificate refused: " + why);
    return false;
  }
  if (!options_.server && peer_id_ != options_.expected_peer) {
    set_error("the server presented " + peer_id_ + ", expected " + options_.expected_peer);
    return false;
  }
  // A resumed session was verified when it was made; its certificate may have expired since.
  if (resumed_ && X509_cmp_current_time(X509_get0_notAfter(peer)) < 0) {
    set_error("peer certificate refused: certificate has expired");
    return false;
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int md_length = 0;
  if (X509_digest(peer, EVP_sha256(), md, &md_length) == 1) peer_hash_ = digest_hex(md, md_length);
  return true;
}

size_t TlsState::read(char* out, size_t capacity, bool* eof, bool* error) {
  size_t filled = 0;
  while (filled < capacity) {
    size_t got = 0;
    ERR_clear_error();
    if (SSL_read_ex(ssl_, out + filled, capacity - filled, &got) == 1) {
      filled += got;
      confirm();
      continue;
    }
    int e = SSL_get_error(ssl_, 0);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) break;
    if (e == SSL_ERROR_ZERO_RETURN) {
      *eof = true;
      close_notify_received_ = true;
      confirm();
      break;
    }
    *error = true;
    set_error(openssl_error("read failed"));
    if (unconfirmed_) {
      unconfirmed_ = false;
      refused_after_handshake_ = true;
      count(false);
    }
    break;
  }
  return filled;
}

bool TlsState::write(const char* data, size_t length) {
  if (length == 0) return true;
  size_t written = 0;
  ERR_clear_error();
  if (SSL_write_ex(ssl_, data, length, &written) != 1 || written != length) {
    set_error(openssl_error("write failed"));
    return false;
  }
  return true;
}

void TlsState::shutdown() {
  if (close_notify_sent_ || !established_) return;
  close_notify_sent_ = true;
  ERR_clear_error();
  SSL_shutdown(ssl_);
  ERR_clear_error();
}

void TlsState::abandon(const std::string& why) {
  if (established_ || counted_) return;
  set_error(why);
  failed_ = true;
  // A client that connects and leaves without a byte made no handshake; a client of ours did.
  if (saw_input_ || !options_.server) count(false);
}

void TlsState::confirm() {
  if (!unconfirmed_) return;
  unconfirmed_ = false;
  count(true);
}

void TlsState::count(bool ok) {
  if (counted_) return;
  counted_ = true;
  size_t direction = options_.server ? 0 : 1;
  tls_counters().handshakes[direction][ok ? 0 : 1].fetch_add(1, std::memory_order_relaxed);
  if (ok && resumed_) tls_counters().resumed[direction].fetch_add(1, std::memory_order_relaxed);
}

}  // namespace pilotfish
