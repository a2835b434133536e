// The HTTP/1.1 session end to end (proxy/http_session.h): a real Worker, run on this thread, with
// a policy of one `protocol: http` listener and a cluster whose one endpoint is a fake upstream
// on 127.0.0.1, answering from scripts the input gives. The client and the upstream are plain
// non-blocking loopback sockets this file drives between turns of the worker's loop (uv_run
// UV_RUN_NOWAIT): kernel sockets, no network, no thread, no timer waited for.
//
// Input: CTL CLIENT [SEP SCRIPT]...   where SEP is the four bytes "~~~~"
//   CTL     one byte. Bits 0-3: the size of the client's writes (kPieces; 0 = one write).
//           Bit 4: the client keeps its side open to the end (else it shuts down its write side
//           once everything is sent, as a client that sent its last request does).
//   CLIENT  the bytes the client sends: requests, pipelined or not, with bodies.
//   SCRIPT  one upstream answer, handed out in order, one per request an upstream connection
//           receives (at most kMaxScripts). Its first byte FLAGS, the rest sent as it is:
//             bit 0: answer once the request head is in, not waiting for its body
//             bit 1: then shut down the write side (FIN)
//             bit 2: then reset the connection (RST; before bit 1)
//             bits 3-6: the size of the writes (kPieces; 0 = one write), the worker's loop
//                       turning between them, so the response arrives in pieces
//             bit 7: sent as soon as the connection is accepted, before any request
//           A request arriving when no script is left is answered by a FIN.
// Routes: a path under /dead goes to a second cluster whose endpoint refuses connections
// (connect-failure retries); a path under /h2 to a cluster with `protocol: http2` whose endpoint
// is a second fake upstream; a path under /copy to the fake upstream with a copy of each request
// (mirror, body up to 100 bytes) sent to the refusing cluster; everything else to the fake
// upstream (HTTP/1.1).
// The HTTP/2 fake upstream does not decode what it receives: its scripts are its frames, as the
// input gives them (SETTINGS, responses on streams 1, 3, ..., RST_STREAM, GOAWAY, anything). A
// script flagged bit 7 goes at accept; each other one once the connection has received bytes
// since the last script began (bits 1-6 as above; bit 0 means nothing there). When none is
// left, a receipt is answered by a FIN. The client's checks below hold whatever it sends: an
// HTTP/1.1 client of an HTTP/2 upstream gets well-formed HTTP/1.1 responses, one per request.
// Retries are on (reset, connect-failure, 5xx, gateway-error; no backoff, an unlimited budget)
// and outlier detection never ejects, so one input behaves the same whatever ran before it.
//
// Each input: the client connects to the worker's listener and sends its pieces, the loop
// turning until quiescent after each; then it shuts down its side (unless bit 4), the fake
// upstream sends FIN on every connection, the client closes, and every connection left (an
// idle pooled one, a session held by a timer) is closed; the loop runs until no stream is
// left. Abort when:
//   - what the client received does not decode (Http1Decoder) as a stream of HTTP/1.1
//     responses whose fields and framing pass the checks the session applies to upstream
//     responses, each a response to one of the client's requests in order (a HEAD's has no
//     body): the session never writes bytes a client would take for something else;
//   - the client gets more final responses than it sent requests (a failed request counts),
//     or bytes after a response that said `connection: close`;
//   - what an upstream connection received does not decode as HTTP/1.1 requests (up to an
//     upgrade): nothing a client sends passes upstream as something other than its request;
//   - after the teardown a stream is left, or the descriptor budget, the worker's downstream
//     count or the cluster's breaker counts (requests, connections, pending, retries, mirror
//     copies in flight) are not back to zero;
//   - the loop never goes quiet (a spin).
// A client that starts with the HTTP/2 preface is served by the session's Http2Downstream: its
// frames are not decoded here (fuzz_http2 does the codec), every other check applies.
// PF_FUZZ_TRACE=1 prints each input's exchange on stderr, and the worker's debug log.
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "http/http1_codec.h"
#include "json/json_reader.h"
#include "metrics/tap.h"
#include "http/http2_codec.h"
#include "proxy/http_session.h"
#include "log/logger.h"
#include "metrics/metrics.h"
#include "net/descriptor_budget.h"
#include "pilotfish/header_list.h"
#include "pilotfish/policy_loader.h"
#include "server/worker.h"
#include "upstream/resilience.h"

