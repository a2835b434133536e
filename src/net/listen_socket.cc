#include "net/listen_socket.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace pilotfish {

int open_listen_socket(const SocketAddress& address, std::string* error) {
  int fd = ::socket(address.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *error = std::string("socket: ") + std::strerror(errno);
    return -1;
  }
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  if (address.family() == AF_INET6) {
    // "[::]" takes both families (IPv4 arrives as ::ffff:a.b.c.d), as the README and
    // `pilotfish iptables` promise; any other IPv6 address is that address alone.
    int v6only = is_unspecified(address) ? 0 : 1;
    ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only);
  }
  if (::bind(fd, address.sa(), address.length) != 0) {
    *error = "bind " + address.text + ": " + std::strerror(errno);
    ::close(fd);
    return -1;
  }
  return fd;
}

SocketAddress bound_address(int fd) {
  SocketAddress a;
  a.length = sizeof a.storage;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a.storage), &a.length);
  a.text = format_sockaddr(a.sa());
  return a;
}

}  // namespace pilotfish
