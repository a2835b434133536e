#pragma once
// Transparent interception: connections that iptables redirected to a listener marked
// `intercept: inbound` or `intercept: outbound` (see `pilotfish iptables`).
//
// On accept the original destination is read (SO_ORIGINAL_DST, IP6T_SO_ORIGINAL_DST) and decides
// where the connection goes:
//   outbound: the cluster whose `vips` hold it (with its mTLS, retries, breaker); an address no
//             cluster claims is passed through to itself as plain TCP, or refused
//             (`passthrough: false`);
//   inbound:  the local app at the original port: the cluster with a loopback endpoint on that
//             port, else 127.0.0.1 (or ::1) at that port as plain TCP.
// A connection that was not redirected (made to the listener's own address) is served by the
// listener's routes as on any listener.
//
// An HTTP listener then detects the protocol on the first bytes (after the TLS handshake on an
// mtls listener): an HTTP/1 request line runs the HTTP path; anything else, or nothing within
// the detection timeout (protocols where the server speaks first), is tunnelled as bytes. The
// InterceptSession that does this hands its socket (and TLS state) to the HttpSession or
// TcpProxySession that serves the connection from then on.

#include <uv.h>

#include <memory>
#include <optional>
#include <string>

#include "net/stream.h"
#include "pilotfish/policy.h"

namespace pilotfish {

class WorkerContext;
struct WorkerSnapshot;
struct ListenerSlot;

struct InterceptTarget {
  enum class Kind { routes, cluster, address, refuse };
  Kind kind = Kind::routes;
  std::string cluster;    // Kind::cluster
  SocketAddress address;  // Kind::address
  std::string describe() const;
};

// The original destination of an accepted connection, if iptables redirected it.
std::optional<SocketAddress> original_destination(uv_tcp_t* tcp);

InterceptTarget intercept_target(const Policy& policy, const Listener& listener, const SocketAddress& original);

// First bytes of an HTTP/1 request? `yes`, `no`, or `more` (a prefix of a request line so far).
// Up to kMaxLeadingEmptyLineBytes of CR and LF may come first; more is `no`.
enum class Detected { yes, no, more };
constexpr size_t kMaxLeadingEmptyLineBytes = 8;
Detected detect_http1(const char* data, size_t length);

class InterceptSession final : public Stream {
 public:
  InterceptSession(WorkerContext& worker, std::shared_ptr<ListenerSlot> slot);
  void start();
  void drain() override;
  void on_policy_changed() override;

  // How long the first bytes are waited for before the connection is taken as a protocol where
  // the server speaks first.
  static constexpr uint64_t kDetectMs = 300;

 protected:
  void on_data(char* data, size_t length) override;
  void on_read_end(int status) override;
  void on_timeout() override;
  void on_close() override;
  void on_tls_established() override;

 private:
  void hand_off(bool http);
  WorkerContext& worker_;
  std::shared_ptr<ListenerSlot> slot_;
  std::shared_ptr<WorkerSnapshot> snap_;  // keeps listener_ alive until the hand-off
  const Listener* listener_ = nullptr;
  bool http_only_ = false;  // auth or rate_limit: never a tunnel
  InterceptTarget target_;
  std::string first_bytes_;
  bool handshaking_ = false;
};

}  // namespace pilotfish