namespace {

using pilotfish::Http1Decoder;
using pilotfish::Step;

constexpr std::string_view kSeparator = "~~~~";
constexpr size_t kMaxScripts = 16;
constexpr size_t kMaxWrites = 64;  // a side's bytes go in at most about this many writes
constexpr size_t kPieces[16] = {0, 1, 2, 3, 4, 5, 7, 10, 16, 25, 40, 64, 100, 200, 500, 1000};
constexpr int kIdleTurns = 2;            // turns with nothing happening: quiescent
constexpr int kMaxTurnsPerPump = 20000;  // a loop that never goes quiet spins

enum ScriptFlag : uint8_t {
  kEarly = 1,
  kFin = 2,
  kReset = 4,
  kUnprompted = 128,
};

bool trace_on() {
  static const bool on = std::getenv("PF_FUZZ_TRACE") != nullptr;
  return on;
}

void dump(const char* what, std::string_view bytes) {
  std::fprintf(stderr, "--- %s (%zu bytes)\n", what, bytes.size());
  std::fwrite(bytes.data(), 1, bytes.size(), stderr);
  std::fprintf(stderr, "\n");
}

size_t piece_size(unsigned selector, size_t total) {
  size_t p = kPieces[selector & 15];
  if (p == 0) return total ? total : 1;
  return std::max(p, total / kMaxWrites + 1);
}

void set_nonblocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

void set_nodelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

// A socket bound to 127.0.0.1 on a port of the kernel's choosing.
int bound_socket(uint16_t* port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    std::perror("fuzz_session: bind 127.0.0.1:0");
    std::abort();
  }
  *port = ntohs(a.sin_port);
  return fd;
}

// What lives for the whole process: the worker, its registries, the fake upstream's listening
// socket and a bound socket that never listens (connects to it are refused).
struct Fixture {
  pilotfish::MetricsRegistry metrics{1};
  pilotfish::ResilienceRegistry resilience{1};
  // A tap open for the whole run, taking every request: each one's line is checked (JSON, one
  // line) at the teardown.
  pilotfish::TapHub taps{metrics.process()};
  std::shared_ptr<pilotfish::TapHub::Tap> tap = [this] {
    pilotfish::TapFilter all;
    all.rate = pilotfish::kTapMaxRate;
    return taps.open(all);
  }();
  std::unique_ptr<pilotfish::Worker> worker;
  int upstream_listen = -1;
  int upstream_h2_listen = -1;
  int refusing = -1;
  uint16_t listener_port = 0;

