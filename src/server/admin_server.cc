#include "server/admin_server.h"

#include <cstring>
#include <string_view>

#include "http/http1_codec.h"
#include "log/logger.h"
#include "metrics/tap.h"
#include "net/descriptor_budget.h"
#include "net/listen_socket.h"
#include "net/stream.h"

namespace pilotfish {

namespace {

constexpr size_t kMaxAdminRequestBytes = 8192;
// A request must be complete this long after its first byte, and a connection with no request
// under way is closed after the idle time: a client that trickles a byte at a time holds a
// connection (and a descriptor) no longer than one that sends nothing.
constexpr uint64_t kAdminHeaderMs = 10'000;
constexpr uint64_t kAdminIdleMs = 30'000;
// A tap's connection takes what its tap gathered this often, while what it wrote before is
// under the high-water mark: a reader that falls further behind loses events (counted), and
// never holds more than the mark and one tap's queue.
constexpr uint64_t kTapTickMs = 100;
constexpr size_t kTapHighWater = 256 * 1024;
constexpr int kTapSendBuffer = 64 * 1024;
constexpr uint64_t kTapStuckMs = 60'000;
// Admin clients are an operator's tools, a probe and a scraper: a few connections at a time.
// Past this, a new connection is closed at once rather than let one client hold every
// descriptor: 64, or fewer under a small descriptor limit (their share of its reserve).
size_t max_admin_connections() { return admin_connection_cap(DescriptorBudget::process().soft_limit()); }

const char* reason_of(int status) {
  switch (status) {
    case 200: return "OK";
    case 202: return "Accepted";
    case 400: return "Bad Request";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 422: return "Unprocessable Content";
    case 503: return "Service Unavailable";
    default: return "Unknown";
  }
}

bool peer_is_loopback(uv_tcp_t* tcp) {
  sockaddr_storage peer;
  int len = sizeof peer;
  if (uv_tcp_getpeername(tcp, reinterpret_cast<sockaddr*>(&peer), &len) != 0) return false;
  SocketAddress address;
  std::memcpy(&address.storage, &peer, sizeof peer);
  address.length = static_cast<socklen_t>(len);
  return is_loopback(address);
}

// One admin client connection: a request at a time, answered in full, keep-alive as asked.
// Pipelined requests are answered only while the answers already queued stay under the
// high-water mark; past it the connection stops reading until the client takes them.
// Requests are decoded by Http1Decoder (with its head checks), which stops after each one.
class AdminConnection final : public Stream, private Http1RequestHandler {
 public:
  explicit AdminConnection(AdminServer& server) : Stream(server), server_(server), decoder_(this, &head_) {
    decoder_.set_head_limit(kMaxAdminRequestBytes);
  }

  void start() {
    loopback_peer_ = peer_is_loopback(tcp());
    start_timer(kAdminIdleMs);
    start_read();
  }

 protected:
  void on_data(char* data, size_t length) override {
    if (tap_) return;  // a tap's stream lasts until the client closes; what it sends is ignored
    parse(data, length);
  }
  void on_read_end(int) override { close(); }
  void on_timeout() override {
    if (tap_) {
      pump_tap();
      return;
    }
    if (awaiting_) {
      start_timer(kAdminIdleMs);  // the backend answers within its own bound
      return;
    }
    if (!in_request_) {
      close();  // idle
      return;
    }
    respond({408, "text/plain", "408 request_timeout\n"}, false);
    if (flush() != 0) close();
  }
  void on_write_done(int status) override {
    Stream::on_write_done(status);
    resume();
  }
  void on_close() override {
    if (tap_) server_.backend().tap_hub()->close(tap_);
    *self_ = nullptr;  // an answer that comes later finds no one
    server_.connection_closed();
  }

 private:
  // ---- Http1RequestHandler ----
  Step on_message_begin() override {
    in_request_ = true;
    start_timer(kAdminHeaderMs);
    return Step::go;
  }
  Step on_request_head(RequestHead&) override { return Step::go; }
  Step on_body(std::string_view piece) override {
    body_bytes_ += piece.size();
    return body_bytes_ > kMaxAdminRequestBytes ? Step::fail : Step::go;
  }
  Step on_message_complete(RequestHead&) override {
    answer();
    if (tap_) return Step::pause;  // streaming from now on (an upgrade it asked for is ignored)
    // A request that asks for an upgrade is answered, and then the connection ends with a 400
    // (admin switches to no other protocol): once its answer is out, when one is awaited.
    if (decoder_.upgrade()) {
      upgrade_refused_ = true;
      if (!awaiting_ && pending_bytes() <= kHighWater) return Step::go;  // the decoder stops for it
    }
    return Step::pause;
  }

