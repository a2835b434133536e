#include "server/listener_binding.h"

#include <unistd.h>

#include "net/listen_socket.h"

namespace pilotfish {

std::string bind_key(const Listener& l) {
  return l.address.port() == 0 ? l.name + "@" + l.address.text : l.address.text;
}

std::string listener_line(const Listener& l) {
  return "listener " + l.name + " on " + l.address.text + " (" + (l.protocol == Protocol::tcp ? "tcp" : "http") +
         ", " + std::to_string(l.routes.size()) + " route" + (l.routes.size() == 1 ? "" : "s") + ")";
}

BoundListeners& BoundListeners::operator=(BoundListeners&& other) noexcept {
  if (this != &other) {
    close();
    keys = std::move(other.keys);
    fds = std::move(other.fds);
    bound = std::move(other.bound);
    opened = std::move(other.opened);
  }
  return *this;
}

std::vector<int> BoundListeners::release(size_t w) {
  std::vector<int> out = std::move(fds.at(w));
  fds[w].assign(out.size(), -1);
  return out;
}

void BoundListeners::close() {
  for (auto& per_worker : fds)
    for (int& fd : per_worker)
      if (fd >= 0) {
        ::close(fd);
        fd = -1;
      }
}

std::optional<BoundListeners> bind_listeners(std::vector<Listener>& listeners, size_t workers,
                                             const std::map<std::string, SocketAddress>& kept, std::string* error) {
  BoundListeners out;
  out.fds.assign(workers, std::vector<int>(listeners.size(), -1));
  for (Listener& l : listeners) {
    out.keys.push_back(bind_key(l));
    auto found = kept.find(out.keys.back());
    if (found != kept.end()) {
      l.address = found->second;
      out.bound[out.keys.back()] = found->second;
    }
  }
  for (size_t i = 0; i < listeners.size(); ++i) {
    Listener& l = listeners[i];
    if (out.bound.count(out.keys[i])) continue;
    // SO_REUSEPORT would let a second socket onto a port a kept listener holds (one whose port
    // 0 was resolved to it): that is a clash, not a new listener.
    for (size_t k = 0; k < listeners.size(); ++k) {
      if (k == i || !out.bound.count(out.keys[k]) || listeners[k].address.text != l.address.text) continue;
      *error = "listener " + l.name + ": " + l.address.text + " is already the address of listener " + listeners[k].name;
      return std::nullopt;
    }
    SocketAddress address = l.address;
    for (size_t w = 0; w < workers; ++w) {
      std::string err;
      int fd = open_listen_socket(address, &err);
      if (fd < 0) {
        *error = "listener " + l.name + ": " + err;
        return std::nullopt;
      }
      if (w == 0) address = bound_address(fd);
      out.fds[w][i] = fd;
    }
    l.address = address;
    out.bound[out.keys[i]] = address;
    out.opened.push_back(listener_line(l));
  }
  return out;
}

}  // namespace pilotfish