  Fixture() {
    ::signal(SIGPIPE, SIG_IGN);
    uint16_t upstream_port = 0, upstream_h2_port = 0, refusing_port = 0;
    upstream_listen = bound_socket(&upstream_port);
    if (listen(upstream_listen, 128) != 0) std::abort();
    set_nonblocking(upstream_listen);
    upstream_h2_listen = bound_socket(&upstream_h2_port);
    if (listen(upstream_h2_listen, 128) != 0) std::abort();
    set_nonblocking(upstream_h2_listen);
    refusing = bound_socket(&refusing_port);
    int listen_fd = bound_socket(&listener_port);
    std::string retry =
        "    retry:\n"
        "      retries: 2\n"
        "      on: [5xx, reset, connect-failure, gateway-error]\n"
        "      backoff: {base: 0ms, max: 0ms}\n"
        "      budget: {ratio: 1, min_per_second: 1000000000}\n"
        "    outlier_detection: {consecutive_failures: 4294967295}\n";
    std::string yaml =
        "version: 1\n"
        "workers: 1\n"
        "log_level: error\n"
        "access_log: off\n"
        "policy_history: off\n"
        "policy_watch: false\n"
        "listeners:\n"
        "  - name: fuzz\n"
        "    address: 127.0.0.1:" + std::to_string(listener_port) + "\n"
        "    protocol: http\n"
        "    max_header_bytes: 4096\n"
        "    max_body_bytes: 16384\n"
        "    routes:\n"
        "      - match: {path_prefix: /dead}\n"
        "        cluster: dead\n"
        "      - match: {path_prefix: /h2}\n"
        "        cluster: h2\n"
        "      - match: {path_prefix: /copy}\n"
        "        cluster: app\n"
        "        mirror: {cluster: dead, max_body_bytes: 100, max_in_flight: 4}\n"
        "      - match: {path_prefix: /direct}\n"
        "        respond: {status: 403, body: \"no\\n\", headers: {x-why: fuzz}}\n"
        "      - match: {path_prefix: /moved}\n"
        "        redirect: {host: moved.example, status: 307}\n"
        "      - match: {path_prefix: /}\n"
        "        cluster: app\n"
        "clusters:\n"
        "  - name: app\n"
        "    endpoints: [127.0.0.1:" + std::to_string(upstream_port) + "]\n" + retry +
        "  - name: dead\n"
        "    endpoints: [127.0.0.1:" + std::to_string(refusing_port) + "]\n" + retry +
        "  - name: h2\n"
        "    protocol: http2\n"
        "    endpoints: [127.0.0.1:" + std::to_string(upstream_h2_port) + "]\n" + retry;
    pilotfish::PolicyLoadResult loaded = pilotfish::load_policy_text(yaml, "fuzz_session.yaml", ".");
    if (!loaded.ok()) {
      for (const auto& e : loaded.errors) std::fprintf(stderr, "fuzz_session: %s\n", e.to_string().c_str());
      std::abort();
    }
    pilotfish::set_log_level(trace_on() ? pilotfish::LogLevel::debug : loaded.policy->log_level);
    worker = std::make_unique<pilotfish::Worker>(0, loaded.policy, pilotfish::WorkerKeys{},
                                                 std::vector<std::string>{"fuzz"}, std::vector<int>{listen_fd},
                                                 nullptr, &taps, metrics, resilience);
  }
};

Fixture& fixture() {
  static Fixture* f = new Fixture();  // for the whole process, on purpose
  return *f;
}

struct Script {
  uint8_t flags = 0;
  std::string bytes;
};

class Exchange;

// One connection a fake upstream accepted. HTTP/1.1: decodes the requests the session sends
// (each one must be HTTP/1.1) and answers each with the next script. HTTP/2: sends the next
// script once it has received bytes since the last one.
class UpstreamConn final : public pilotfish::Http1RequestHandler {
 public:
  UpstreamConn(Exchange& x, int fd, bool h2) : x_(x), fd_(fd), h2_(h2) {}
  ~UpstreamConn() override { close_fd(false); }

  bool open() const { return fd_ >= 0; }
  const std::string& received() const { return received_; }
  void answer_now();  // a script at accept (bit 7)
  bool step();        // reads and writes what it can; true if anything happened
  void send_fin() {
    if (fd_ >= 0 && !fin_sent_) shutdown(fd_, SHUT_WR);
    fin_sent_ = true;
  }
  void close_fd(bool reset) {
    if (fd_ < 0) return;
    if (reset) {
      linger l{1, 0};
      setsockopt(fd_, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    }
    ::close(fd_);
    fd_ = -1;
  }

 private:
  Step on_message_begin() override {
    answered_ = false;
    return Step::go;
  }
  Step on_request_head(pilotfish::RequestHead&) override;
  Step on_body(std::string_view) override { return Step::go; }
  Step on_message_complete(pilotfish::RequestHead&) override {
    if (!answered_) request_answer();
    return decoder_.upgrade() ? Step::go : Step::pause;
  }
  void request_answer() {
    answered_ = true;
    ++waiting_;
    start_next();
  }
  void start_next();
  void feed(const char* data, size_t length);

  Exchange& x_;
  int fd_;
  bool h2_;
  pilotfish::RequestHead head_;
  Http1Decoder decoder_{static_cast<pilotfish::Http1RequestHandler*>(this), &head_};
  std::string received_;
  bool tunnel_ = false;    // after an upgrade request: bytes, not requests
  bool answered_ = false;  // the request being decoded has its script
  int waiting_ = 0;        // requests whose answer has not started (HTTP/2: 1 once bytes came)
  const Script* script_ = nullptr;
  size_t written_ = 0;
  size_t piece_ = 0;
  bool fin_sent_ = false;
};

// The client's requests as the session's decoder reads them: how many began, and which were
// HEAD (answered without a body).
struct RequestLog final : pilotfish::Http1RequestHandler {
  std::vector<bool> head;
  bool failed = false;
  pilotfish::RequestHead request_head;
  Http1Decoder decoder{static_cast<pilotfish::Http1RequestHandler*>(this), &request_head};

