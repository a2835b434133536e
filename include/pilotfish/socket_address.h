#pragma once
// A numeric IPv4 or IPv6 address with a port, parsed once from policy text ("HOST:PORT",
// "[::1]:15001"). The data path only ever sees the resolved sockaddr.

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace pilotfish {

struct SocketAddress {
  sockaddr_storage storage{};
  socklen_t length = 0;
  std::string text;  // as written in the policy, normalised ("127.0.0.1:80", "[::1]:80")

  const sockaddr* sa() const { return reinterpret_cast<const sockaddr*>(&storage); }
  int family() const { return storage.ss_family; }
  uint16_t port() const;
  bool operator==(const SocketAddress& o) const { return text == o.text; }
};

// Parses "HOST:PORT" where HOST is a numeric IPv4 address, a bracketed IPv6 address, or
// "localhost" (taken as 127.0.0.1). On failure returns nullopt and sets *error to a sentence
// saying why (missing port, port out of range, not a numeric address, ...).
std::optional<SocketAddress> parse_socket_address(std::string_view text, std::string* error);

// The same, but also accepts port 0. Only for addresses pilotfish binds itself (listeners,
// admin): port 0 asks the kernel for a free port, which is how tests avoid port clashes. An
// address we connect to (endpoints, vips) can never have port 0, so those use the function above.
std::optional<SocketAddress> parse_bind_address(std::string_view text, std::string* error);

// 127.0.0.0/8, ::1, or 127.0.0.0/8 mapped into IPv6 (a dual-stack socket's IPv4 peer).
bool is_loopback(const SocketAddress& address);

// 0.0.0.0 or [::]: every address of the host ("[::]" takes IPv4 too; see listen_socket).
bool is_unspecified(const SocketAddress& address);

// Formats a sockaddr as "1.2.3.4:80" or "[::1]:80".
std::string format_sockaddr(const sockaddr* sa);

// Writes the IPv4 address in `four` (network order) as dotted decimal to out (at least 16
// bytes), as inet_ntop does, at a few dozen instructions rather than its snprintf's thousand+:
// it runs for every accepted connection. Returns the length written, without a terminator.
size_t format_ipv4(const unsigned char* four, char* out);

}  // namespace pilotfish
