#include "server/admin_server.h"

#include <llhttp.h>

#include <cstring>

#include "log/logger.h"
#include "net/listen_socket.h"
#include "net/stream.h"

namespace pilotfish {

namespace {

constexpr size_t kMaxAdminRequestBytes = 8192;
constexpr uint64_t kAdminIdleMs = 30'000;

const char* reason_of(int status) {
  switch (status) {
    case 200: return "OK";
    case 202: return "Accepted";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 422: return "Unprocessable Content";
    case 503: return "Service Unavailable";
    default: return "Unknown";
  }
}

// One admin client connection: a request at a time, answered in full, keep-alive as asked.
class AdminConnection final : public Stream {
 public:
  AdminConnection(AdminServer& server) : Stream(server), server_(server) {
    llhttp_settings_init(&settings_);
    settings_.on_url = [](llhttp_t* p, const char* at, size_t n) {
      auto* self = static_cast<AdminConnection*>(p->data);
      if (self->url_.size() + n > kMaxAdminRequestBytes) return -1;
      self->url_.append(at, n);
      return 0;
    };
    settings_.on_body = [](llhttp_t* p, const char*, size_t n) {
      auto* self = static_cast<AdminConnection*>(p->data);
      self->body_bytes_ += n;
      return self->body_bytes_ > kMaxAdminRequestBytes ? -1 : 0;
    };
    settings_.on_message_complete = [](llhttp_t* p) {
      static_cast<AdminConnection*>(p->data)->answer();
      return 0;
    };
    llhttp_init(&parser_, HTTP_REQUEST, &settings_);
    parser_.data = this;
  }

  void start() {
    start_timer(kAdminIdleMs);
    start_read();
  }

 protected:
  void on_data(char* data, size_t length) override {
    start_timer(kAdminIdleMs);
    llhttp_errno_t err = llhttp_execute(&parser_, data, length);
    if (closing()) return;
    if (err != HPE_OK) {
      respond({400, "text/plain", "400 bad_request\n"}, false);
      stop_read();
      close_after_flush();
      return;
    }
    if (flush() != 0) close();
  }
  void on_read_end(int) override { close(); }
  void on_timeout() override { close(); }

 private:
  void answer() {
    std::string path = url_.substr(0, url_.find('?'));
    bool get = parser_.method == HTTP_GET || parser_.method == HTTP_HEAD;
    bool post = parser_.method == HTTP_POST;
    AdminBackend& b = server_.backend();
    AdminBackend::Answer a;
    struct Endpoint {
      const char* path;
      bool post;
      AdminBackend::Answer (AdminBackend::*fn)();
    };
    static constexpr Endpoint kEndpoints[] = {
        {"/metrics", false, &AdminBackend::metrics}, {"/ready", false, &AdminBackend::ready},
        {"/live", false, &AdminBackend::live},       {"/config", false, &AdminBackend::config},
        {"/clusters", false, &AdminBackend::clusters}, {"/policy/history", false, &AdminBackend::history},
        {"/reload", true, &AdminBackend::reload},    {"/drain", true, &AdminBackend::drain},
    };
    const Endpoint* found = nullptr;
    for (const auto& e : kEndpoints)
      if (path == e.path) found = &e;
    if (!found) {
      a = {404, "text/plain", "404 not_found: the admin endpoints are /metrics /ready /live /config /clusters "
                              "/policy/history, POST /reload, POST /drain\n"};
    } else if ((found->post && !post) || (!found->post && !get)) {
      a = {405, "text/plain", std::string("405 method_not_allowed: use ") + (found->post ? "POST" : "GET") + "\n"};
      allow_ = found->post ? "POST" : "GET, HEAD";
    } else {
      a = (b.*(found->fn))();
    }
    respond(a, llhttp_should_keep_alive(&parser_));
    url_.clear();
    body_bytes_ = 0;
    allow_ = nullptr;
  }

  void respond(const AdminBackend::Answer& a, bool keep_alive) {
    std::string& o = out();
    o += "HTTP/1.1 " + std::to_string(a.status) + " " + reason_of(a.status) + "\r\ncontent-type: " + a.content_type +
         "\r\ncontent-length: " + std::to_string(a.body.size()) + "\r\ncache-control: no-store\r\n";
    if (allow_) o += std::string("allow: ") + allow_ + "\r\n";
    if (!keep_alive) o += "connection: close\r\n";
    o += "\r\n";
    if (parser_.method != HTTP_HEAD) o += a.body;
    if (!keep_alive) {
      stop_read();
      close_after_flush();
    }
  }

  AdminServer& server_;
  llhttp_settings_t settings_;
  llhttp_t parser_;
  std::string url_;
  size_t body_bytes_ = 0;
  const char* allow_ = nullptr;
};

}  // namespace

AdminServer::AdminServer(uv_loop_t* loop, AdminBackend& backend) : EventLoop(loop), backend_(backend) {}

AdminServer::~AdminServer() = default;

bool AdminServer::listen(const SocketAddress& address, std::string* error) {
  int fd = open_listen_socket(address, error);
  if (fd < 0) return false;
  bound_ = bound_address(fd);
  uv_tcp_init(loop(), &listener_);
  listener_.data = this;
  uv_tcp_open(&listener_, fd);
  int rc = uv_listen(reinterpret_cast<uv_stream_t*>(&listener_), 128, on_connection);
  listening_ = true;
  if (rc != 0) {
    *error = "admin: listen on " + address.text + ": " + uv_strerror(rc);
    close();
    return false;
  }
  return true;
}

void AdminServer::on_connection(uv_stream_t* server, int status) {
  auto* self = static_cast<AdminServer*>(server->data);
  if (status < 0) return;
  auto* c = new AdminConnection(*self);
  if (uv_accept(server, c->stream()) != 0) {
    c->close();
    return;
  }
  c->start();
}

void AdminServer::close() {
  if (listening_) {
    listening_ = false;
    uv_close(reinterpret_cast<uv_handle_t*>(&listener_), nullptr);
  }
  for_each_stream([](Stream* s) { s->close(); });
}

}  // namespace pilotfish
