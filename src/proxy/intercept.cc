#include "proxy/intercept.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstring>
#include <string_view>

#include "proxy/http_session.h"
#include "log/logger.h"
#include "proxy/tcp_proxy.h"
#include "proxy/worker_context.h"
#include "tls/tls.h"

namespace pilotfish {

namespace {

// <linux/netfilter_ipv4.h> and <linux/netfilter_ipv6/ip6_tables.h>, which do not mix well with
// the libc headers.
constexpr int kSoOriginalDst = 80;
constexpr int kIp6tSoOriginalDst = 80;

SocketAddress from_sockaddr(const sockaddr* sa) {
  SocketAddress a;
  if (sa->sa_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
    if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
      // An IPv4 connection on a dual-stack socket: its address as IPv4, as policies write it.
      sockaddr_in in4{};
      in4.sin_family = AF_INET;
      in4.sin_port = in6->sin6_port;
      std::memcpy(&in4.sin_addr, in6->sin6_addr.s6_addr + 12, 4);
      std::memcpy(&a.storage, &in4, sizeof in4);
      a.length = sizeof in4;
    } else {
      std::memcpy(&a.storage, in6, sizeof *in6);
      a.length = sizeof *in6;
    }
  } else {
    std::memcpy(&a.storage, sa, sizeof(sockaddr_in));
    a.length = sizeof(sockaddr_in);
  }
  a.text = format_sockaddr(a.sa());
  return a;
}

SocketAddress loopback(int family, uint16_t port) {
  std::string err;
  auto a = parse_socket_address((family == AF_INET6 ? "[::1]:" : "127.0.0.1:") + std::to_string(port), &err);
  return a ? *a : SocketAddress{};
}

constexpr std::string_view kMethods[] = {"GET ",   "POST ",  "PUT ",   "DELETE ",   "HEAD ",    "OPTIONS ",
                                         "PATCH ", "TRACE ", "CONNECT ", "PROPFIND ", "PROPPATCH ", "MKCOL ",
                                         "COPY ",  "MOVE ",  "LOCK ",  "UNLOCK ",   "REPORT ",  "SEARCH "};

}  // namespace

std::string InterceptTarget::describe() const {
  switch (kind) {
    case Kind::routes: return "routes";
    case Kind::cluster: return "cluster " + cluster;
    case Kind::address: return "passthrough to " + address.text;
    case Kind::refuse: return "refused";
  }
  return "?";
}

std::optional<SocketAddress> original_destination(uv_tcp_t* tcp) {
  uv_os_fd_t fd;
  if (uv_fileno(reinterpret_cast<uv_handle_t*>(tcp), &fd) != 0) return std::nullopt;
  sockaddr_storage local{}, original{};
  socklen_t local_length = sizeof local;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_length) != 0) return std::nullopt;
  socklen_t length = sizeof original;
  // IPv4 (also on a dual-stack IPv6 socket) first, then IPv6.
  bool found = getsockopt(fd, SOL_IP, kSoOriginalDst, &original, &length) == 0;
  if (!found && local.ss_family == AF_INET6) {
    length = sizeof original;
    found = getsockopt(fd, SOL_IPV6, kIp6tSoOriginalDst, &original, &length) == 0;
  }
  if (!found) return std::nullopt;
  SocketAddress dst = from_sockaddr(reinterpret_cast<sockaddr*>(&original));
  SocketAddress here = from_sockaddr(reinterpret_cast<sockaddr*>(&local));
  if (dst.text == here.text) return std::nullopt;  // made to the listener itself
  return dst;
}

InterceptTarget intercept_target(const Policy& policy, const Listener& listener, const SocketAddress& original) {
  InterceptTarget t;
  if (listener.intercept == Intercept::outbound) {
    for (const auto& c : policy.clusters)
      for (const auto& vip : c.vips)
        if (vip.text == original.text) {
          t.kind = InterceptTarget::Kind::cluster;
          t.cluster = c.name;
          return t;
        }
    if (!listener.passthrough) {
      t.kind = InterceptTarget::Kind::refuse;
      return t;
    }
    t.kind = InterceptTarget::Kind::address;
    t.address = original;
    return t;
  }
  // Inbound: the app at the port the peer asked for.
  uint16_t port = original.port();
  for (const auto& c : policy.clusters)
    for (const auto& ep : c.endpoints)
      if (ep.port() == port && is_loopback(ep)) {
        t.kind = InterceptTarget::Kind::cluster;
        t.cluster = c.name;
        return t;
      }
  t.kind = InterceptTarget::Kind::address;
  t.address = loopback(original.family(), port);
  return t;
}

Detected detect_http1(const char* data, size_t length) {
  std::string_view got(data, length);
  // Empty lines before a request line are allowed (RFC 9112 2.2: a server SHOULD ignore at
  // least one), but only a few: a client that sends nothing but CR and LF is not HTTP, and is
  // not let hold the detection (or make every read rescan a growing buffer). So at most
  // kMaxLeadingEmptyLineBytes, then at most the longest method: every call looks at a bounded
  // prefix, whatever the buffer holds.
  size_t skipped = 0;
  while (!got.empty() && (got.front() == '\r' || got.front() == '\n')) {
    if (++skipped > kMaxLeadingEmptyLineBytes) return Detected::no;
    got.remove_prefix(1);
  }
  for (std::string_view m : kMethods) {
    if (got.size() >= m.size()) {
      if (got.substr(0, m.size()) == m) return Detected::yes;
    } else if (m.substr(0, got.size()) == got) {
      return Detected::more;
    }
  }
  return Detected::no;
}