  // Decodes until the bytes run out, or until a request's answer is awaited or the answers
  // queued pass the high-water mark: then at most what one read brought is kept and reading
  // stops until they drain (resume()).
  void parse(const char* data, size_t length) {
    for (;;) {
      Http1Decoder::Outcome r = decoder_.execute(data, length);
      if (closing()) return;
      if (r.kind == Http1Decoder::Outcome::more) break;
      if (r.kind != Http1Decoder::Outcome::paused) {
        respond({400, "text/plain", "400 bad_request\n"}, false);
        break;
      }
      data += r.consumed;
      length -= r.consumed;
      if (tap_) return;  // streaming until the client closes (flushed already)
      if (awaiting_ || pending_bytes() > kHighWater) {
        unparsed_.assign(data, length);
        paused_ = true;
        stop_read();
        break;
      }
      decoder_.resume();
      if (length == 0) break;
    }
    if (flush() != 0) close();
  }

  // Parsing goes on after a pause once no answer is awaited and the queued ones have drained.
  void resume() {
    if (closing() || !paused_ || awaiting_ || pending_bytes() >= kLowWater) return;
    paused_ = false;
    decoder_.resume();
    std::string rest = std::move(unparsed_);
    unparsed_.clear();
    if (upgrade_refused_) {
      respond({400, "text/plain", "400 bad_request\n"}, false);
      if (flush() != 0) close();
      return;
    }
    parse(rest.data(), rest.size());
    if (!paused_ && !closing()) start_read();
  }

  void answer() {
    std::string path = head_.target.substr(0, head_.target.find('?'));
    std::string_view method = decoder_.method_name();
    bool get = method == "GET" || method == "HEAD";
    bool post = method == "POST";
    AdminBackend& b = server_.backend();
    AdminBackend::Answer a;
    struct Endpoint {
      const char* path;
      bool post;
      bool read_only;  // also served on admin.read_only_address
      AdminBackend::Answer (AdminBackend::*fn)();  // null: answered later (reload)
    };
    static constexpr Endpoint kEndpoints[] = {
        {"/metrics", false, true, &AdminBackend::metrics},
        {"/ready", false, true, &AdminBackend::ready},
        {"/live", false, true, &AdminBackend::live},
        {"/config", false, false, &AdminBackend::config},
        {"/clusters", false, false, &AdminBackend::clusters},
        {"/policy/history", false, false, &AdminBackend::history},
        {"/stats", false, true, nullptr},
        {"/tap", false, false, nullptr},
        {"/", false, false, &AdminBackend::status_page},
        {"/reload", true, false, nullptr},
        {"/drain", true, false, &AdminBackend::drain},
    };
    const Endpoint* found = nullptr;
    for (const auto& e : kEndpoints)
      if (path == e.path && (e.read_only || !server_.read_only())) found = &e;
    if (!found) {
      a = server_.read_only()
              ? AdminBackend::Answer{404, "text/plain", "404 not_found: this address serves GET /metrics /stats /ready /live\n"}
              : AdminBackend::Answer{404, "text/plain",
                                     "404 not_found: the admin endpoints are / (the status page) /metrics /stats /tap /ready "
                                     "/live /config /clusters /policy/history, POST /reload, POST /drain\n"};
    } else if ((found->post && !post) || (!found->post && !get)) {
      a = {405, "text/plain", std::string("405 method_not_allowed: use ") + (found->post ? "POST" : "GET") + "\n"};
      allow_ = found->post ? "POST" : "GET, HEAD";
    } else if (found->post && !loopback_peer_) {
      // Whatever address admin is bound to, stopping or reloading the sidecar is for a process
      // in its own network namespace (pilotfish drain, a preStop hook), not for the network.
      a = {403, "text/plain", "403 forbidden: POST " + std::string(found->path) + " is accepted from loopback only\n"};
    } else if (path == "/stats") {
      std::string_view query = std::string_view(head_.target).substr(std::min(head_.target.size(), path.size()));
      if (query.empty() || query == "?format=json" || query == "?format=table")
        a = b.stats(query == "?format=table");
      else
        a = {400, "text/plain", "400 bad_request: /stats takes ?format=json (the default) or ?format=table\n"};
    } else if (path == "/tap") {
      if (open_tap()) return;
      a = tap_refusal_;
    } else if (!found->fn && path == "/reload") {
      awaiting_ = true;
      bool keep_alive = decoder_.keep_alive();
      b.reload([self = self_, keep_alive](AdminBackend::Answer later) {
        if (AdminConnection* c = *self) c->deliver(later, keep_alive);
      });
      return;
    } else {
      a = (b.*(found->fn))();
    }
    respond(a, decoder_.keep_alive());
    done_with_request();
  }

