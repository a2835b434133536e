// Parsing and printing of the numeric socket addresses that appear in policy files.
// Deliberately no name resolution: a policy must mean the same thing on every host and at every
// reload, and a DNS lookup inside the loader would make `check` depend on the network.

#include <arpa/inet.h>

#include <charconv>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

#include "pilotfish/socket_address.h"

namespace pilotfish {
namespace {

// Keeps error sentences readable when someone pastes a whole line (or worse) into an address.
std::string quoted(std::string_view text) {
  constexpr size_t kMaxShown = 64;
  std::string out = "'";
  for (char c : text.substr(0, kMaxShown)) {
    unsigned char uc = static_cast<unsigned char>(c);
    out += (uc < 0x20 || uc == 0x7f) ? '?' : c;
  }
  if (text.size() > kMaxShown) out += "...";
  out += "'";
  return out;
}

void set_error(std::string* error, std::string message) {
  if (error) *error = std::move(message);
}

std::optional<SocketAddress> parse(std::string_view text, bool allow_port_zero, std::string* error) {
  if (text.empty()) {
    set_error(error, "address is empty (expected HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080)");
    return std::nullopt;
  }

  std::string_view host;
  std::string_view port_text;
  bool bracketed = false;
  if (text.front() == '[') {
    size_t close = text.find(']');
    if (close == std::string_view::npos) {
      set_error(error, quoted(text) + " has '[' without a closing ']'");
      return std::nullopt;
    }
    host = text.substr(1, close - 1);
    bracketed = true;
    std::string_view rest = text.substr(close + 1);
    if (rest.empty()) {
      set_error(error, quoted(text) + ": missing :PORT");
      return std::nullopt;
    }
    if (rest.front() != ':') {
      set_error(error, quoted(text) + ": expected ':PORT' after ']'");
      return std::nullopt;
    }
    port_text = rest.substr(1);
  } else {
    size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) {
      set_error(error, quoted(text) + ": missing :PORT");
      return std::nullopt;
    }
    host = text.substr(0, colon);
    port_text = text.substr(colon + 1);
    // "::1:80" cannot be split unambiguously, so IPv6 must be bracketed.
    if (host.find(':') != std::string_view::npos) {
      set_error(error, quoted(text) + ": an IPv6 address must be in brackets, e.g. [::1]:15001");
      return std::nullopt;
    }
  }

  if (port_text.empty()) {
    set_error(error, quoted(text) + ": missing :PORT");
    return std::nullopt;
  }
  // Digits only: from_chars would accept neither sign nor space, but would stop at the first
  // non-digit, so check the whole text.
  for (char c : port_text) {
    if (c < '0' || c > '9') {
      set_error(error, quoted(text) + ": port " + quoted(port_text) + " is not a number");
      return std::nullopt;
    }
  }
  uint64_t port = 0;
  auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  const bool parsed = ec == std::errc() && end == port_text.data() + port_text.size();
  if (!parsed || port > 65535 || (port == 0 && !allow_port_zero)) {
    std::string shown = parsed ? std::to_string(port) : std::string(port_text.substr(0, 24));
    set_error(error,
              "port " + shown + " is out of range 1-65535" + (allow_port_zero ? " (or 0 for any free port)" : ""));
    return std::nullopt;
  }

  SocketAddress out;
  std::string host_text(host);
  if (!bracketed && host_text == "localhost") host_text = "127.0.0.1";

