#pragma once
// The admin listener (policy admin.address, loopback by default): /metrics, /ready, /live,
// /config, /clusters, /policy/history, POST /reload, POST /drain. It runs on the main
// thread's loop, not on a worker, so it answers while the workers are saturated.

#include <uv.h>

#include <string>

#include "net/event_loop.h"
#include "pilotfish/socket_address.h"

namespace pilotfish {

// What the admin endpoints read and do; the process implements it.
class AdminBackend {
 public:
  virtual ~AdminBackend() = default;
  struct Answer {
    int status = 200;
    std::string content_type = "application/json";
    std::string body;
  };
  virtual Answer metrics() = 0;
  virtual Answer ready() = 0;
  virtual Answer live() = 0;
  virtual Answer config() = 0;
  virtual Answer clusters() = 0;
  virtual Answer history() = 0;
  virtual Answer reload() = 0;
  virtual Answer drain() = 0;
};

class AdminServer final : public EventLoop {
 public:
  AdminServer(uv_loop_t* loop, AdminBackend& backend);
  ~AdminServer() override;

  // Binds and listens; false with *error set when the address cannot be bound.
  bool listen(const SocketAddress& address, std::string* error);
  const SocketAddress& address() const { return bound_; }
  // Stops listening and closes every admin connection.
  void close();

  AdminBackend& backend() { return backend_; }

 private:
  static void on_connection(uv_stream_t* server, int status);
  AdminBackend& backend_;
  uv_tcp_t listener_;
  bool listening_ = false;
  SocketAddress bound_;
};

}  // namespace pilotfish