  // GET /tap: the stream's head, then every kTapTickMs what the tap gathered, until the client
  // closes. False with tap_refusal_ set when refused (bad filters, too many taps, HEAD).
  bool open_tap() {
    std::string_view target = head_.target;
    size_t q = target.find('?');
    std::string_view query = q == std::string_view::npos ? std::string_view() : target.substr(q + 1);
    TapFilter filter;
    std::string why;
    TapHub* hub = server_.backend().tap_hub();
    if (!hub) {
      tap_refusal_ = {404, "text/plain", "404 not_found: no taps here\n"};
    } else if (!parse_tap_query(query, &filter, &why)) {
      tap_refusal_ = {400, "text/plain", "400 bad_request: " + why + "\n"};
    } else if (decoder_.method_is_head()) {
      tap_refusal_ = {200, "application/x-ndjson", ""};
    } else if (!(tap_ = hub->open(std::move(filter)))) {
      tap_refusal_ = {503, "text/plain",
                      "503 too_many_taps: " + std::to_string(kMaxTaps) + " taps are open; close one first\n"};
    }
    if (!tap_) return false;
    // The kernel holds a fixed share of the stream too (not autotuned to megabytes): a reader
    // that stops reading finds its events dropped soon, and costs little memory.
    int sndbuf = kTapSendBuffer;
    uv_send_buffer_size(reinterpret_cast<uv_handle_t*>(tcp()), &sndbuf);
    uv_tcp_keepalive(tcp(), 1, 60);  // a reader that vanished without a word is noticed
    // Delimited by the close (no length, no chunks): what HTTP/1.0 and 1.1 clients both read.
    out() += "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ncache-control: no-store\r\n"
             "connection: close\r\n\r\n";
    done_with_request();
    start_timer(kTapTickMs);
    if (flush() != 0) close();
    return true;
  }

  void pump_tap() {
    start_timer(kTapTickMs);
    uint64_t now = uv_now(server_.loop());
    if (pending_bytes() > kTapHighWater) {
      // The tap keeps gathering, up to its bound. A reader that takes nothing for a minute has
      // gone (or stopped for good): its tap is ended, for the next operator's.
      if (stuck_since_ms_ == 0) stuck_since_ms_ = now;
      if (now - stuck_since_ms_ > kTapStuckMs) close();
      return;
    }
    stuck_since_ms_ = 0;
    server_.backend().tap_hub()->take(*tap_, &out());
    if (flush() != 0) close();
  }

  void deliver(const AdminBackend::Answer& a, bool keep_alive) {
    if (!awaiting_ || closing()) return;
    awaiting_ = false;
    respond(a, keep_alive);
    done_with_request();
    if (flush() != 0) {
      close();
      return;
    }
    resume();
  }

  void done_with_request() {
    in_request_ = false;
    body_bytes_ = 0;
    allow_ = nullptr;
  }

  void respond(const AdminBackend::Answer& a, bool keep_alive) {
    std::string& o = out();
    o += "HTTP/1.1 " + std::to_string(a.status) + " " + reason_of(a.status) + "\r\ncontent-type: " + a.content_type +
         "\r\ncontent-length: " + std::to_string(a.body.size()) + "\r\ncache-control: no-store\r\n";
    if (allow_) o += std::string("allow: ") + allow_ + "\r\n";
    o += a.headers;
    if (!keep_alive) o += "connection: close\r\n";
    o += "\r\n";
    if (!decoder_.method_is_head()) o += a.body;
    if (!keep_alive) {
      stop_read();
      close_after_flush();
      start_timer(kAdminIdleMs);  // a client that does not take its last answer is not waited on
    } else {
      start_timer(kAdminIdleMs);
    }
  }

  AdminServer& server_;
  RequestHead head_;
  Http1Decoder decoder_;
  bool in_request_ = false;  // a request's first byte came and its answer is not out
  size_t body_bytes_ = 0;
  const char* allow_ = nullptr;
  bool loopback_peer_ = false;
  bool paused_ = false;
  bool awaiting_ = false;  // an answer the backend gives later (see AdminBackend::Reply)
  bool upgrade_refused_ = false;  // a request asked for an upgrade: 400 once it is answered
  std::string unparsed_;
  std::shared_ptr<TapHub::Tap> tap_;  // GET /tap's, while it streams
  uint64_t stuck_since_ms_ = 0;       // its reader has been behind since (0: it is not)
  AdminBackend::Answer tap_refusal_;
  // Cleared when the connection closes: what an answer given later reaches.
  std::shared_ptr<AdminConnection*> self_ = std::make_shared<AdminConnection*>(this);
};

}  // namespace

AdminServer::AdminServer(uv_loop_t* loop, AdminBackend& backend, bool read_only)
    : EventLoop(loop), backend_(backend), read_only_(read_only) {}

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
  if (status == UV_EMFILE || status == UV_ENFILE) {
    self->release_spare_descriptor();  // the next accept() takes this client (see EventLoop)
    return;
  }
  bool spare = self->reopen_spare_descriptor();
  if (status < 0) return;
  auto* c = new AdminConnection(*self);
  ++self->connections_;
  if (uv_accept(server, c->stream()) != 0) {
    c->close();
    return;
  }
  if (!spare || self->connections_ > max_admin_connections()) {
    if (!self->cap_logged_) log_warn("admin: more than " + std::to_string(max_admin_connections()) +
                                     " connections; new ones are closed until some end");
    self->cap_logged_ = true;
    c->close();
    self->reopen_spare_descriptor();
    return;
  }
  self->cap_logged_ = false;
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