  if (bracketed) {
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&out.storage);
    if (host_text.empty() || inet_pton(AF_INET6, host_text.c_str(), &sin6->sin6_addr) != 1) {
      set_error(error, quoted(text) + " is not a numeric IPv4 or [IPv6] address");
      return std::nullopt;
    }
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(static_cast<uint16_t>(port));
    out.length = sizeof(sockaddr_in6);
  } else {
    auto* sin = reinterpret_cast<sockaddr_in*>(&out.storage);
    if (host_text.empty() || inet_pton(AF_INET, host_text.c_str(), &sin->sin_addr) != 1) {
      set_error(error, quoted(text) + " is not a numeric IPv4 or [IPv6] address");
      return std::nullopt;
    }
    sin->sin_family = AF_INET;
    sin->sin_port = htons(static_cast<uint16_t>(port));
    out.length = sizeof(sockaddr_in);
  }
  // Normalised text, so that "[0:0::1]:80" and "[::1]:80" compare equal as listener addresses.
  out.text = format_sockaddr(out.sa());
  return out;
}

}  // namespace

uint16_t SocketAddress::port() const {
  switch (storage.ss_family) {
    case AF_INET:
      return ntohs(reinterpret_cast<const sockaddr_in*>(&storage)->sin_port);
    case AF_INET6:
      return ntohs(reinterpret_cast<const sockaddr_in6*>(&storage)->sin6_port);
    default:
      return 0;
  }
}

std::optional<SocketAddress> parse_socket_address(std::string_view text, std::string* error) {
  return parse(text, /*allow_port_zero=*/false, error);
}

std::optional<SocketAddress> parse_bind_address(std::string_view text, std::string* error) {
  return parse(text, /*allow_port_zero=*/true, error);
}

bool is_loopback(const SocketAddress& a) {
  if (a.family() == AF_INET)
    return (ntohl(reinterpret_cast<const sockaddr_in*>(&a.storage)->sin_addr.s_addr) >> 24) == 127;
  if (a.family() == AF_INET6) {
    const in6_addr& ip = reinterpret_cast<const sockaddr_in6*>(&a.storage)->sin6_addr;
    // An IPv4 peer of a dual-stack socket arrives as ::ffff:127.x.y.z.
    return IN6_IS_ADDR_LOOPBACK(&ip) || (IN6_IS_ADDR_V4MAPPED(&ip) && ip.s6_addr[12] == 127);
  }
  return false;
}

bool is_unspecified(const SocketAddress& a) {
  if (a.family() == AF_INET)
    return reinterpret_cast<const sockaddr_in*>(&a.storage)->sin_addr.s_addr == htonl(INADDR_ANY);
  if (a.family() == AF_INET6) return IN6_IS_ADDR_UNSPECIFIED(&reinterpret_cast<const sockaddr_in6*>(&a.storage)->sin6_addr);
  return false;
}

size_t format_ipv4(const unsigned char* four, char* out) {
  char* p = out;
  for (int i = 0; i < 4; ++i) {
    unsigned v = four[i];
    if (v >= 100) *p++ = static_cast<char>('0' + v / 100);
    if (v >= 10) *p++ = static_cast<char>('0' + v / 10 % 10);
    *p++ = static_cast<char>('0' + v % 10);
    if (i < 3) *p++ = '.';
  }
  return static_cast<size_t>(p - out);
}

std::string format_sockaddr(const sockaddr* sa) {
  if (sa == nullptr) return "(none)";
  char buf[INET6_ADDRSTRLEN] = {};
  if (sa->sa_family == AF_INET) {
    const auto* sin = reinterpret_cast<const sockaddr_in*>(sa);
    if (!inet_ntop(AF_INET, &sin->sin_addr, buf, sizeof buf)) return "(invalid)";
    return std::string(buf) + ":" + std::to_string(ntohs(sin->sin_port));
  }
  if (sa->sa_family == AF_INET6) {
    const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(sa);
    if (!inet_ntop(AF_INET6, &sin6->sin6_addr, buf, sizeof buf)) return "(invalid)";
    // Built by appending: GCC 12 warns falsely (-Wrestrict) about "[" + std::string(...).
    std::string out = "[";
    out.append(buf).append("]:").append(std::to_string(ntohs(sin6->sin6_port)));
    return out;
  }
  return "(unknown address family " + std::to_string(sa->sa_family) + ")";
}

}  // namespace pilotfish
