#pragma once
// Listening sockets for a policy's listeners: one per worker and listener (SO_REUSEPORT), all
// bound before anything switches, so that an address that cannot be bound stops a start or
// rejects a reload with nothing changed. A listener whose address a running listener already
// holds keeps that socket (and its connections) instead; port 0 is resolved by the first bind
// and reused for the other workers.

#include <cstddef>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "pilotfish/policy.h"

namespace pilotfish {

// The key under which a listener's sockets are kept across reloads: its address as written.
// Port 0 means "any port", so two such listeners are told apart by name.
std::string bind_key(const Listener& l);
// "listener web on 127.0.0.1:15000 (http, 2 routes)": logged as each listener is bound.
std::string listener_line(const Listener& l);

struct BoundListeners {
  std::vector<std::string> keys;               // by listener: its bind_key
  std::vector<std::vector<int>> fds;           // [worker][listener]: a new socket, or -1 where kept
  std::map<std::string, SocketAddress> bound;  // bind_key -> address, for every listener
  std::vector<std::string> opened;             // listener_line of each listener bound now

  BoundListeners() = default;
  BoundListeners(BoundListeners&& other) noexcept = default;
  BoundListeners& operator=(BoundListeners&& other) noexcept;
  BoundListeners(const BoundListeners&) = delete;
  BoundListeners& operator=(const BoundListeners&) = delete;
  // Closes the sockets nobody took (see release).
  ~BoundListeners() { close(); }
  // Worker w's sockets, handed over: they are no longer closed here.
  std::vector<int> release(size_t w);
  void close();
};

// Binds `listeners` for `workers` workers; a listener whose bind_key is in `kept` keeps that
// socket. Each listener's address is set to the one it is bound to (a port 0 resolved). On
// failure, closes what it opened and sets *error ("listener web: address in use").
std::optional<BoundListeners> bind_listeners(std::vector<Listener>& listeners, size_t workers,
                                             const std::map<std::string, SocketAddress>& kept, std::string* error);

}  // namespace pilotfish
