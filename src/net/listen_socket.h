#pragma once
// Listening sockets with SO_REUSEPORT, one per worker and listener, so the kernel spreads
// accepted connections over the workers. libuv 1.44 has no flag for SO_REUSEPORT, so the socket
// is made, set and bound here and handed to uv_tcp_open.

#include <string>

#include "pilotfish/socket_address.h"

namespace pilotfish {

// Returns a bound, non-blocking socket, or -1 with *error set.
int open_listen_socket(const SocketAddress& address, std::string* error);
// The address a socket is bound to (for port 0).
SocketAddress bound_address(int fd);

}  // namespace pilotfish