  Step on_message_begin() override {
    head.push_back(false);
    return Step::go;
  }
  Step on_request_head(pilotfish::RequestHead&) override {
    head.back() = decoder.method_is_head();
    return Step::go;
  }
  Step on_body(std::string_view) override { return Step::go; }
  Step on_message_complete(pilotfish::RequestHead&) override { return decoder.upgrade() ? Step::go : Step::pause; }

  void decode(std::string_view bytes) {
    const char* p = bytes.data();
    size_t n = bytes.size();
    while (n > 0) {
      Http1Decoder::Outcome o = decoder.execute(p, n);
      if (o.kind == Http1Decoder::Outcome::failed) failed = true;
      if (o.kind != Http1Decoder::Outcome::paused) return;
      decoder.resume();
      p += o.consumed;
      n -= o.consumed;
    }
  }
};

// What the client received, decoded as responses to its requests.
struct ResponseCheck final : pilotfish::Http1ResponseHandler {
  const RequestLog& requests;
  size_t allowed;  // final responses the client may get
  size_t finals = 0;
  bool close_said = false;  // the last complete response said `connection: close`
  bool final_response = false;
  const char* violation = nullptr;
  pilotfish::ResponseHead response_head;
  Http1Decoder decoder{static_cast<pilotfish::Http1ResponseHandler*>(this), &response_head};

  explicit ResponseCheck(const RequestLog& r)
      : requests(r), allowed(r.head.size() + (r.failed ? 1 : 0)) {}

  Step on_response_head(pilotfish::ResponseHead& h) override {
    bool valid = h.version_major == 1 && h.version_minor == 1 && pilotfish::fields_valid(h.fields) &&
                 pilotfish::framing_headers_valid(h.fields) && h.reason == pilotfish::reason_phrase(h.status);
    if (!valid) {
      violation = "a response head that is not HTTP/1.1, has invalid fields or framing, or a reason phrase not its own";
      return Step::fail;
    }
    int status = decoder.status_code();
    final_response = status >= 200 || status == 101;
    if (!final_response) return Step::go;
    size_t index = finals++;
    if (finals > allowed) {
      violation = "more final responses than requests";
      return Step::fail;
    }
    return index < requests.head.size() && requests.head[index] ? Step::skip_body : Step::go;
  }
  Step on_response_body(std::string_view) override { return Step::go; }
  Step on_response_message_complete(pilotfish::ResponseHead& h) override {
    if (!pilotfish::fields_valid(h.trailers)) {
      violation = "invalid trailer fields";
      return Step::fail;
    }
    close_said = final_response && !decoder.keep_alive();
    return decoder.upgrade() ? Step::go : Step::pause;
  }

