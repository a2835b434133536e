#pragma once
// The admin listener (policy admin.address, loopback by default): /metrics, /ready, /live,
// /config, /clusters, /policy/history, POST /reload, POST /drain; POST only from a loopback
// peer. A read-only admin listener (admin.read_only_address) serves GET /metrics, /ready and
// /live alone, for the kubelet and Prometheus. Both run on the main thread's loop, not on a
// worker, so they answer while the workers are saturated, and both bound what one client can
// hold: a connection cap, request and idle timeouts, and no reading past queued answers.

#include <uv.h>

#include <functional>
#include <string>

#include "json/json_writer.h"
#include "net/event_loop.h"
#include "pilotfish/socket_address.h"

namespace pilotfish {

class TapHub;

// What the admin endpoints read and do; the process implements it.
class AdminBackend {
 public:
  virtual ~AdminBackend() = default;
  struct Answer {
    Answer() = default;
    Answer(int s, std::string type, std::string text, std::string more_headers = {})
        : status(s), content_type(std::move(type)), body(std::move(text)), headers(std::move(more_headers)) {}
    int status = 200;
    std::string content_type = "application/json";
    std::string body;
    std::string headers;  // more header lines, each ending "\r\n" (pilotfish's own text)
  };
  virtual Answer metrics() = 0;
  virtual Answer ready() = 0;
  virtual Answer live() = 0;
  virtual Answer config() = 0;
  virtual Answer clusters() = 0;
  virtual Answer history() = 0;
  // Golden signals per route (server/golden_signals.h): JSON, or with `table` the text
  // `pilotfish top` shows.
  virtual Answer stats(bool table) = 0;
  // The taps GET /tap opens (metrics/tap.h); null: none served.
  virtual TapHub* tap_hub() { return nullptr; }
  // Answered later, once every worker has the new policy: the admin loop serves /live, /ready
  // and the rest meanwhile. `reply` runs on the admin loop, at most once.
  using Reply = std::function<void(Answer)>;
  virtual void reload(Reply reply) = 0;
  virtual Answer drain() = 0;
  // GET /: the status page (server/status_page.h).
  virtual Answer status_page() { return {404, "text/plain", "404 not_found\n", {}}; }

  // An answer whose body is one JSON object, written by `write` (a JsonWriter inside the
  // object's braces), ending with a newline.
  template <typename Write>
  static Answer json_answer(int status, Write write) {
    Answer a{status, "application/json", {}};
    JsonWriter w(a.body);
    w.begin_object();
    write(w);
    w.end_object();
    a.body += '\n';
    return a;
  }
};

class AdminServer final : public EventLoop {
 public:
  AdminServer(uv_loop_t* loop, AdminBackend& backend, bool read_only = false);
  ~AdminServer() override;

  // Binds and listens; false with *error set when the address cannot be bound.
  bool listen(const SocketAddress& address, std::string* error);
  const SocketAddress& address() const { return bound_; }
  // Stops listening and closes every admin connection.
  void close();

  AdminBackend& backend() { return backend_; }
  bool read_only() const { return read_only_; }
  void connection_closed() { --connections_; }

 private:
  static void on_connection(uv_stream_t* server, int status);
  AdminBackend& backend_;
  bool read_only_;
  size_t connections_ = 0;
  bool cap_logged_ = false;
  uv_tcp_t listener_;
  bool listening_ = false;
  SocketAddress bound_;
};

}  // namespace pilotfish
