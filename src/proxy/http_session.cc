// An HTTP/1.1 client connection (see http_session.h): TLS, timers, drain, its requests decoded by
// http1_codec and checked, one at a time in order, each handed to the connection's Exchange;
// the response written as HTTP/1.1 (framing, interim responses, trailers, local replies, the
// WebSocket tunnel), and the end of each request.
#include "proxy/http_session.h"

#include "http/local_reply.h"
#include "log/logger.h"
#include "pilotfish/header_rules.h"
#include "pilotfish/socket_address.h"
#include "proxy/worker_context.h"

namespace pilotfish {

namespace {

constexpr size_t kMaxPipelinedBytes = 64 * 1024;
constexpr uint64_t kDrainFlushMs = 5000;

}  // namespace

HttpSession::HttpSession(WorkerContext& worker, std::shared_ptr<ListenerSlot> slot)
    : Stream(worker),
      worker_(worker),
      slot_(std::move(slot)),
      snap_(worker.snapshot()),
      listener_(&snap_->policy->listeners[slot_->index]),
      listener_index_(slot_->index),
      conn_stats_(snap_->listener_stats[listener_index_]) {
  conn_stats_->connections.add(1);
  conn_stats_->connections_total.add();
  worker.add_downstream();
}

HttpSession::~HttpSession() { give_request_buffers(); }

// The request head's buffers: borrowed from the worker's pools at a request's first byte,
// given back when the connection goes idle or ends.
void HttpSession::take_request_buffers() {
  req_.fields.take_pooled();
  StringPool<PoolRole::target>::take(req_.target);
}

void HttpSession::give_request_buffers() {
  req_.fields.give_pooled();
  StringPool<PoolRole::target>::give(req_.target);
}

void HttpSession::start() {
  note_peer();
  detect_http2_ = listener_->http2;
  if (listener_->mtls) {
    if (!accept_tls(worker_.tls(), /*http=*/true, /*h2=*/listener_->http2)) {
      close();
      return;
    }
    // The handshake is bounded like a request head: a client that never finishes it does not
    // hold the connection for the idle timeout.
    arm_timer(Timer::handshake, static_cast<uint64_t>(listener_->header_timeout.count()));
    start_read();
    return;
  }
  // Accepted while draining (during drain_delay): one request is expected soon, or none.
  arm_timer(Timer::idle, draining() ? kDrainIdleGraceMs : static_cast<uint64_t>(listener_->idle_timeout.count()));
  start_read();
}

// A connection an InterceptSession accepted: its TLS handshake (if any) is done and its first
// bytes were read.
void HttpSession::start_adopted(const std::string& first_bytes) {
  note_peer();
  detect_http2_ = listener_->http2;
  arm_timer(Timer::idle, draining() ? kDrainIdleGraceMs : static_cast<uint64_t>(listener_->idle_timeout.count()));
  start_read();
  if (!first_bytes.empty()) {
    std::string bytes = first_bytes;
    on_data(bytes.data(), bytes.size());
  }
}

void HttpSession::note_peer() {
  // TCP_NODELAY came with the socket from its listener (Worker::open_listener).
  sockaddr_storage peer;
  int len = sizeof peer;
  if (uv_tcp_getpeername(tcp(), reinterpret_cast<sockaddr*>(&peer), &len) == 0) {
    char ip[64] = "";
    if (peer.ss_family == AF_INET)
      client_address_.assign(ip, format_ipv4(reinterpret_cast<const unsigned char*>(
                                                 &reinterpret_cast<sockaddr_in*>(&peer)->sin_addr.s_addr),
                                             ip));
    else if (peer.ss_family == AF_INET6 && IN6_IS_ADDR_V4MAPPED(&reinterpret_cast<sockaddr_in6*>(&peer)->sin6_addr))
      // An IPv4 client of a "[::]" listener: written as IPv4, as the same client on 0.0.0.0 is.
      client_address_.assign(ip, format_ipv4(&reinterpret_cast<sockaddr_in6*>(&peer)->sin6_addr.s6_addr[12], ip));
    else if (peer.ss_family == AF_INET6 && uv_ip6_name(reinterpret_cast<sockaddr_in6*>(&peer), ip, sizeof ip) == 0)
      client_address_ = ip;
  }
}

void HttpSession::on_tls_established() {
  arm_timer(Timer::idle, draining() ? kDrainIdleGraceMs : static_cast<uint64_t>(listener_->idle_timeout.count()));
}

void HttpSession::on_tls_failed() {
  log_debug("listener " + listener_->name + ": mTLS handshake with " + client_address_ + " failed: " + tls()->error());
  close();
}

void HttpSession::on_policy_changed() {
  if (slot_->index == SIZE_MAX || slot_->protocol != Protocol::http) drain();
}

void HttpSession::refresh_snapshot() {
  const SnapshotPtr& current = worker_.snapshot();
  if (!current || current == snap_) return;
  if (slot_->index == SIZE_MAX || slot_->protocol != Protocol::http) {
    // The listener is gone (or is no longer HTTP): this request is the last, under the policy
    // the connection was accepted with.
    draining_ = true;
    return;
  }
  snap_ = current;
  listener_index_ = slot_->index;
  listener_ = &snap_->policy->listeners[listener_index_];
}

void HttpSession::drain() {
  if (closing()) return;
  if (h2_) {
    h2_->drain();
    return;
  }
  draining_ = true;
  if (!h1_.in_request && !tunnel_) {
    // Idle: close after a grace, or once what is queued for the client (a finished response
    // to a slow reader) has gone out.
    if (pending_bytes() == 0) {
      arm_timer(Timer::idle, kDrainIdleGraceMs);
    } else {
      close_after_flush();
      arm_timer(Timer::idle, kDrainFlushMs);  // a client that does not read is not waited for long
    }
    return;
  }
  h1_.keep_alive = false;
  h1_.client_keep_alive = false;
}

// ---------------------------------------------------------------------------------------------
// Downstream input

bool HttpSession::detect_http2(char*& data, size_t& length) {
  std::string_view preface = Http2Connection::preface();
  size_t have = preface_.size();
  size_t n = std::min(length, preface.size() - have);
  if (std::string_view(data, n) != preface.substr(have, n)) {
    // HTTP/1.1: the bytes kept go first.
    detect_http2_ = false;
    if (have) {
      preface_.append(data, length);
      data = preface_.data();
      length = preface_.size();
    }
    return true;
  }
  preface_.append(data, length);
  if (preface_.size() < preface.size()) return false;
  detect_http2_ = false;
  arm_timer(Timer::none, 0);
  h2_ = std::make_unique<Http2Downstream>(worker_, *this, slot_, snap_, client_address_, fixed_cluster_);
  std::string bytes;
  bytes.swap(preface_);
  h2_->receive(bytes.data(), bytes.size());
  return false;
}

void HttpSession::on_data(char* data, size_t length) {
  if (h2_) {
    h2_->receive(data, length);
    return;
  }
  if (detect_http2_ && !detect_http2(data, length)) return;
  ex().count_in(length);
  if (tunnel_) {
    ex().tunnel_send(data, length);
    return;
  }
  if (leftover_off_ >= leftover_.size()) {
    leftover_.clear();
    leftover_off_ = 0;
  }
  if (parser_paused_ || waiting_for_client_ || !leftover_.empty()) {
    // A pipelined request behind the one in flight: kept, and parsed once the response is
    // done. Reading goes on (no epoll change per request) unless a client sends too much.
    if (leftover_off_ > 0) {
      leftover_.erase(0, leftover_off_);
      leftover_off_ = 0;
    }
    leftover_.append(data, length);
    if (leftover_.size() > kMaxPipelinedBytes) stop_read();
    if (!parser_paused_ && !waiting_for_client_) continue_pipeline();
    return;
  }
  parse_input(data, length);
}

void HttpSession::parse_input(const char* data, size_t length) {
  Http1Decoder::Outcome result = request_.execute(data, length);
  if (closing()) return;
  if (result.kind == Http1Decoder::Outcome::paused || result.kind == Http1Decoder::Outcome::upgrade) {
    // One request is complete; what follows waits until its response is done.
    const char* pos = data + result.consumed;
    bool from_leftover = !leftover_.empty() && data >= leftover_.data() && data < leftover_.data() + leftover_.size();
    if (result.consumed < length) {
      if (from_leftover)
        leftover_off_ = static_cast<size_t>(pos - leftover_.data());  // no copy: just move the mark
      else
        leftover_.assign(pos, length - result.consumed);
    } else if (from_leftover) {
      leftover_.clear();
      leftover_off_ = 0;
    }
    parser_paused_ = true;
  } else if (result.kind == Http1Decoder::Outcome::failed) {
    if (!ex().local_response()) {
      if (ex().target().path.empty()) ex().set_raw_target(req_.target);
      log_debug(std::string("listener ") + listener_->name + ": bad request from " + client_address_ + ": " +
                result.reason);
      if (result.too_large)
        send_local_response(431, "header_too_large", true);
      else
        send_local_response(400, "bad_request", true);
    }
    stop_read();
  }
  after_downstream_io();
}

void HttpSession::exchange_progress() {
  // An HTTP/2 upstream hands over a response in pieces from one read of its connection (the
  // HEADERS, then DATA, then the stream's end): they go to the client in one write at the end
  // of this loop turn (run_deferred), not a write for each. The end itself goes at once.
  if (h1_.in_request && !closing() && ex().on_h2_stream() && !ex().response_complete()) {
    progress_deferred_ = true;
    event_loop_.defer(*this);
    return;
  }
  progress_deferred_ = false;
  after_downstream_io();
}

void HttpSession::after_downstream_io() {
  if (closing()) return;
  // Writes what is queued upstream (a failed write is reported by the connection's read side),
  // and stops reading the body when the upstream is behind.
  if (h1_.in_request || tunnel_) ex().flush_upstream();
  if (flush() != 0) {
    close();
    return;
  }
  maybe_finish_request();
}

void HttpSession::on_read_end(int status) {
  if (h2_) {
    h2_->on_read_end();
    return;
  }
  if (status == UV_EOF && !tunnel_ && (parser_paused_ || waiting_for_client_ || leftover_.size() > leftover_off_)) {
    // The client sent its requests and then shut down its side: the answers to every request
    // already received still go out, then the connection closes.
    client_eof_ = true;
    if (!parser_paused_ && !waiting_for_client_) continue_pipeline();
    return;
  }
  if (status == UV_EOF && !h1_.in_request && !tunnel_ && pending_bytes() > 0) {
    // Between requests, with answers still queued: they go out before the close.
    close_when_flushed();
    return;
  }
  // The client went away (or reset). Nothing can be answered any more.
  if (h1_.in_request) ex().client_gone();
  close();
}

void HttpSession::on_write_done(int status) {
  if (status < 0) {
    close();
    return;
  }
  if (h2_) {
    h2_->on_write_done();
    return;
  }
  if (ex_) {
    ex_->set_last_progress(uv_now(worker_.loop()));
    ex_->downstream_drained();
  }
  if (closing()) return;
  if (waiting_for_client_ && timer_kind_ == Timer::idle)
    arm_timer(Timer::idle, static_cast<uint64_t>(listener_->idle_timeout.count()));  // it reads: not idle
  if (waiting_for_client_ && pending_bytes() < kLowWater) {
    waiting_for_client_ = false;
    continue_pipeline();
    return;
  }
  maybe_finish_request();
}

// ---------------------------------------------------------------------------------------------
// Request parsing

Step HttpSession::on_message_begin() {
  refresh_snapshot();
  h1_.in_request = true;
  take_request_buffers();
  if (ex_) ex_->take_buffers();  // one kept since the last request (no spare was free)
  take_output();
  ex().open(snap_, listener_index_);
  request_.set_head_limit(listener_->max_header_bytes);
  arm_timer(Timer::header, static_cast<uint64_t>(listener_->header_timeout.count()));
  return Step::go;
}

bool HttpSession::validate_request_head() {
  ex().set_raw_target(req_.target);
  if (request_.version_major() != 1 || request_.version_minor() > 1) {
    send_local_response(505, "version_not_supported", true);
    return false;
  }
  if (!fields_valid(req_.fields) || !framing_headers_valid(req_.fields)) {
    send_local_response(400, "invalid_header", true);
    return false;
  }
  size_t hosts = req_.fields.count("host");
  if (hosts > 1 || (hosts == 0 && request_.version_minor() == 1)) {
    send_local_response(400, "invalid_host", true);
    return false;
  }
  if (hosts == 1 && !ex().set_authority(req_.fields.value(req_.fields.find("host")))) return false;
  if (request_.method_is_connect()) {
    send_local_response(405, "connect_refused", true);
    return false;
  }
  if (!ex().set_target(req_.target, request_.method_is_options())) return false;
  if (listener_->max_body_bytes && !request_.chunked() && request_.has_content_length() &&
      request_.content_length() > listener_->max_body_bytes) {
    send_local_response(413, "body_too_large", true);
    return false;
  }
  return true;
}

Step HttpSession::on_request_head(RequestHead&) {
  if (!validate_request_head()) return Step::fail;
  h1_.client_close = !request_.keep_alive();
  h1_.client_keep_alive = !h1_.client_close && !draining();
  h1_.keep_alive = h1_.client_keep_alive;

  bool websocket = false;
  if (request_.upgrade()) {
    size_t u = req_.fields.find("upgrade");
    websocket = u != HeaderList::npos && iequals(trim_ows(req_.fields.value(u)), "websocket");
    // Only WebSocket becomes a tunnel; another protocol's upgrade header is dropped and the
    // request is answered as a plain one. Either way, unless a 101 turns it into a tunnel, the
    // connection closes after the response: the decoder takes what follows an upgrade request as
    // the other protocol's bytes, not as a next request.
    close_after_response_ = true;
  }
  ex().set_request_id(req_.fields);
  bool chunked = request_.chunked();
  bool has_body = chunked || (request_.has_content_length() && request_.content_length() > 0);
  ExchangeRequest request{request_.method_name(), request_.method_is_head(), request_.method_is_idempotent(),
                          websocket, has_body, chunked, req_.fields, client_address_, tls(), fixed_cluster_};
  bool started = ex().begin(request);
  if (closing()) return Step::fail;
  // Answered: the rest of a body cannot be told from a next request.
  if (!started) return has_body || !h1_.keep_alive ? Step::fail : Step::go;
  // A fault's delay holds the request: its timer stays, and the body's starts when it is over.
  if (ex().delayed()) return Step::go;
  if (has_body && listener_->body_timeout.count() > 0)
    arm_timer(Timer::body, static_cast<uint64_t>(listener_->body_timeout.count()));
  else
    arm_timer(Timer::none, 0);
  return Step::go;
}

Step HttpSession::on_body(std::string_view piece) {
  return ex().request_body(piece) ? Step::go : Step::fail;
}

Step HttpSession::on_message_complete(RequestHead& head) {
  if (!ex().request_end(head.fields, head.trailers)) return Step::fail;
  if (request_.upgrade()) return Step::go;  // the decoder stops after an upgrade by itself
  return Step::pause;
}

// ---------------------------------------------------------------------------------------------
// Local responses, completion, timers

void HttpSession::send_local_response(int status, const char* reason, bool close_connection) {
  if (ex().target().path.empty()) ex().set_raw_target(req_.target);
  ex().answer(status, reason, close_connection);
}

void HttpSession::exchange_local_reply(int status, const char* error, std::string_view extra_headers,
                                       bool request_unread) {
  if (closing()) return;
  if (request_unread || close_after_response_ || draining()) h1_.keep_alive = false;
  LocalReply reply{status, error, extra_headers, h1_.keep_alive, request_.version_minor() == 0,
                   request_.method_is_head()};
  ex().count_out(append_local_reply(out(), reply));
  if (!h1_.keep_alive) {
    // Nothing more is read or parsed from this connection.
    ex().log();
    ex().drop_upstream();
    h1_.in_request = false;
    stop_read();
    close_when_flushed();
  }
}

void HttpSession::exchange_broken() {
  if (progress_deferred_) {
    // What an HTTP/2 upstream sent before its stream broke (the head, part of the body) was
    // held for the turn's end: it goes out first, so the client sees the answer cut short
    // rather than no answer at all.
    progress_deferred_ = false;
    flush();
  }
  if (tunnel_)
    close_when_flushed();
  else
    close();
}

void HttpSession::exchange_request_flow(bool go) {
  if (go)
    start_read();
  else
    stop_read();
}

void HttpSession::close_when_flushed(bool linger) {
  if (linger)
    close_after_flush();
  else
    close_after_flush_no_linger();
  // A client that does not take its last answer is not waited for longer than an idle one.
  if (!closing() && pending_bytes() > 0) arm_timer(Timer::idle, static_cast<uint64_t>(listener_->idle_timeout.count()));
}

void HttpSession::maybe_finish_request() {
  if (closing() || tunnel_ || !h1_.in_request) return;
  if (!ex().response_complete()) return;
  if (!ex().request_complete()) {
    // Answered before the request was all in (an early error, an upstream that did not wait):
    // the rest of the request cannot be told apart from the next one, so the connection ends.
    ex().log();
    ex().drop_upstream();
    h1_.in_request = false;
    arm_timer(Timer::none, 0);
    stop_read();
    close_when_flushed();
    return;
  }
  finish_request();
}

void HttpSession::finish_request() {
  ex().log();
  bool keep = h1_.keep_alive && !close_after_response_ && !draining();
  // The client asked for the close and sent nothing after this request: it has no more bytes
  // to send, so no lingering read waits for its FIN (nginx decides the same way).
  bool client_done = (h1_.client_close || client_eof_) && leftover_.size() <= leftover_off_;
  reset_request();
  arm_timer(Timer::none, 0);
  if (!keep) {
    close_when_flushed(/*linger=*/!client_done);
    return;
  }
  request_.resume();
  parser_paused_ = false;
  continue_pipeline();
  // Idle, it seems: what grew for requests goes back to the worker at the end of this loop turn
  // (run_deferred), not from here. This may run inside the parser's or the exchange's own
  // callback, whose code after it still uses what it holds, and bytes of a next request may
  // still be in the parser's input.
  if (!closing() && !h1_.in_request && !h2_) event_loop_.defer(*this);
}

bool HttpSession::idle() const {
  return !closing() && !write_shut() && !h1_.in_request && !tunnel_ && !h2_ && !parser_paused_ &&
         leftover_.size() <= leftover_off_;
}

void HttpSession::run_deferred() {
  if (progress_deferred_) {
    progress_deferred_ = false;
    after_downstream_io();
    // The pieces held this turn may have counted against the client's high-water mark and
    // paused the stream; written now (often whole, with no write callback to report it), they
    // no longer do.
    if (!closing() && ex_ && ex_->waiting_for_downstream()) ex_->downstream_drained();
  }
  if (!idle()) return;
  give_request_buffers();
  give_back_exchange();
  release_output_when_flushed();
}

void HttpSession::continue_pipeline() {
  // Requests already received are answered one after another in this loop, not by recursion:
  // a local answer (a 404) completes inside parse_input, and maybe_finish_request() then only
  // asks for another turn of the loop.
  if (in_pipeline_) {
    pipeline_again_ = true;
    return;
  }
  in_pipeline_ = true;
  do {
    pipeline_again_ = false;
    if (closing() || parser_paused_) break;
    if (!h1_.in_request && pending_bytes() > kHighWater) {
      // The client is not reading its answers: take no more requests until it does.
      waiting_for_client_ = true;
      break;
    }
    size_t unparsed = leftover_.size() - leftover_off_;
    if (unparsed == 0) {
      leftover_.clear();
      leftover_off_ = 0;
      break;
    }
    const char* data = leftover_.data() + leftover_off_;
    // What is parsed now leaves the buffer unless the parser pauses inside it again (then
    // parse_input moves leftover_off_ to where it stopped).
    leftover_off_ = leftover_.size();
    parse_input(data, unparsed);
    if (leftover_off_ >= leftover_.size()) {
      leftover_.clear();
      leftover_off_ = 0;
    }
  } while (pipeline_again_);
  in_pipeline_ = false;
  if (closing()) return;
  if (waiting_for_client_) {
    // A client that takes none of its answers for the idle timeout is closed.
    arm_timer(Timer::idle, static_cast<uint64_t>(listener_->idle_timeout.count()));
    return;
  }
  if (client_eof_) {
    // Nothing more will come: close once the last complete request is answered.
    if (!h1_.in_request || !ex().request_complete()) close_when_flushed();
    return;
  }
  if (!h1_.in_request) arm_timer(Timer::idle, static_cast<uint64_t>(listener_->idle_timeout.count()));
  if (leftover_.size() - leftover_off_ <= kMaxPipelinedBytes && !waiting_for_client_) start_read();
}

void HttpSession::reset_request() {
  h1_ = H1Request();
  req_.clear();
  if (ex_) ex_->reset();
}

void HttpSession::arm_timer(Timer which, uint64_t ms) {
  timer_kind_ = which;
  if (which == Timer::none || ms == 0) {
    clear_deadline();
    timer_kind_ = Timer::none;
    return;
  }
  set_deadline(ms);
}

namespace {
// Enough for the requests of a busy worker's connections that go idle and come back; more
// exchanges than this stay with their connections until the next sweep destroys them.
constexpr size_t kSpareExchanges = 64;
}  // namespace

void HttpSession::adopt_exchange() {
  auto& spares = worker_.spare_exchanges();
  if (spares.empty()) {
    ex_.reset(new Exchange(worker_, static_cast<ExchangeOwner&>(*this)));
    return;
  }
  ex_.reset(static_cast<Exchange*>(spares.back().release()));
  spares.pop_back();
  ex_->rebind(*this);
  ex_->take_buffers();
}

void HttpSession::give_back_exchange() {
  // Only an exchange reset after its request (a request refused with a close is not): a spare
  // must be as a new one.
  if (!ex_ || !ex_->is_reset()) return;
  auto& spares = worker_.spare_exchanges();
  if (spares.size() >= kSpareExchanges) {
    ex_->release_buffers();  // kept until the next request or the sweep; its buffers go now
    return;
  }
  ex_->detach();
  spares.push_back(std::move(ex_));
}

void HttpSession::release_idle_memory() {
  // The worker's once-a-second sweep, outside every exchange callback: an idle connection that
  // still holds an exchange (the spares were full when it went idle) lets it go.
  if (ex_ && idle()) ex_.reset();
}

void HttpSession::on_close() {
  event_loop_.cancel(*this);
  if (h2_) h2_->on_close();
  if (ex_) {
    if (h1_.in_request) ex_->log();
    ex_->drop_upstream();
  }
  conn_stats_->connections.add(-1);
  worker_.remove_downstream();
}

}  // namespace pilotfish