// ---------------------------------------------------------------------------------------------

namespace {

// A listener that checks requests (auth, rate limits) or answers some itself (a path that must
// never reach the app) never carries bytes it cannot check.
bool checks_requests(const Listener& l) {
  if (l.auth || l.rate_limit || l.authorization) return true;
  for (const auto& r : l.routes)
    if (r.auth || r.rate_limit || r.answers_itself() || r.authorization) return true;
  return false;
}

}  // namespace

InterceptSession::InterceptSession(WorkerContext& worker, std::shared_ptr<ListenerSlot> slot)
    : Stream(worker), worker_(worker), slot_(std::move(slot)), snap_(worker.snapshot()) {
  listener_ = &snap_->policy->listeners[slot_->index];
  http_only_ = listener_->protocol == Protocol::http && checks_requests(*listener_);
  worker.add_downstream();
}

void InterceptSession::on_policy_changed() {
  if (slot_->index == SIZE_MAX) close();  // its listener left the policy before it was handed on
}

void InterceptSession::start() {
  const Policy& policy = *worker_.snapshot()->policy;
  std::optional<SocketAddress> original = original_destination(tcp());
  if (!original) {
    // Made to the listener's own address: an ordinary connection of this listener.
    hand_off(listener_->protocol == Protocol::http);
    return;
  }
  target_ = intercept_target(policy, *listener_, *original);
  log_debug("listener " + listener_->name + ": intercepted connection to " + original->text + ": " +
            target_.describe());
  if (target_.kind == InterceptTarget::Kind::refuse ||
      (http_only_ && target_.kind == InterceptTarget::Kind::address)) {
    close();
    return;
  }
  // Passed-through bytes and tcp listeners need no detection: they are tunnelled as they are
  // (a tcp listener's own session does the TLS handshake of an mtls listener).
  if (listener_->protocol == Protocol::tcp || target_.kind == InterceptTarget::Kind::address) {
    hand_off(false);
    return;
  }
  uv_tcp_nodelay(tcp(), 1);
  if (listener_->mtls) {
    if (!accept_tls(worker_.tls(), /*http=*/true)) {
      close();
      return;
    }
    handshaking_ = true;
    start_timer(static_cast<uint64_t>(listener_->header_timeout.count()));
    start_read();
    return;
  }
  start_timer(kDetectMs);
  start_read();
}

void InterceptSession::on_tls_established() {
  handshaking_ = false;
  start_timer(kDetectMs);
}

void InterceptSession::on_data(char* data, size_t length) {
  first_bytes_.append(data, length);
  Detected d = detect_http1(first_bytes_.data(), first_bytes_.size());
  if (d == Detected::more) return;
  if (d == Detected::no && http_only_) {
    log_debug("listener " + listener_->name + ": not HTTP on a listener with auth or rate_limit; closed");
    close();
    return;
  }
  hand_off(d == Detected::yes);
}

void InterceptSession::on_read_end(int) {
  // The peer left before saying anything that decides the protocol.
  close();
}

void InterceptSession::on_timeout() {
  if (handshaking_) {
    if (tls()) tls()->abandon("handshake not complete within header_timeout");
    close();
    return;
  }
  // The start of a request line, slowly: HTTP (whose own timeouts apply). Nothing at all: a
  // protocol where the server speaks first, unless the listener checks every request.
  hand_off(!first_bytes_.empty() || http_only_);
}

void InterceptSession::drain() {
  if (!handshaking_ && first_bytes_.empty()) close();
}

void InterceptSession::on_close() { worker_.remove_downstream(); }

void InterceptSession::hand_off(bool http) {
  stop_timer();
  stop_read();
  if (slot_->index == SIZE_MAX || !worker_.snapshot()) {  // the listener was removed or stopped meanwhile
    close();
    return;
  }
  bool adopted = tls() != nullptr || !first_bytes_.empty() || target_.kind != InterceptTarget::Kind::routes;
  Stream* next;
  if (http) {
    auto* s = new HttpSession(worker_, slot_);
    if (target_.kind == InterceptTarget::Kind::cluster) s->set_fixed_cluster(target_.cluster);
    next = s;
  } else {
    auto* s = new TcpProxySession(worker_, slot_, target_);
    next = s;
  }
  if (!move_connection_to(*next)) {
    log_warn("listener " + listener_->name + ": cannot hand an intercepted connection over; closed");
    next->close();
    close();
    return;
  }
  std::string first;
  first.swap(first_bytes_);
  close();  // this handle only; the connection lives on in `next`
  if (http) {
    auto* s = static_cast<HttpSession*>(next);
    if (adopted) s->start_adopted(first);
    else s->start();
  } else {
    // A connection whose handshake or first bytes this session took continues from there; one
    // it only looked at starts as any connection of its listener (with its own handshake).
    auto* s = static_cast<TcpProxySession*>(next);
    if (next->tls() || !first.empty()) s->start_adopted(first);
    else s->start();
  }
}

}  // namespace pilotfish