  // Null, or what is wrong.
  const char* check(std::string_view bytes, bool eof) {
    const char* p = bytes.data();
    size_t n = bytes.size();
    while (n > 0) {
      if (close_said) return "bytes after a response that said connection: close";
      Http1Decoder::Outcome o = decoder.execute(p, n);
      if (o.kind == Http1Decoder::Outcome::failed) return violation ? violation : o.reason;
      if (o.kind == Http1Decoder::Outcome::upgrade) return nullptr;  // a tunnel's bytes follow
      if (o.kind == Http1Decoder::Outcome::more) break;
      decoder.resume();
      p += o.consumed;
      n -= o.consumed;
    }
    if (eof) decoder.finish();  // a response delimited by the close ends (a cut one may: a reset)
    return nullptr;
  }
};

// One input's run.
class Exchange {
 public:
  Exchange(Fixture& f, std::vector<Script> scripts) : f_(f), loop_(f.worker->loop()), scripts_(std::move(scripts)) {}
  ~Exchange() {
    if (client_ >= 0) ::close(client_);
  }

  const Script* next_script(bool early_only, bool unprompted_only) {
    if (next_ >= scripts_.size()) return nullptr;
    const Script& s = scripts_[next_];
    if (early_only && !(s.flags & kEarly)) return nullptr;
    if (unprompted_only && !(s.flags & kUnprompted)) return nullptr;
    ++next_;
    return &s;
  }

  void run(uint8_t ctl, std::string_view client_bytes) {
    connect_client();
    pump();
    size_t piece = piece_size(ctl & 15, client_bytes.size());
    for (size_t off = 0; off < client_bytes.size(); off += piece) {
      pending_.append(client_bytes.substr(off, piece));
      pump();
    }
    if (!pending_.empty()) {
      // The session stopped reading (a request it cannot take yet, or one it refused): the rest
      // is not sent.
      pending_.clear();
    }
    if (!(ctl & 16)) {
      shutdown(client_, SHUT_WR);
      pump();
    }
    for (auto& c : upstreams_) c->send_fin();
    pump();
    check_client();
    ::close(client_);
    client_ = -1;
    pump();
    teardown();
  }

 private:
  void connect_client() {
    client_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(f_.listener_port);
    if (client_ < 0 || connect(client_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      std::perror("fuzz_session: connect to the listener");
      std::abort();
    }
    set_nonblocking(client_);
    set_nodelay(client_);
  }

  // Turns the loop, and moves the fake peers' bytes, until nothing happens any more.
  void pump() {
    int idle = 0;
    for (int turn = 0; turn < kMaxTurnsPerPump; ++turn) {
      uv_run(loop_, UV_RUN_NOWAIT);
      if (step()) {
        idle = 0;
        continue;
      }
      if (++idle >= kIdleTurns && !loop_busy()) return;
    }
    fail("the loop never went quiet");
  }

  // Events waiting for the loop, or a callback or timer due now.
  bool loop_busy() {
    pollfd p{uv_backend_fd(loop_), POLLIN, 0};
    return poll(&p, 1, 0) > 0 || uv_backend_timeout(loop_) == 0;
  }

  bool step() {
    bool progress = false;
    for (int listen_fd : {f_.upstream_listen, f_.upstream_h2_listen}) {
      for (;;) {
        int fd = accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) break;
        set_nodelay(fd);
        upstreams_.push_back(std::make_unique<UpstreamConn>(*this, fd, listen_fd == f_.upstream_h2_listen));
        upstreams_.back()->answer_now();
        progress = true;
      }
    }
    for (auto& c : upstreams_) progress |= c->step();
    if (client_ >= 0) {
      char buf[65536];
      while (!client_eof_) {
        ssize_t n = recv(client_, buf, sizeof buf, 0);
        if (n > 0) {
          received_.append(buf, static_cast<size_t>(n));
        } else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
          client_eof_ = true;
        } else {
          break;
        }
        progress = true;
      }
      if (!pending_.empty()) {
        ssize_t n = send(client_, pending_.data(), pending_.size(), MSG_NOSIGNAL);
        if (n > 0) {
          sent_.append(pending_, 0, static_cast<size_t>(n));
          pending_.erase(0, static_cast<size_t>(n));
          progress = true;
        }
      }
    }
    return progress;
  }

