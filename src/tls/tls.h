#pragma once
// Mutual TLS on OpenSSL 3 for pilotfish's streams.
//
// TlsMaterial: the SSL_CTXs made from one version of the workload identity (identity.cert,
// .key, .ca): one for accepting, one for connecting. Immutable once built and shared by every
// worker; a rotation builds a new one and publishes it, and a connection keeps the material it
// was made with (its SSL holds its SSL_CTX), so existing connections continue untouched.
//
// TlsState: one connection's SSL object over a BIO of our own that reads the ciphertext straight
// from the loop's read buffer and writes it into the stream's output string, so OpenSSL's own
// record buffers are the only copies added to the plaintext path.
//
// Identities follow the X.509-SVID rules: exactly one URI SAN, a spiffe:// ID, never the CN; a
// leaf that is a CA, or whose extended key usage does not allow its role, is no identity.

#include <openssl/ssl.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "pilotfish/policy.h"

namespace pilotfish {

class TlsMaterial {
 public:
  // Reads and checks the files; null and *error on failure.
  static std::shared_ptr<const TlsMaterial> build(const Identity& identity, std::string* error);
  ~TlsMaterial();
  TlsMaterial(const TlsMaterial&) = delete;
  TlsMaterial& operator=(const TlsMaterial&) = delete;

  SSL_CTX* server_ctx() const { return server_; }
  SSL_CTX* client_ctx() const { return client_; }
  const std::string& spiffe_id() const { return spiffe_id_; }
  int64_t cert_not_after() const { return cert_not_after_; }
  int64_t ca_not_after() const { return ca_not_after_; }
  // Sessions are resumed only with the material that made them.
  uint64_t generation() const { return generation_; }
  const Identity& identity() const { return identity_; }

 private:
  TlsMaterial() = default;
  SSL_CTX* server_ = nullptr;
  SSL_CTX* client_ = nullptr;
  std::string spiffe_id_;
  int64_t cert_not_after_ = 0;
  int64_t ca_not_after_ = 0;
  uint64_t generation_ = 0;
  Identity identity_;
};
using TlsMaterialPtr = std::shared_ptr<const TlsMaterial>;

// Handshake counters, process-wide (tls_handshakes_total and the resumption extension).
struct TlsCounters {
  std::atomic<uint64_t> handshakes[2][2] = {};  // [inbound, outbound][ok, failed]
  std::atomic<uint64_t> resumed[2] = {};        // [inbound, outbound]: ok handshakes that resumed
};
TlsCounters& tls_counters();

// The spiffe:// ID of an X.509-SVID leaf acting as `server` or client; empty and *why when it
// is none.
std::string svid_id(X509* leaf, bool server, std::string* why);

// Sessions for resuming outbound connections, one per (worker, endpoint): the most recent.
class TlsSessionSlot {
 public:
  TlsSessionSlot() = default;
  ~TlsSessionSlot();
  TlsSessionSlot(const TlsSessionSlot&) = delete;
  TlsSessionSlot& operator=(const TlsSessionSlot&) = delete;
  void store(SSL_SESSION* session, uint64_t generation);  // takes the reference
  SSL_SESSION* get(uint64_t generation) const;           // borrowed; null if none for it
 private:
  SSL_SESSION* session_ = nullptr;
  uint64_t generation_ = 0;
};

struct TlsOptions {
  bool server = false;
  bool http = true;                // ALPN http/1.1
  bool h2 = false;                 // ALPN h2, before http/1.1 when `http` (a client with h2 alone
                                   // offers only h2; a server takes h2 only beside http/1.1)
  std::string expected_peer;       // a client's: the server's spiffe:// ID, checked exactly
  std::string sni;                 // a client's
  std::shared_ptr<TlsSessionSlot> sessions;  // a client's: resume from, and store new sessions in
};

class TlsState {
 public:
  TlsState(TlsMaterialPtr material, TlsOptions options, std::string* cipher_out);
  ~TlsState();
  TlsState(const TlsState&) = delete;
  TlsState& operator=(const TlsState&) = delete;

  enum class Step { again, done, failed };
  // Ciphertext just read; the BIO reads it from there (it must stay valid until consumed).
  void feed(const char* data, size_t length);
  // Advances the handshake with what was fed.
  Step handshake();
  // After the handshake: decrypts what was fed into `out`. Returns the plaintext bytes; *eof on
  // the peer's close_notify, *error on a protocol error. Call again while it fills `out`.
  size_t read(char* out, size_t capacity, bool* eof, bool* error);
  // Encrypts plaintext into the cipher output.
  bool write(const char* data, size_t length);
  // Queues close_notify.
  void shutdown();

  bool established() const { return established_; }
  // ALPN picked h2 in the handshake.
  bool alpn_h2() const;
  bool failed() const { return failed_; }
  bool server() const { return options_.server; }
  bool resumed() const { return resumed_; }
  bool close_notify_sent() const { return close_notify_sent_; }
  // The peer ended with close_notify (not a bare FIN, which could be a truncation).
  bool close_notify_received() const { return close_notify_received_; }
  // A TLS 1.3 server refused our certificate after our side of the handshake was done.
  bool refused_after_handshake() const { return refused_after_handshake_; }
  // The server has sent something after the handshake (so it accepted our certificate).
  void confirm();
  const std::string& peer_id() const { return peer_id_; }
  const std::string& peer_cert_sha256() const { return peer_hash_; }  // lowercase hex
  const std::string& own_id() const { return material_->spiffe_id(); }
  const TlsMaterialPtr& material() const { return material_; }
  const std::string& error() const { return error_; }
  // Counts the handshake as failed once (a timeout or close in the middle of it).
  void abandon(const std::string& why);

  // For OpenSSL's callbacks.
  const TlsOptions& options() const { return options_; }
  void set_error(std::string why) { if (error_.empty()) error_ = std::move(why); }
  std::string* cipher_out() { return cipher_out_; }
  void set_cipher_out(std::string* out) { cipher_out_ = out; }
  const char* in_data = nullptr;
  size_t in_length = 0;

 private:
  bool finish_handshake();
  void count(bool ok);
  TlsMaterialPtr material_;
  TlsOptions options_;
  std::string* cipher_out_;
  SSL* ssl_ = nullptr;
  bool established_ = false;
  bool failed_ = false;
  bool counted_ = false;
  bool resumed_ = false;
  bool close_notify_sent_ = false;
  bool saw_input_ = false;
  bool unconfirmed_ = false;
  bool refused_after_handshake_ = false;
  bool close_notify_received_ = false;
  std::string peer_id_;
  std::string peer_hash_;
  std::string error_;
};

// The SPIFFE ID syntax: spiffe://trust-domain/path, with the spec's alphabets.
bool spiffe_id_valid(const std::string& id);

// Whether `id` is admitted by an allow list (empty: any verified peer; a trailing '*' matches
// any rest).
bool identity_allowed(const std::vector<std::string>& allow, const std::string& id);

}  // namespace pilotfish
