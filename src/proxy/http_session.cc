// The session's downstream half: the client connection (TLS, timers, drain), its requests
// (decoded by http1_codec, checked, normalised, admitted, routed) one at a time in order,
// local replies, the end of each request and its access-log line. The upstream half (attempts,
// retries, deadlines, the response) is http_session_upstream.cc.
#include "proxy/http_session.h"

#include <cinttypes>
#include <cstdio>
#include <new>

#include "gateway/admission.h"
#include "http/local_reply.h"
#include "http/upstream_head.h"
#include "log/logger.h"
#include "pilotfish/header_rules.h"
#include "pilotfish/route_matcher.h"
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
  response_.set_head_limit(kMaxResponseHeadBytes);
}

void HttpSession::start() {
  note_peer();
  if (listener_->mtls) {
    if (!accept_tls(worker_.tls(), /*http=*/true)) {
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
  arm_timer(Timer::idle, draining() ? kDrainIdleGraceMs : static_cast<uint64_t>(listener_->idle_timeout.count()));
  start_read();
  if (!first_bytes.empty()) {
    std::string bytes = first_bytes;
    on_data(bytes.data(), bytes.size());
  }
}

void HttpSession::note_peer() {
  uv_tcp_nodelay(tcp(), 1);
  sockaddr_storage peer;
  int len = sizeof peer;
  if (uv_tcp_getpeername(tcp(), reinterpret_cast<sockaddr*>(&peer), &len) == 0) {
    char ip[64] = "";
    if (peer.ss_family == AF_INET)
      uv_ip4_name(reinterpret_cast<sockaddr_in*>(&peer), ip, sizeof ip);
    else if (peer.ss_family == AF_INET6 && IN6_IS_ADDR_V4MAPPED(&reinterpret_cast<sockaddr_in6*>(&peer)->sin6_addr))
      // An IPv4 client of a "[::]" listener: written as IPv4, as the same client on 0.0.0.0 is.
      uv_inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in6*>(&peer)->sin6_addr.s6_addr[12], ip, sizeof ip);
    else if (peer.ss_family == AF_INET6)
      uv_ip6_name(reinterpret_cast<sockaddr_in6*>(&peer), ip, sizeof ip);
    client_address_ = ip;
  }
}

// A route's (else the listener's) rate limit, then its auth (gateway/admission.h). False when
// answered 429 or 401.
bool HttpSession::admit(const Route* route, size_t route_index) {
  RateLimiter* limiter = nullptr;
  if (route && route->rate_limit)
    limiter = snap_->route_limiters[listener_index_][route_index].get();
  else if (rate_limit_for(*listener_, route))
    limiter = snap_->listener_limiters[listener_index_].get();
  if (!limiter && !auth_for(*listener_, route)) return true;  // nothing to check: the common case
  const TlsState* t = tls();
  std::string_view peer = t && t->established() ? std::string_view(t->peer_id()) : std::string_view();
  Admission verdict = pilotfish::admit({*listener_, route, limiter, client_address_, peer, req_.fields,
                                        snap_->keys.jwks.get(), worker_.jwt_cache()});
  rq_.auth = verdict.auth;
  rq_.auth_subject = std::move(verdict.subject);
  rq_.auth_subject_ok = verdict.has_subject;
  if (verdict.admitted()) return true;
  local_headers_ = std::move(verdict.reply_headers);
  ListenerStats& stats = *snap_->listener_stats[listener_index_];
  if (verdict.status == 401) {
    stats.auth_failures.add();
    log_debug("listener " + listener_->name + ": 401 for " + client_address_ + ": " + verdict.why);
  } else {
    stats.rate_limited.add();
  }
  send_local_response(verdict.status, verdict.error, rq_.request_has_body);
  return false;
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
  draining_ = true;
  if (!rq_.in_request && !tunnel_) {
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
  rq_.keep_alive = false;
  rq_.client_keep_alive = false;
}

// ---------------------------------------------------------------------------------------------
// Downstream input

void HttpSession::on_data(char* data, size_t length) {
  rq_.bytes_in += length;
  if (tunnel_) {
    send_upstream(data, length);
    if (rq_.upstream.connection) rq_.upstream.connection->flush();
    if (upstream_pending() > kHighWater) {
      rq_.paused_for_upstream = true;
      stop_read();
    }
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
    if (!rq_.local_response) {
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

void HttpSession::after_downstream_io() {
  if (closing()) return;
  if (rq_.upstream.connection && rq_.upstream.connection->connected()) {
    if (rq_.upstream.connection->flush() != 0) {
      // The upstream write failed; its read side reports the end.
    }
  }
  if (!tunnel_ && rq_.in_request && !rq_.request_complete && upstream_pending() > kHighWater) {
    rq_.paused_for_upstream = true;
    stop_read();
  }
  if (flush() != 0) {
    close();
    return;
  }
  maybe_finish_request();
}

void HttpSession::on_read_end(int status) {
  if (status == UV_EOF && !tunnel_ && (parser_paused_ || waiting_for_client_ || leftover_.size() > leftover_off_)) {
    // The client sent its requests and then shut down its side: the answers to every request
    // already received still go out, then the connection closes.
    client_eof_ = true;
    if (!parser_paused_ && !waiting_for_client_) continue_pipeline();
    return;
  }
  if (status == UV_EOF && !rq_.in_request && !tunnel_ && pending_bytes() > 0) {
    // Between requests, with answers still queued: they go out before the close.
    close_when_flushed();
    return;
  }
  // The client went away (or reset). Nothing can be answered any more.
  if (rq_.in_request && rq_.status == 0) rq_.error = "downstream_closed";
  close();
}

void HttpSession::on_write_done(int status) {
  if (status < 0) {
    close();
    return;
  }
  last_progress_ms_ = uv_now(worker_.loop());
  if (rq_.paused_for_downstream && pending_bytes() < kLowWater) {
    rq_.paused_for_downstream = false;
    if (rq_.upstream.connection) rq_.upstream.connection->start_read();
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
  rq_.in_request = true;
  rq_.started_ns = uv_hrtime();
  request_.set_head_limit(listener_->max_header_bytes);
  arm_timer(Timer::header, static_cast<uint64_t>(listener_->header_timeout.count()));
  return Step::go;
}

bool HttpSession::validate_request_head() {
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
  if (hosts == 1) {
    authority_.assign(trim_ows(req_.fields.value(req_.fields.find("host"))));
    if (!is_valid_host(authority_)) {
      send_local_response(400, "invalid_host", true);
      return false;
    }
  }
  if (request_.method_is_connect()) {
    send_local_response(405, "connect_refused", true);
    return false;
  }
  if (request_.method_is_options() && req_.target == "*") {
    rq_.target.path.assign(1, '*');  // not = "*": g++ 12 warns falsely there (-Wrestrict, GCC bug 105651)
    rq_.target.query.clear();
  } else {
    auto normalized = normalize_target(req_.target, listener_->allow_ambiguous_paths);
    if (!normalized) {
      // Said apart from a malformed target: the operator may want allow_ambiguous_paths.
      bool ambiguous = !listener_->allow_ambiguous_paths && normalize_target(req_.target, true);
      send_local_response(400, ambiguous ? "ambiguous_path" : "invalid_target", true);
      return false;
    }
    rq_.target = std::move(*normalized);
  }
  rq_.request_chunked = request_.chunked();
  rq_.request_has_body = rq_.request_chunked || (request_.has_content_length() && request_.content_length() > 0);
  if (listener_->max_body_bytes && !rq_.request_chunked && request_.content_length() > listener_->max_body_bytes &&
      request_.has_content_length()) {
    send_local_response(413, "body_too_large", true);
    return false;
  }
  return true;
}

Step HttpSession::on_request_head(RequestHead&) {
  if (!validate_request_head()) return Step::fail;
  rq_.client_keep_alive = request_.keep_alive() && !draining();
  rq_.keep_alive = rq_.client_keep_alive;

  if (request_.upgrade()) {
    size_t u = req_.fields.find("upgrade");
    rq_.websocket = u != HeaderList::npos && iequals(trim_ows(req_.fields.value(u)), "websocket");
    // Only WebSocket becomes a tunnel; another protocol's upgrade header is dropped and the
    // request is answered as a plain one. Either way, unless a 101 turns it into a tunnel, the
    // connection closes after the response: the decoder takes what follows an upgrade request as
    // the other protocol's bytes, not as a next request.
    close_after_response_ = true;
  }

  size_t id = req_.fields.find("x-request-id");
  if (id != HeaderList::npos) {
    request_id_.assign(req_.fields.value(id));
  } else {
    char buf[33];
    snprintf(buf, sizeof buf, "%016" PRIx64 "%016" PRIx64, worker_.random().next(), worker_.random().next());
    request_id_.assign(buf, 32);
  }

  if (listener_->mtls && !peer_admitted(*listener_, tls())) {
    snap_->listener_stats[listener_index_]->authz_denied.add();
    log_debug("listener " + listener_->name + ": " + (tls_established() ? tls()->peer_id() : "a peer without mTLS") +
              " is not in its allow list");
    send_local_response(403, "peer_not_allowed", true);
    return Step::fail;
  }

  if (!fixed_cluster_.empty()) {
    // Intercepted: the original destination chose the cluster (by name: a reload may have
    // moved it, or removed it).
    const auto& clusters = snap_->policy->clusters;
    size_t found = SIZE_MAX;
    for (size_t i = 0; i < clusters.size(); ++i)
      if (clusters[i].name == fixed_cluster_) found = i;
    if (found == SIZE_MAX) {
      send_local_response(404, "no_route", rq_.request_has_body);
      return rq_.request_has_body ? Step::fail : Step::go;
    }
    rq_.cluster_index = found;
    // The route still says which auth and rate limit apply (its cluster is the destination's).
    std::string host = host_for_routing(authority_);
    RequestView view{host, rq_.target.path, request_.method_name(),
                     &req_.fields};
    const Route* route = match_route(*listener_, view);
    if (!admit(route, route ? static_cast<size_t>(route - listener_->routes.data()) : SIZE_MAX))
      return rq_.request_has_body ? Step::fail : Step::go;
  } else {
    std::string host = host_for_routing(authority_);
    RequestView view{host, rq_.target.path, request_.method_name(),
                     &req_.fields};
    const Route* route = match_route(*listener_, view);
    if (route == nullptr) {
      send_local_response(404, "no_route", rq_.request_has_body);
      return rq_.request_has_body ? Step::fail : Step::go;
    }
    rq_.cluster_index = route->cluster_index;
    if (!admit(route, static_cast<size_t>(route - listener_->routes.data())))
      return rq_.request_has_body ? Step::fail : Step::go;
  }
  rq_.cluster = &snap_->policy->clusters[rq_.cluster_index];
  ClusterState& cs = cluster_state();
  if (!rq_.upstream.take_request_slot(cs, *rq_.cluster)) {
    overflow(BreakerLimit::requests);
    return rq_.request_has_body ? Step::fail : Step::go;
  }
  cs.shared->budget.record_request(worker_.index(), uv_now(worker_.loop()));
  rq_.upstream.replayable = !rq_.request_has_body || request_.method_is_idempotent();
  const TlsState* t = tls();
  rq_.upstream.nested = build_upstream_head(
      upstream_head_, {request_.method_name(), rq_.target, req_.fields, rq_.request_chunked, rq_.websocket, *listener_,
                       client_address_, t && t->established() ? t : nullptr, rq_.auth_subject_ok ? rq_.auth : nullptr,
                       rq_.auth_subject, request_id_});
  start_attempt();
  if (closing()) return Step::fail;
  if (rq_.local_response) return rq_.request_has_body ? Step::fail : Step::go;
  if (rq_.request_has_body && listener_->body_timeout.count() > 0)
    arm_timer(Timer::body, static_cast<uint64_t>(listener_->body_timeout.count()));
  else
    arm_timer(Timer::none, 0);
  return Step::go;
}


Step HttpSession::on_body(std::string_view piece) {
  const char* at = piece.data();
  size_t length = piece.size();
  rq_.body_bytes += length;
  if (listener_->max_body_bytes && rq_.body_bytes > listener_->max_body_bytes) {
    send_local_response(413, "body_too_large", true);
    return Step::fail;
  }
  if (rq_.local_response) return Step::go;  // answered already; the rest of the body is skipped
  if (rq_.request_chunked) {
    std::string chunk_head;
    append_chunk_header(chunk_head, length);
    send_body(chunk_head.data(), chunk_head.size());
    send_body(at, length);
    send_body("\r\n", 2);
  } else {
    send_body(at, length);
  }
  return Step::go;
}

Step HttpSession::on_message_complete(RequestHead& head) {
  rq_.request_complete = true;
  if (!rq_.local_response && rq_.request_chunked) {
    if (!fields_valid(head.trailers)) {
      send_local_response(400, "invalid_header", true);
      return Step::fail;
    }
    std::string last_chunk;
    append_request_last_chunk(last_chunk, head.trailers, connection_tokens(head.fields), *listener_);
    send_body(last_chunk.data(), last_chunk.size());
  }
  if (!rq_.local_response && !rq_.response_complete && rq_.cluster != nullptr) {
    // The request is in; from here the cluster's timeout bounds every attempt, and the
    // per-try timeout the one in flight.
    uint64_t now = uv_now(worker_.loop());
    rq_.upstream.start_deadlines(*rq_.cluster, now);
    arm_upstream_timer();
  }
  if (request_.upgrade()) return Step::go;  // the decoder stops after an upgrade by itself
  return Step::pause;
}

// ---------------------------------------------------------------------------------------------
// Local responses, completion, timers

void HttpSession::send_local_response(int status, const char* reason, bool close_connection) {
  if (rq_.local_response || closing()) return;
  rq_.local_response = true;
  rq_.error = reason;
  if (rq_.upstream.connection) abort_upstream();
  if (rq_.response_started) {
    // Part of an upstream response went out already: the only honest signal left is a close.
    close();
    return;
  }
  rq_.status = status;
  rq_.response_started = true;
  rq_.response_complete = true;
  if (close_connection || close_after_response_ || draining()) rq_.keep_alive = false;
  LocalReply reply{status, reason, local_headers_, rq_.keep_alive, request_.version_minor() == 0, request_.method_is_head()};
  rq_.bytes_out += append_local_reply(out(), reply);
  local_headers_.clear();
  if (!rq_.keep_alive) {
    // Nothing more is read or parsed from this connection.
    log_request();
    rq_.upstream.release_holds();
    rq_.in_request = false;
    stop_read();
    close_when_flushed();
  }
}

void HttpSession::close_when_flushed() {
  close_after_flush();
  // A client that does not take its last answer is not waited for longer than an idle one.
  if (!closing() && pending_bytes() > 0) arm_timer(Timer::idle, static_cast<uint64_t>(listener_->idle_timeout.count()));
}

void HttpSession::maybe_finish_request() {
  if (closing() || tunnel_ || !rq_.in_request) return;
  if (!rq_.response_complete) return;
  if (!rq_.request_complete) {
    // Answered before the request was all in (an early error, an upstream that did not wait):
    // the rest of the request cannot be told apart from the next one, so the connection ends.
    log_request();
    rq_.upstream.release_holds();
    rq_.in_request = false;
    arm_timer(Timer::none, 0);
    stop_read();
    close_when_flushed();
    return;
  }
  finish_request();
}

void HttpSession::finish_request() {
  log_request();
  bool keep = rq_.keep_alive && !close_after_response_ && !draining();
  reset_request();
  arm_timer(Timer::none, 0);
  if (!keep) {
    close_when_flushed();
    return;
  }
  request_.resume();
  parser_paused_ = false;
  continue_pipeline();
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
    if (!rq_.in_request && pending_bytes() > kHighWater) {
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
    if (!rq_.in_request || !rq_.request_complete) close_when_flushed();
    return;
  }
  if (!rq_.in_request) arm_timer(Timer::idle, static_cast<uint64_t>(listener_->idle_timeout.count()));
  if (leftover_.size() - leftover_off_ <= kMaxPipelinedBytes && !waiting_for_client_) start_read();
}

void HttpSession::reset_request() {
  // Destroyed and made anew in place (no temporary to move from): its holds give back their
  // slots, probe and balancer count.
  rq_.~ActiveRequest();
  new (&rq_) ActiveRequest();
  req_.clear();
  authority_.clear();
  request_id_.clear();
  to_upstream_.clear();
  resp_.clear();
  replay_.clear();
  if (replay_.capacity() > 16 * 1024) replay_.shrink_to_fit();  // one big PUT does not pin 64 KiB
}

void HttpSession::log_request() {
  if (rq_.started_ns == 0) return;
  uint64_t duration_ns = uv_hrtime() - rq_.started_ns;
  if (rq_.status != 0)  // 0: the client left before any answer; nothing was sent
    snap_->route(listener_index_, rq_.cluster ? rq_.cluster_index : SIZE_MAX).record(rq_.status, duration_ns);
  AccessLogBuffer& log = worker_.access_log();
  if (!log.enabled()) {
    rq_.started_ns = 0;
    return;
  }
  AccessLogEntry e;
  e.listener = listener_->name;
  e.method = request_.method_name();
  e.authority = authority_;
  e.path = rq_.target.path.empty() ? std::string_view(req_.target) : std::string_view(rq_.target.path);
  e.status = rq_.status;
  e.duration_seconds = static_cast<double>(duration_ns) / 1e9;
  if (rq_.cluster && rq_.upstream.endpoint >= 0)
    e.upstream = cluster_state().pools[static_cast<size_t>(rq_.upstream.endpoint)]->address().text;
  e.bytes_in = rq_.bytes_in;
  e.bytes_out = rq_.bytes_out;
  e.attempts = rq_.upstream.attempts;
  e.error = rq_.error;
  e.request_id = request_id_;
  log.record(e);
  rq_.started_ns = 0;
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

void HttpSession::on_close() {
  if (rq_.in_request) log_request();
  rq_.upstream.give_back_connection(false);
  rq_.upstream.release_holds();
  conn_stats_->connections.add(-1);
  worker_.remove_downstream();
}

}  // namespace pilotfish