  void check_client() {
    if (std::string_view(sent_).starts_with(pilotfish::Http2Connection::preface())) {
      // An HTTP/2 client: what it gets is frames (the codec's own fuzz target checks them);
      // here the upstreams' side and the teardown are checked.
      if (trace_on()) {
        dump("client sent", sent_);
        dump("client received", received_);
      }
      return;
    }
    RequestLog requests;
    requests.decode(sent_);
    ResponseCheck responses(requests);
    const char* wrong = responses.check(received_, client_eof_);
    if (trace_on()) {
      std::fprintf(stderr, "=== %zu request(s) began%s, %zu final response(s), client %s\n", requests.head.size(),
                   requests.failed ? " (then undecodable bytes)" : "", responses.finals,
                   client_eof_ ? "saw the session close" : "still open");
      dump("client sent", sent_);
      dump("client received", received_);
      for (size_t i = 0; i < upstreams_.size(); ++i)
        dump(("upstream connection " + std::to_string(i) + " received").c_str(), upstreams_[i]->received());
    }
    if (wrong) fail(wrong);
  }

  void teardown() {
    pilotfish::Worker& w = *f_.worker;
    size_t left = 0;
    w.for_each_stream([&](pilotfish::Stream* s) { left += dynamic_cast<pilotfish::HttpSession*>(s) != nullptr; });
    if (trace_on() && left) std::fprintf(stderr, "=== %zu session(s) still open after both peers closed\n", left);
    while (w.close_idle_upstream()) {
    }
    w.for_each_stream([](pilotfish::Stream* s) { s->close(); });
    upstreams_.clear();
    // Copies start on the loop's next turn and end at their refused connect: turned until done.
    for (int turn = 0; turn < 1000 && (stream_count() > 0 || copies_in_flight() > 0); ++turn) uv_run(loop_, UV_RUN_NOWAIT);
    if (copies_in_flight() != 0) fail("a mirror copy is still counted in flight after the teardown");
    std::string lines;
    f_.taps.take(*f_.tap, &lines);
    for (size_t start = 0, end; start < lines.size(); start = end + 1) {
      end = lines.find('\n', start);
      if (end == std::string::npos) fail("a tap line without its newline");
      std::string why;
      auto doc = pilotfish::parse_json_strict(std::string_view(lines).substr(start, end - start), {}, &why);
      if (!doc || !doc->is_object()) fail("a tap line that is not a JSON object");
      if (doc->contains("time") && (!(*doc)["path"].is_string() || (*doc)["path"].get<std::string>().find('?') != std::string::npos))
        fail("a tap line with a query string");
    }
    if (stream_count() != 0) fail("a stream is left after the teardown");
    if (w.downstream_count() != 0) fail("the worker still counts a downstream connection");
    if (pilotfish::DescriptorBudget::process().in_use() != 0) fail("the descriptor budget is not given back");
    for (const char* name : {"app", "dead", "h2"}) {
      auto c = f_.resilience.find_cluster(name);
      if (c && (c->requests != 0 || c->connections != 0 || c->pending != 0 || c->retries != 0))
        fail("a cluster's breaker counts are not back to zero");
    }
  }

  int64_t copies_in_flight() {
    auto c = f_.resilience.find_cluster("dead");
    return c ? c->mirrors.load() : 0;
  }

  size_t stream_count() {
    size_t n = 0;
    f_.worker->for_each_stream([&](pilotfish::Stream*) { ++n; });
    return n;
  }

  [[noreturn]] void fail(const char* why) {
    std::fprintf(stderr, "fuzz_session: %s\n", why);
    dump("client sent", sent_);
    dump("client received", received_);
    for (size_t i = 0; i < upstreams_.size(); ++i)
      dump(("upstream connection " + std::to_string(i) + " received").c_str(), upstreams_[i]->received());
    std::abort();
  }

