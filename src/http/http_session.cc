#include "http/http_session.h"

#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <ctime>

#include "gateway/admission.h"
#include "http/local_reply.h"
#include "log/logger.h"
#include "net/descriptor_budget.h"
#include "pilotfish/header_rules.h"
#include "pilotfish/route_matcher.h"
#include "server/worker.h"

namespace pilotfish {

namespace {

// Headers pilotfish sets itself on the way to the upstream; what a client sent is replaced, in
// any spelling a server may read as the same header ("X_Forwarded_Client_Cert").
// x-forwarded-client-cert is only ever pilotfish's own: a client's is dropped on every listener,
// so no one can claim an identity they did not prove.
bool is_replaced_request_header(std::string_view name) {
  return same_field_name_folded(name, "x-forwarded-for") || same_field_name_folded(name, "x-forwarded-proto") ||
         same_field_name_folded(name, "x-forwarded-client-cert");
}

constexpr uint64_t kTunnelIdleMs = 3600 * 1000;
constexpr size_t kMaxPipelinedBytes = 64 * 1024;
constexpr size_t kMaxReasonBytes = 1024;
constexpr int kMaxInterimResponses = 16;
// A request body up to this size is kept, so that an idempotent request can be sent again.
constexpr size_t kMaxReplayBytes = 64 * 1024;
constexpr uint64_t kDrainFlushMs = 5000;
// An idle keep-alive connection is closed this long after a drain begins, not at once: a
// client may have sent its next request already, and closing under it would fail that request.
// Arriving within the grace, the request is answered, with `connection: close`.
constexpr uint64_t kDrainIdleGraceMs = 1000;
// A timer this late means the worker's loop was held up, not that a peer was slow.
constexpr uint64_t kLoopStallMs = 500;

}  // namespace

HttpSession::HttpSession(Worker& worker, std::shared_ptr<ListenerSlot> slot)
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
  const TlsState* t = tls();
  std::string_view peer = t && t->established() ? std::string_view(t->peer_id()) : std::string_view();
  Admission verdict = pilotfish::admit({*listener_, route, limiter, client_address_, peer, headers_,
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

// A header name the listener's auth writes (any of them, on any route), in any spelling a
// server may read as the same header.
bool HttpSession::is_subject_header(std::string_view name) const {
  for (const auto& h : listener_->subject_headers)
    if (same_field_name_folded(name, h)) return true;
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
    if (upstream_) upstream_->flush();
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
      send_local_response(400, "bad_request", true);
    }
    stop_read();
  }
  after_downstream_io();
}

void HttpSession::after_downstream_io() {
  if (closing()) return;
  if (upstream_ && upstream_->connected()) {
    if (upstream_->flush() != 0) {
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
    if (upstream_) upstream_->start_read();
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
  arm_timer(Timer::header, static_cast<uint64_t>(listener_->header_timeout.count()));
  return Step::go;
}

Step HttpSession::on_url(std::string_view piece) {
  rq_.head_bytes += piece.size();
  if (rq_.head_bytes > listener_->max_header_bytes) {
    send_local_response(431, "header_too_large", true);
    return Step::fail;
  }
  url_.append(piece);
  return Step::go;
}

Step HttpSession::on_header_field(std::string_view piece) {
  rq_.head_bytes += piece.size();
  if (rq_.head_bytes > listener_->max_header_bytes) {
    send_local_response(431, "header_too_large", true);
    return Step::fail;
  }
  headers_.append_name(piece);
  return Step::go;
}

Step HttpSession::on_header_value(std::string_view piece) {
  rq_.head_bytes += piece.size();
  if (rq_.head_bytes > listener_->max_header_bytes) {
    send_local_response(431, "header_too_large", true);
    return Step::fail;
  }
  headers_.append_value(piece);
  return Step::go;
}

Step HttpSession::on_header_value_complete() {
  rq_.head_bytes += 4;  // ": " and CRLF
  headers_.end_header();
  if (rq_.head_bytes > listener_->max_header_bytes) {
    send_local_response(431, "header_too_large", true);
    return Step::fail;
  }
  return Step::go;
}

bool HttpSession::validate_request_head() {
  if (request_.version_major() != 1 || request_.version_minor() > 1) {
    send_local_response(505, "version_not_supported", true);
    return false;
  }
  if (!fields_valid(headers_) || !framing_headers_valid(headers_)) {
    send_local_response(400, "invalid_header", true);
    return false;
  }
  size_t hosts = headers_.count("host");
  if (hosts > 1 || (hosts == 0 && request_.version_minor() == 1)) {
    send_local_response(400, "invalid_host", true);
    return false;
  }
  if (hosts == 1) {
    authority_.assign(trim_ows(headers_.value(headers_.find("host"))));
    if (!is_valid_host(authority_)) {
      send_local_response(400, "invalid_host", true);
      return false;
    }
  }
  if (request_.method_is_connect()) {
    send_local_response(405, "connect_refused", true);
    return false;
  }
  if (request_.method_is_options() && url_ == "*") {
    rq_.target.path = "*";
    rq_.target.query.clear();
  } else {
    auto normalized = normalize_target(url_, listener_->allow_ambiguous_paths);
    if (!normalized) {
      // Said apart from a malformed target: the operator may want allow_ambiguous_paths.
      bool ambiguous = !listener_->allow_ambiguous_paths && normalize_target(url_, true);
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

Step HttpSession::on_headers_complete() {
  if (!validate_request_head()) return Step::fail;
  rq_.client_keep_alive = request_.keep_alive() && !draining();
  rq_.keep_alive = rq_.client_keep_alive;

  if (request_.upgrade()) {
    size_t u = headers_.find("upgrade");
    rq_.websocket = u != HeaderList::npos && iequals(trim_ows(headers_.value(u)), "websocket");
    // Only WebSocket becomes a tunnel; another protocol's upgrade header is dropped and the
    // request is answered as a plain one. Either way, unless a 101 turns it into a tunnel, the
    // connection closes after the response: the decoder takes what follows an upgrade request as
    // the other protocol's bytes, not as a next request.
    close_after_response_ = true;
  }

  size_t id = headers_.find("x-request-id");
  if (id != HeaderList::npos) {
    request_id_.assign(headers_.value(id));
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
                     &headers_};
    const Route* route = match_route(*listener_, view);
    if (!admit(route, route ? static_cast<size_t>(route - listener_->routes.data()) : SIZE_MAX))
      return rq_.request_has_body ? Step::fail : Step::go;
  } else {
    std::string host = host_for_routing(authority_);
    RequestView view{host, rq_.target.path, request_.method_name(),
                     &headers_};
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
  if (!rq_.request_slot.take(cs.shared, &ClusterShared::requests, rq_.cluster->circuit_breaker.max_requests)) {
    overflow(BreakerLimit::requests);
    return rq_.request_has_body ? Step::fail : Step::go;
  }
  cs.shared->budget.record_request(worker_.index(), uv_now(worker_.loop()));
  rq_.replayable = !rq_.request_has_body || request_.method_is_idempotent();
  build_upstream_head();
  start_attempt();
  if (closing()) return Step::fail;
  if (rq_.local_response) return rq_.request_has_body ? Step::fail : Step::go;
  if (rq_.request_has_body && listener_->body_timeout.count() > 0)
    arm_timer(Timer::body, static_cast<uint64_t>(listener_->body_timeout.count()));
  else
    arm_timer(Timer::none, 0);
  return Step::go;
}

void HttpSession::build_upstream_head() {
  std::string& h = upstream_head_;
  h.clear();
  h += request_.method_name();
  h += ' ';
  h += rq_.target.path;
  h += rq_.target.query;
  h += " HTTP/1.1\r\n";
  std::string tokens = connection_tokens(headers_);
  std::string forwarded_for;
  bool has_host = false;
  for (size_t i = 0; i < headers_.size(); ++i) {
    std::string_view name = headers_.name(i);
    if (is_hop_by_hop(name, tokens)) continue;
    if (is_replaced_request_header(name)) {
      if (iequals(name, "x-forwarded-for")) {  // the client's own chain is kept; X_Forwarded_For is not
        if (!forwarded_for.empty()) forwarded_for += ", ";
        forwarded_for += trim_ows(headers_.value(i));
      }
      continue;
    }
    if (!listener_->subject_headers.empty() && is_subject_header(name)) continue;  // only ever pilotfish's
    if (same_field_name_folded(name, "x-pilotfish-attempt")) {
      rq_.nested = true;  // from another pilotfish: its hop retries, this one does not (by default)
      continue;
    }
    if (iequals(name, "host")) has_host = true;
    h += name;
    h += ": ";
    h += trim_ows(headers_.value(i));
    h += "\r\n";
  }
  if (!has_host) {
    h += "host: ";
    h += listener_->address.text;
    h += "\r\n";
  }
  if (rq_.request_chunked) h += "transfer-encoding: chunked\r\n";
  h += "x-forwarded-for: ";
  if (!forwarded_for.empty()) {
    h += forwarded_for;
    h += ", ";
  }
  h += client_address_;
  if (TlsState* t = tls(); t && t->established()) {
    h += "\r\nx-forwarded-proto: https\r\nx-forwarded-client-cert: By=";
    h += t->own_id();
    h += ";URI=";
    h += t->peer_id();
    h += ";Hash=";
    h += t->peer_cert_sha256();
    h += "\r\n";
  } else {
    h += "\r\nx-forwarded-proto: http\r\n";
  }
  if (rq_.auth && rq_.auth_subject_ok) {
    h += rq_.auth->subject_header;
    h += ": ";
    h += rq_.auth_subject;
    h += "\r\n";
  }
  if (headers_.find("x-request-id") == HeaderList::npos) {
    h += "x-request-id: ";
    h += request_id_;
    h += "\r\n";
  }
  if (rq_.websocket) {
    h += "connection: upgrade\r\nupgrade: ";
    h += trim_ows(headers_.value(headers_.find("upgrade")));
    h += "\r\n";
  }
  // The head ends with the attempt header, added per attempt (append_attempt_head()).
}

void HttpSession::append_attempt_head(std::string& out) const {
  out += upstream_head_;
  out += "x-pilotfish-attempt: ";
  append_uint(out, static_cast<uint64_t>(rq_.attempts));
  out += "\r\n\r\n";
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

Step HttpSession::on_message_complete() {
  rq_.request_complete = true;
  if (!rq_.local_response && rq_.request_chunked) send_body("0\r\n\r\n", 5);
  if (!rq_.local_response && !rq_.response_complete && rq_.cluster != nullptr) {
    // The request is in; from here the cluster's timeout bounds every attempt, and the
    // per-try timeout the one in flight.
    uint64_t now = uv_now(worker_.loop());
    rq_.deadline_ms = now + static_cast<uint64_t>(rq_.cluster->timeout.count());
    if (upstream_ && rq_.cluster->retry.per_try_timeout.count() > 0)
      rq_.try_deadline_ms = now + static_cast<uint64_t>(rq_.cluster->retry.per_try_timeout.count());
    arm_upstream_timer();
  }
  if (request_.upgrade()) return Step::go;  // the decoder stops after an upgrade by itself
  return Step::pause;
}

// ---------------------------------------------------------------------------------------------
// Upstream

void HttpSession::send_body(const char* data, size_t length) {
  // Kept for a retry while it is small; a larger body is sent once.
  if (rq_.replayable && rq_.request_has_body) {
    if (replay_.size() + length <= kMaxReplayBytes)
      replay_.append(data, length);
    else
      rq_.replayable = false, replay_.clear(), replay_.shrink_to_fit();
  }
  send_upstream(data, length);
}

void HttpSession::overflow(BreakerLimit limit) {
  cluster_state().stats->breaker_overflow[static_cast<size_t>(limit)].add();
  send_local_response(503, "overloaded", rq_.request_has_body && !rq_.request_complete);
}

void HttpSession::start_attempt(bool fresh_connection) {
  ClusterState& cs = cluster_state();
  uint64_t now = uv_now(worker_.loop());
  int previous = rq_.endpoint;
  rq_.endpoint = -1;
  size_t n = cs.pools.size();
  for (size_t tries = 0; tries < n; ++tries) {
    int chosen = cs.balancer->pick([&](size_t i) { return cs.health[i]->may_try(now); }, previous);
    if (chosen < 0) break;
    EndpointHealth& health = *cs.health[static_cast<size_t>(chosen)];
    if (!health.needs_probe()) {
      rq_.endpoint = chosen;
      break;
    }
    // Its ejection is over: this request is its one probe, unless another got there first.
    if (rq_.probe.claim(cs.health[static_cast<size_t>(chosen)])) {
      rq_.endpoint = chosen;
      break;
    }
  }
  if (rq_.endpoint < 0) {
    send_local_response(503, "no_healthy_upstream", rq_.request_has_body && !rq_.request_complete);
    return;
  }
  ++rq_.attempts;
  EndpointPool& pool = *cs.pools[static_cast<size_t>(rq_.endpoint)];
  resp_headers_.clear();
  resp_status_text_.clear();
  response_.restart();
  // What this attempt sends: the head with its attempt number, then the body so far. A first
  // attempt's body is still arriving (send_body); a retry's was kept (replay_), unless nothing
  // was sent at all (a connect failure), when it is still in to_upstream_.
  if (rq_.attempts == 1 && !rq_.upstream_sent && to_upstream_.empty()) {
    // The common case, built in place: no copy of the head beyond this one.
    append_attempt_head(to_upstream_);
    rq_.unsent_head_length = to_upstream_.size();
  } else {
    std::string head;
    append_attempt_head(head);
    if (!rq_.upstream_sent)
      to_upstream_.replace(0, rq_.unsent_head_length, head);
    else
      to_upstream_ = head + replay_;
    rq_.unsent_head_length = head.size();
  }
  rq_.upstream_sent = false;
  rq_.response_bytes_seen = false;
  rq_.interim_responses = 0;
  bool reused = false;
  BreakerLimit limit = BreakerLimit::connections;
  // Counted before acquire(): a connect that fails at once runs on_upstream_connect_failed
  // (and perhaps a whole retry) inside it, and that ends this count.
  rq_.balanced.start(std::shared_ptr<Balancer>(snap_->clusters[rq_.cluster_index], cs.balancer.get()),
                  static_cast<size_t>(rq_.endpoint));
  UpstreamConnection* c = pool.acquire(this, &reused, &limit, fresh_connection);
  if (!c) {
    rq_.balanced.end();
    rq_.probe.release();
    overflow(limit);
    return;
  }
  if (c->closing()) return;  // failed synchronously: on_upstream_connect_failed has run
  upstream_ = c;
  rq_.upstream_reused = reused;
  if (rq_.request_complete && rq_.cluster->retry.per_try_timeout.count() > 0) {
    rq_.try_deadline_ms = now + static_cast<uint64_t>(rq_.cluster->retry.per_try_timeout.count());
    arm_upstream_timer();
  }
  if (reused) on_upstream_connected();
}

// What the request holds of the cluster's shared state goes back (its place in the balancer's
// count goes with its upstream connection: see release_upstream).
void HttpSession::release_cluster_holds() {
  rq_.probe.release();
  rq_.request_slot.release();
  rq_.retry_slot.release();
}

void HttpSession::endpoint_verdict(bool ok) {
  if (rq_.endpoint < 0 || rq_.cluster == nullptr) return;
  ClusterState& cs = cluster_state();
  EndpointHealth& health = *cs.health[static_cast<size_t>(rq_.endpoint)];
  rq_.probe.settle();
  if (ok) {
    record_endpoint_success(health, *cs.shared);
    return;
  }
  if (record_endpoint_failure(health, *cs.shared, rq_.cluster->outlier_detection, cs.pools.size(),
                              uv_now(worker_.loop()))) {
    cs.stats->outlier_ejections.add();
    log_warn("cluster " + rq_.cluster->name + ": endpoint " + cs.pools[static_cast<size_t>(rq_.endpoint)]->address().text +
             " ejected (outlier detection)");
  }
}

bool HttpSession::retry_allowed(uint32_t condition) {
  const RetryPolicy& retry = rq_.cluster->retry;
  if (!(retry.on & condition)) return false;
  // A request from another pilotfish was retried there already; a connect failure sent
  // nothing anywhere, so it is still tried elsewhere.
  if (rq_.nested && !retry.nested && condition != kRetryConnectFailure) return false;
  if (static_cast<uint32_t>(rq_.attempts) > retry.retries) return false;
  // Sent bytes can be sent again only when they were kept and the method allows it; a
  // connect failure sent nothing.
  bool sent = rq_.upstream_sent || condition != kRetryConnectFailure;
  if (sent && (!rq_.request_complete || !rq_.replayable)) return false;
  uint64_t now = uv_now(worker_.loop());
  if (rq_.deadline_ms && now >= rq_.deadline_ms) return false;
  ClusterState& cs = cluster_state();
  if (!cs.shared->budget.allows_retry(now, retry.budget_ratio, retry.budget_min_per_second)) {
    cs.stats->retry_budget_exhausted.add();
    return false;
  }
  if (!rq_.retry_slot.held() && !rq_.retry_slot.take(cs.shared, &ClusterShared::retries, rq_.cluster->circuit_breaker.max_retries)) {
    cs.stats->breaker_overflow[static_cast<size_t>(BreakerLimit::retries)].add();
    rq_.retry_overflow = true;  // answered 503 overloaded, as every breaker limit is
    return false;
  }
  cs.stats->retries.add();
  cs.shared->budget.record_retry(worker_.index(), now);
  return true;
}

void HttpSession::schedule_retry() {
  rq_.try_deadline_ms = 0;  // that attempt is over
  // Full jitter: uniform in [0, min(max, base * 2^(n-1))) before retry n. While the client is
  // still sending its body (a connect failure), the retry is at once.
  const RetryPolicy& retry = rq_.cluster->retry;
  uint64_t cap = static_cast<uint64_t>(retry.backoff_base.count());
  for (int i = 1; i < rq_.attempts && cap < static_cast<uint64_t>(retry.backoff_max.count()); ++i) cap *= 2;
  cap = std::min(cap, static_cast<uint64_t>(retry.backoff_max.count()));
  uint64_t wait = cap ? worker_.random().below(cap) : 0;
  if (wait == 0 || !rq_.request_complete) {
    start_attempt();
    return;
  }
  rq_.backoff_until_ms = uv_now(worker_.loop()) + wait;
  arm_upstream_timer();
}

void HttpSession::arm_upstream_timer() {
  uint64_t next = 0;
  for (uint64_t t : {rq_.deadline_ms, rq_.try_deadline_ms, rq_.backoff_until_ms})
    if (t && (next == 0 || t < next)) next = t;
  if (next == 0) return;
  uint64_t now = uv_now(worker_.loop());
  arm_timer(Timer::upstream, next > now ? next - now : 1);
}

void HttpSession::on_upstream_connected() {
  rq_.upstream_sent = true;
  upstream_->append(to_upstream_);
  to_upstream_.clear();
  if (upstream_->flush() != 0) return;
  if (rq_.paused_for_upstream && upstream_pending() < kLowWater) {
    rq_.paused_for_upstream = false;
    start_read();
  }
}

void HttpSession::on_upstream_connect_failed(int status) {
  ClusterState& cs = cluster_state();
  cs.stats->upstream_connect_failure.add();
  rq_.balanced.end();
  upstream_ = nullptr;
  log_debug("cluster " + rq_.cluster->name + ": connect to " +
            cs.pools[static_cast<size_t>(rq_.endpoint)]->address().text + " failed: " + upstream_error_text(status));
  // A connect that failed here (no descriptors, no local port) says nothing about the endpoint,
  // and another endpoint would fare no better: the client is told pilotfish is overloaded.
  if (is_local_failure(status)) {
    rq_.probe.release();
    send_local_response(503, "overloaded", rq_.request_has_body && !rq_.request_complete);
    after_downstream_io();
    return;
  }
  endpoint_verdict(false);
  if (retry_allowed(kRetryConnectFailure)) {
    schedule_retry();
    after_downstream_io();
    return;
  }
  send_local_response(503,
                      rq_.retry_overflow                ? "overloaded"
                      : status == UV_ETIMEDOUT    ? "connect_timeout"
                      : status == kUpstreamTlsFailed ? "upstream_tls_failure"
                                                  : "connect_failure",
                      rq_.request_has_body && !rq_.request_complete);
  after_downstream_io();
}

void HttpSession::send_upstream(const char* data, size_t length) {
  if (upstream_ && upstream_->connected() && rq_.upstream_sent)
    upstream_->append({data, length});
  else
    to_upstream_.append(data, length);
}

size_t HttpSession::upstream_pending() const {
  return to_upstream_.size() + (upstream_ ? upstream_->pending_bytes() : 0);
}

void HttpSession::on_upstream_drained() {
  if (rq_.paused_for_upstream && upstream_pending() < kLowWater) {
    rq_.paused_for_upstream = false;
    start_read();
  }
}

void HttpSession::release_upstream(bool reusable) {
  if (!upstream_) return;
  rq_.balanced.end();
  UpstreamConnection* c = upstream_;
  upstream_ = nullptr;
  c->detach();
  if (reusable && c->pool() && c->pending_bytes() == 0) {
    c->pool()->release(c);
  } else {
    c->close();
  }
}

void HttpSession::abort_upstream() { release_upstream(false); }

void HttpSession::on_upstream_data(char* data, size_t length) {
  if (tunnel_) {
    rq_.bytes_out += length;
    append({data, length});
    if (flush() != 0) {
      close();
      return;
    }
    if (pending_bytes() > kHighWater && upstream_) {
      rq_.paused_for_downstream = true;
      upstream_->stop_read();
    }
    return;
  }
  rq_.response_bytes_seen = true;
  last_progress_ms_ = uv_now(worker_.loop());
  using Outcome = Http1Decoder::Outcome;
  Outcome result = response_.execute(data, length);
  // Interim responses (100 Continue) pause too, so the next head is checked from its start.
  while (result.kind == Outcome::paused && !rq_.response_complete && !closing()) {
    response_.resume();
    if (result.consumed >= length) {
      result = {Outcome::more, length, ""};
      break;
    }
    data += result.consumed;
    length -= result.consumed;
    result = response_.execute(data, length);
  }
  if (rq_.retry_after_response && !closing()) {
    rq_.retry_after_response = false;
    abort_upstream();
    if (rq_.retry_overflow)
      send_local_response(503, "overloaded", !rq_.request_complete);
    else
      schedule_retry();
    after_downstream_io();
    return;
  }
  if (closing()) return;
  if (result.kind == Outcome::upgrade && tunnel_) {
    enter_tunnel(data + result.consumed, length - result.consumed);
    return;
  }
  if (result.kind == Outcome::paused) {
    // The response is complete. Anything after it is a protocol violation by the upstream.
    bool extra = result.consumed < length;
    bool reusable = !extra && response_.keep_alive() && rq_.request_complete;
    release_upstream(reusable);
  } else if (result.kind == Outcome::failed) {
    log_warn("cluster " + rq_.cluster->name + ": invalid response from " +
             cluster_state().pools[static_cast<size_t>(rq_.endpoint)]->address().text + ": " + result.reason);
    if (!rq_.response_started) {
      cluster_state().stats->upstream_reset.add();
      endpoint_verdict(false);
    }
    abort_upstream();
    if (!rq_.response_started) {
      send_local_response(502, "invalid_response", true);
    } else {
      rq_.error = "invalid_response";
      close();
      return;
    }
  }
  if (flush() != 0) {
    close();
    return;
  }
  if (upstream_ && pending_bytes() > kHighWater) {
    rq_.paused_for_downstream = true;
    upstream_->stop_read();
  }
  maybe_finish_request();
}

void HttpSession::on_upstream_end(int status) {
  // The connection is closing itself; it is no longer ours.
  ClusterState& cs = cluster_state();
  bool tls_refused = status == kUpstreamTlsFailed && !rq_.response_bytes_seen;
  if (!tunnel_ && !rq_.response_started) (tls_refused ? cs.stats->upstream_connect_failure : cs.stats->upstream_reset).add();
  rq_.balanced.end();
  upstream_ = nullptr;
  if (tunnel_) {
    close_when_flushed();
    return;
  }
  if (rq_.response_started && !rq_.response_complete && status == UV_EOF) {
    // A response delimited by the connection's close ends here.
    if (response_.finish() && rq_.response_complete) {
      if (flush() != 0) close();
      else maybe_finish_request();
      return;
    }
  }
  if (rq_.response_started) {
    rq_.error = "upstream_reset";
    close();
    return;
  }
  if (tls_refused) {
    // The server refused our certificate (TLS 1.3 tells a client after its side of the
    // handshake): a connection that never was, as a failed connect. The server read none of
    // the request, but what was sent is sent again only if it was kept.
    endpoint_verdict(false);
    if (retry_allowed(kRetryConnectFailure)) {
      schedule_retry();
      after_downstream_io();
      return;
    }
    send_local_response(503, rq_.retry_overflow ? "overloaded" : "upstream_tls_failure", !rq_.request_complete);
    after_downstream_io();
    return;
  }
  // Nothing of a response came back. A request written to a pooled connection that the
  // upstream was closing at that moment (the keep-alive race) is sent once more on a fresh
  // connection when that is safe: an idempotent request whose body (if any) was kept. It is
  // not the endpoint's fault, and not a retry: no budget, no count.
  bool safe = request_.method_is_idempotent() && rq_.replayable;
  if (rq_.upstream_reused && !rq_.response_bytes_seen && safe && rq_.request_complete && !rq_.replayed) {
    rq_.replayed = true;
    rq_.probe.release();
    --rq_.attempts;
    start_attempt(/*fresh_connection=*/true);  // another pooled one may be closing just the same
    after_downstream_io();
    return;
  }
  endpoint_verdict(false);
  if (retry_allowed(kRetryReset)) {
    schedule_retry();
    after_downstream_io();
    return;
  }
  if (rq_.retry_overflow)
    send_local_response(503, "overloaded", !rq_.request_complete);
  else
    send_local_response(502, "upstream_reset", !rq_.request_complete);
  after_downstream_io();
}

// ---------------------------------------------------------------------------------------------
// Response parsing

Step HttpSession::on_response_status(std::string_view piece) {
  if (resp_status_text_.size() + piece.size() > kMaxReasonBytes) return Step::fail;
  resp_status_text_.append(piece);
  return Step::go;
}

Step HttpSession::on_response_header_field(std::string_view piece) {
  resp_headers_.append_name(piece);
  return resp_headers_.bytes() > 65536 ? Step::fail : Step::go;
}

Step HttpSession::on_response_header_value(std::string_view piece) {
  resp_headers_.append_value(piece);
  return resp_headers_.bytes() > 65536 ? Step::fail : Step::go;
}

Step HttpSession::on_response_header_value_complete() {
  resp_headers_.end_header();
  return Step::go;
}

Step HttpSession::on_response_headers_complete() {
  // A reason phrase is HTAB, SP, visible ASCII and obs-text (RFC 9112 4): one with NUL or other
  // control characters makes the response invalid, although it is never passed on.
  if (response_.version_major() != 1 || !fields_valid(resp_headers_) || !framing_headers_valid(resp_headers_) ||
      !is_valid_field_value(resp_status_text_))
    return Step::fail;
  int status = response_.status_code();
  if (status < 100 || status > 999) return Step::fail;
  if (status >= 200 || status == 101) cluster_state().stats->upstream_codes.add(status);
  if (status == 101) {
    if (!rq_.websocket) return Step::fail;  // an upgrade nobody asked for
    endpoint_verdict(true);
    rq_.retry_slot.release();
    rq_.status = 101;
    tunnel_ = true;
    write_response_head();
    return Step::go;
  }
  if (status < 200) {
    // Interim response (100 Continue, 103 Early Hints): passed on, the final one follows.
    // A few are normal; a stream of them is an upstream gone wrong.
    if (++rq_.interim_responses > kMaxInterimResponses) return Step::fail;
    if (request_.version_minor() == 1) write_response_head();
    resp_headers_.clear();
    resp_status_text_.clear();
    return Step::go;
  }
  // The final answer: the endpoint's verdict, and perhaps a retry instead of passing it on.
  uint32_t condition = 0;
  if (status >= 500) condition |= kRetry5xx;
  if (status == 502 || status == 503 || status == 504) condition |= kRetryGatewayError;
  for (int code : rq_.cluster->retry.status_codes)
    if (code == status) condition |= kRetryRetriableStatusCodes;
  endpoint_verdict(status < 500);
  if (condition && (retry_allowed(condition) || rq_.retry_overflow)) {
    rq_.retry_after_response = true;
    return Step::fail;  // on_upstream_data drops this answer and its connection, and retries
  }
  rq_.deadline_ms = rq_.try_deadline_ms = rq_.backoff_until_ms = 0;
  rq_.retry_slot.release();  // retrying is over: this answer goes to the client
  // `Keep-Alive: timeout=N`: the upstream closes idle connections after N s; this one is not
  // kept idle that long, so that no request is written to it as it closes.
  size_t ka = resp_headers_.find("keep-alive");
  if (ka != HeaderList::npos && upstream_) {
    std::string_view v = resp_headers_.value(ka);
    size_t t = v.find("timeout=");
    if (t != std::string_view::npos) {
      uint64_t seconds = 0;
      size_t i = t + 8;
      while (i < v.size() && v[i] >= '0' && v[i] <= '9' && seconds < 1'000'000) seconds = seconds * 10 + (v[i++] - '0');
      upstream_->set_idle_limit(seconds == 0 ? 1 : seconds * 800);
    }
  }
  rq_.status = status;
  bool no_body = request_.method_is_head() || status == 204 || status == 304;
  if (no_body) {
    rq_.framing = Framing::none;
  } else if (response_.has_content_length()) {
    rq_.framing = Framing::length;
  } else if (request_.version_minor() == 1) {
    rq_.framing = Framing::chunked;
  } else {
    rq_.framing = Framing::close;
    rq_.keep_alive = false;
  }
  if (close_after_response_ || draining()) rq_.keep_alive = false;
  write_response_head();
  rq_.response_started = true;
  // The answer is arriving; from now on the timeout guards against a stalled stream.
  arm_timer(Timer::upstream, static_cast<uint64_t>(rq_.cluster->timeout.count()));
  return no_body ? Step::skip_body : Step::go;
}

void HttpSession::write_response_head() {
  std::string& o = out();
  int status = response_.status_code();
  o += "HTTP/1.1 ";
  append_uint(o, static_cast<uint64_t>(status));
  o += ' ';
  o += reason_phrase(status);
  o += "\r\n";
  std::string tokens = connection_tokens(resp_headers_);
  for (size_t i = 0; i < resp_headers_.size(); ++i) {
    std::string_view name = resp_headers_.name(i);
    if (is_hop_by_hop(name, tokens)) continue;
    if (status < 200 || status == 204 || (status == 304 && iequals(name, "content-length"))) {
      if (iequals(name, "content-length")) continue;
    }
    o += name;
    o += ": ";
    o += trim_ows(resp_headers_.value(i));
    o += "\r\n";
  }
  if (status == 101) {
    o += "connection: upgrade\r\nupgrade: ";
    size_t u = resp_headers_.find("upgrade");
    o += u != HeaderList::npos ? trim_ows(resp_headers_.value(u)) : std::string_view("websocket");
    o += "\r\n\r\n";
    return;
  }
  if (status >= 200) {
    if (rq_.framing == Framing::chunked) o += "transfer-encoding: chunked\r\n";
    // Answered before the request is all in: the rest of it cannot be told from a next request,
    // so the connection closes after this response (maybe_finish_request), and says so.
    if (!rq_.request_complete) rq_.keep_alive = false;
    if (!rq_.keep_alive)
      o += "connection: close\r\n";
    else if (request_.version_minor() == 0)
      o += "connection: keep-alive\r\n";
  }
  o += "\r\n";
}

Step HttpSession::on_response_body(std::string_view piece) {
  rq_.bytes_out += piece.size();
  if (rq_.framing == Framing::chunked) {
    append_chunk_header(out(), piece.size());
    append(piece);
    append("\r\n");
  } else {
    append(piece);
  }
  return Step::go;
}

Step HttpSession::on_response_message_complete() {
  if (tunnel_) return Step::go;  // 101: the decoder stops for the upgrade itself
  if (!rq_.response_started) return Step::pause;  // the end of an interim response
  if (rq_.framing == Framing::chunked) append("0\r\n\r\n");
  rq_.response_complete = true;
  return Step::pause;
}

void HttpSession::enter_tunnel(const char* upstream_rest, size_t rest_length) {
  // From here both sides are bytes: what each side sent after its head goes to the other.
  rq_.response_started = true;
  rq_.response_complete = true;
  rq_.in_request = false;
  log_request();
  if (rest_length) append({upstream_rest, rest_length});
  if (leftover_.size() > leftover_off_) send_upstream(leftover_.data() + leftover_off_, leftover_.size() - leftover_off_);
  leftover_.clear();
  leftover_off_ = 0;
  if (upstream_) upstream_->flush();
  if (flush() != 0) {
    close();
    return;
  }
  arm_timer(Timer::idle, kTunnelIdleMs);
  start_read();
}

// ---------------------------------------------------------------------------------------------
// Local responses, completion, timers

void HttpSession::send_local_response(int status, const char* reason, bool close_connection) {
  if (rq_.local_response || closing()) return;
  rq_.local_response = true;
  rq_.error = reason;
  if (upstream_) abort_upstream();
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
    release_cluster_holds();
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
    release_cluster_holds();
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
  rq_ = ActiveRequest();  // its holds give back their slots, probe and balancer count
  url_.clear();
  headers_.clear();
  authority_.clear();
  request_id_.clear();
  to_upstream_.clear();
  resp_headers_.clear();
  resp_status_text_.clear();
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
  e.path = rq_.target.path.empty() ? std::string_view(url_) : std::string_view(rq_.target.path);
  e.status = rq_.status;
  e.duration_seconds = static_cast<double>(duration_ns) / 1e9;
  if (rq_.cluster && rq_.endpoint >= 0)
    e.upstream = cluster_state().pools[static_cast<size_t>(rq_.endpoint)]->address().text;
  e.bytes_in = rq_.bytes_in;
  e.bytes_out = rq_.bytes_out;
  e.attempts = rq_.attempts;
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

void HttpSession::on_timeout() {
  switch (timer_kind_) {
    case Timer::none: return;
    case Timer::idle: close(); return;
    case Timer::handshake:
      if (tls()) tls()->abandon("handshake not complete within header_timeout");
      close();
      return;
    case Timer::header:
    case Timer::body:
      if (!rq_.in_request || rq_.response_started) return;
      // A client that trickles its head or body is cut off here, whatever it still sends.
      send_local_response(408, timer_kind_ == Timer::header ? "header_timeout" : "body_timeout", true);
      flush();
      return;
    case Timer::upstream: {
      if (!rq_.in_request) return;
      // Waiting for the client to take what is queued is the client's pace, bounded by the
      // listener's idle timeout; waiting for the upstream is bounded by the cluster's.
      uint64_t limit = rq_.paused_for_downstream ? static_cast<uint64_t>(listener_->idle_timeout.count())
                                              : static_cast<uint64_t>(rq_.cluster ? rq_.cluster->timeout.count() : 0);
      if (rq_.response_started) {
        // A response is streaming: only a stall as long as the timeout ends it, where a stall
        // is no byte from the upstream and no byte taken by the client.
        uint64_t now = uv_now(worker_.loop());
        if (now - last_progress_ms_ < limit) {
          set_deadline(limit - (now - last_progress_ms_));
          return;
        }
        rq_.error = "upstream_stalled";
        close();
        return;
      }
      uint64_t now = uv_now(worker_.loop());
      if (rq_.deadline_ms && now >= rq_.deadline_ms) {
        if (!rq_.stall_checked && now - rq_.deadline_ms > kLoopStallMs) {
          // This timer is late: the worker itself was held up (and an answer may be waiting
          // unread in the socket). The I/O gets one turn of the loop before the verdict.
          rq_.stall_checked = true;
          arm_timer(Timer::upstream, 1);
          return;
        }
        // Every attempt together had the cluster's timeout. The endpoint is blamed only when
        // it had the request: connected, and nothing left in pilotfish's own queue for it.
        if (upstream_ && upstream_->connected() && upstream_->pending_bytes() == 0) endpoint_verdict(false);
        rq_.probe.release();
        send_local_response(504, "timeout", !rq_.request_complete);
        after_downstream_io();
        return;
      }
      if (rq_.backoff_until_ms && now >= rq_.backoff_until_ms) {
        rq_.backoff_until_ms = 0;
        start_attempt();
        after_downstream_io();
        return;
      }
      if (rq_.try_deadline_ms && now >= rq_.try_deadline_ms && upstream_) {
        // This attempt had its per-try timeout: a 504 for the retry conditions and a failure
        // of the endpoint.
        rq_.try_deadline_ms = 0;
        cluster_state().stats->upstream_timeout.add();
        abort_upstream();
        endpoint_verdict(false);
        if (retry_allowed(kRetry5xx | kRetryGatewayError)) {
          schedule_retry();
        } else {
          send_local_response(rq_.retry_overflow ? 503 : 504, rq_.retry_overflow ? "overloaded" : "timeout",
                              !rq_.request_complete);
        }
        after_downstream_io();
        return;
      }
      arm_upstream_timer();
      return;
    }
  }
}

void HttpSession::on_close() {
  if (rq_.in_request) log_request();
  if (upstream_) {
    rq_.balanced.end();
    UpstreamConnection* c = upstream_;
    upstream_ = nullptr;
    c->detach();
    c->close();
  }
  release_cluster_holds();
  conn_stats_->connections.add(-1);
  worker_.remove_downstream();
}

}  // namespace pilotfish