  friend class UpstreamConn;
  Fixture& f_;
  uv_loop_t* loop_;
  std::vector<Script> scripts_;
  size_t next_ = 0;
  std::vector<std::unique_ptr<UpstreamConn>> upstreams_;
  int client_ = -1;
  bool client_eof_ = false;
  std::string pending_;   // for the client to send
  std::string sent_;      // what the client has sent
  std::string received_;  // what it has received
};

void UpstreamConn::answer_now() {
  script_ = x_.next_script(false, true);
  if (script_) piece_ = piece_size(script_->flags >> 3, script_->bytes.size());
}

Step UpstreamConn::on_request_head(pilotfish::RequestHead&) {
  if (!answered_ && waiting_ == 0 && script_ == nullptr) {
    // The next script may answer before the body (bit 0).
    const Script* s = x_.next_script(true, false);
    if (s) {
      answered_ = true;
      script_ = s;
      written_ = 0;
      piece_ = piece_size(s->flags >> 3, s->bytes.size());
    }
  }
  return Step::go;
}

void UpstreamConn::start_next() {
  if (script_ || waiting_ == 0 || fd_ < 0) return;
  --waiting_;
  script_ = x_.next_script(false, false);
  written_ = 0;
  if (!script_) {
    send_fin();  // nothing left to say
    return;
  }
  piece_ = piece_size(script_->flags >> 3, script_->bytes.size());
}

void UpstreamConn::feed(const char* data, size_t length) {
  received_.append(data, length);
  if (h2_) {
    waiting_ = 1;  // the next script goes: start_next, from step
    return;
  }
  while (length > 0 && !tunnel_) {
    Http1Decoder::Outcome o = decoder_.execute(data, length);
    if (o.kind == Http1Decoder::Outcome::more) return;
    if (o.kind == Http1Decoder::Outcome::upgrade) {
      tunnel_ = true;
      return;
    }
    if (o.kind == Http1Decoder::Outcome::failed) {
      std::fprintf(stderr, "fuzz_session: the upstream could not decode a request: %s\n", o.reason);
      x_.fail("the session sent an upstream bytes that are not an HTTP/1.1 request");
    }
    decoder_.resume();
    data += o.consumed;
    length -= o.consumed;
  }
}

bool UpstreamConn::step() {
  if (fd_ < 0) return false;
  bool progress = false;
  char buf[65536];
  for (;;) {
    ssize_t n = recv(fd_, buf, sizeof buf, 0);
    if (n > 0) {
      feed(buf, static_cast<size_t>(n));
      progress = true;
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    close_fd(false);  // the session closed it (or reset it)
    return true;
  }
  if (h2_ && waiting_ && !script_ && !fin_sent_) {
    start_next();
    progress = true;
  }
  if (script_ && fd_ >= 0) {
    size_t n = std::min(piece_, script_->bytes.size() - written_);
    if (n > 0) {
      ssize_t w = send(fd_, script_->bytes.data() + written_, n, MSG_NOSIGNAL);
      if (w > 0) {
        written_ += static_cast<size_t>(w);
        progress = true;
      } else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
        close_fd(false);
        return true;
      }
    }
    if (written_ == script_->bytes.size()) {
      uint8_t flags = script_->flags;
      script_ = nullptr;
      written_ = 0;
      progress = true;
      if (flags & kReset) {
        close_fd(true);
        return true;
      }
      if (flags & kFin) send_fin();
      if (!fin_sent_) start_next();
    }
  }
  return progress;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  Fixture& f = fixture();
  std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);
  size_t cut = in.find(kSeparator);
  std::string_view client = in.substr(0, cut);
  std::vector<Script> scripts;
  while (cut != std::string_view::npos && scripts.size() < kMaxScripts) {
    in.remove_prefix(cut + kSeparator.size());
    cut = in.find(kSeparator);
    std::string_view part = in.substr(0, cut);
    Script s;
    if (!part.empty()) {
      s.flags = static_cast<uint8_t>(part[0]);
      s.bytes.assign(part.substr(1));
    }
    scripts.push_back(std::move(s));
  }
  Exchange x(f, std::move(scripts));
  x.run(data[0], client);
  return 0;
}
