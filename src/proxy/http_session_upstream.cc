// The session's upstream half: the request's attempts at endpoints (balancing, the breaker's
// limits, outlier probes), retries with backoff and the keep-alive race resend, the cluster and
// per-try deadlines, and the response relayed to the client (framing, interim responses, the
// WebSocket tunnel). The downstream half, from accepting the connection to local replies and
// the access log, is http_session.cc.
#include <uv.h>

#include <algorithm>
#include <cassert>

#include "proxy/http_session.h"
#include "http/upstream_head.h"
#include "log/logger.h"
#include "net/descriptor_budget.h"
#include "pilotfish/header_rules.h"
#include "upstream/retry_decision.h"

namespace pilotfish {

namespace {

constexpr size_t kMaxReasonBytes = 1024;
constexpr int kMaxInterimResponses = 16;
// A request body up to this size is kept, so that an idempotent request can be sent again.
constexpr size_t kMaxReplayBytes = 64 * 1024;
// A timer this late means the worker's loop was held up, not that a peer was slow.
constexpr uint64_t kLoopStallMs = 500;

}  // namespace

// ---------------------------------------------------------------------------------------------
// Upstream

void HttpSession::send_body(const char* data, size_t length) {
  // Kept for a retry while it is small; a larger body is sent once.
  if (rq_.upstream.replayable && rq_.request_has_body) {
    if (replay_.size() + length <= kMaxReplayBytes)
      replay_.append(data, length);
    else
      rq_.upstream.replayable = false, replay_.clear(), replay_.shrink_to_fit();
  }
  send_upstream(data, length);
}

void HttpSession::overflow(BreakerLimit limit) {
  cluster_state().stats->breaker_overflow[static_cast<size_t>(limit)].add();
  send_local_response(503, "overloaded", rq_.request_has_body && !rq_.request_complete);
}

void HttpSession::start_attempt(bool fresh_connection) {
  ClusterState& cs = cluster_state();
  UpstreamRequest& up = rq_.upstream;
  uint64_t now = uv_now(worker_.loop());
  if (!up.choose_endpoint(cs, now)) {
    send_local_response(503, "no_healthy_upstream", rq_.request_has_body && !rq_.request_complete);
    return;
  }
  ++up.attempts;
  resp_.clear();
  response_.restart();
  // What this attempt sends: the head with its attempt number, then the body so far. A first
  // attempt's body is still arriving (send_body); a retry's was kept (replay_), unless nothing
  // was sent at all (a connect failure), when it is still in to_upstream_.
  if (up.attempts == 1 && !up.sent && to_upstream_.empty()) {
    // The common case, built in place: no copy of the head beyond this one.
    append_attempt_head(to_upstream_, upstream_head_, up.attempts);
    rq_.unsent_head_length = to_upstream_.size();
  } else {
    std::string head;
    append_attempt_head(head, upstream_head_, up.attempts);
    if (!up.sent)
      to_upstream_.replace(0, rq_.unsent_head_length, head);
    else
      to_upstream_ = head + replay_;
    rq_.unsent_head_length = head.size();
  }
  up.sent = false;
  up.response_bytes_seen = false;
  rq_.interim_responses = 0;
  BreakerLimit limit = BreakerLimit::connections;
  if (!up.lend_connection(cs, this, fresh_connection, &limit)) {
    overflow(limit);
    return;
  }
  if (rq_.request_complete) {
    up.start_try_deadline(*rq_.cluster, now);
    arm_upstream_timer();
  }
  if (up.connection_reused) on_upstream_connected(*up.connection.get());
}

void HttpSession::endpoint_verdict(bool ok) {
  if (rq_.cluster) rq_.upstream.verdict(cluster_state(), *rq_.cluster, ok, uv_now(worker_.loop()));
}

void HttpSession::schedule_retry() {
  rq_.upstream.try_deadline_ms = 0;  // that attempt is over
  // While the client is still sending its body (a connect failure), the retry is at once.
  uint64_t wait = rq_.upstream.backoff_ms(*rq_.cluster, worker_.random());
  if (wait == 0 || !rq_.request_complete) {
    start_attempt();
    return;
  }
  rq_.upstream.backoff_until_ms = uv_now(worker_.loop()) + wait;
  arm_upstream_timer();
}

void HttpSession::arm_upstream_timer() {
  uint64_t next = rq_.upstream.next_deadline_ms();
  if (next == 0) return;
  uint64_t now = uv_now(worker_.loop());
  arm_timer(Timer::upstream, next > now ? next - now : 1);
}

void HttpSession::on_upstream_connected(UpstreamConnection& from) {
  assert(rq_.upstream.connection.holds(from) && rq_.cluster);
  (void)from;
  rq_.upstream.sent = true;
  rq_.upstream.connection->append(to_upstream_);
  to_upstream_.clear();
  if (rq_.upstream.connection->flush() != 0) return;
  if (rq_.paused_for_upstream && upstream_pending() < kLowWater) {
    rq_.paused_for_upstream = false;
    start_read();
  }
}

void HttpSession::on_upstream_connect_failed(UpstreamConnection& from, int status) {
  assert(rq_.upstream.connection.holds(from) && rq_.cluster);
  (void)from;
  rq_.upstream.connection_lost();
  follow(rq_.upstream.after_connect_failure(attempt_scope(), status));
  after_downstream_io();
}

AttemptScope HttpSession::attempt_scope() {
  return {cluster_state(), *rq_.cluster, uv_now(worker_.loop()), worker_.index(), rq_.request_complete};
}

void HttpSession::follow(const NextStep& next) {
  switch (next.kind) {
    case NextStep::pass: return;
    case NextStep::retry: schedule_retry(); return;
    case NextStep::resend: start_attempt(/*fresh_connection=*/true); return;  // another pooled one may be closing too
    case NextStep::answer: send_local_response(next.status, next.error, rq_.request_has_body && !rq_.request_complete); return;
  }
}

void HttpSession::send_upstream(const char* data, size_t length) {
  if (rq_.upstream.connection && rq_.upstream.connection->connected() && rq_.upstream.sent)
    rq_.upstream.connection->append({data, length});
  else
    to_upstream_.append(data, length);
}

size_t HttpSession::upstream_pending() const {
  return to_upstream_.size() + (rq_.upstream.connection ? rq_.upstream.connection->pending_bytes() : 0);
}

void HttpSession::on_upstream_drained(UpstreamConnection& from) {
  assert(rq_.upstream.connection.holds(from));
  (void)from;
  if (rq_.paused_for_upstream && upstream_pending() < kLowWater) {
    rq_.paused_for_upstream = false;
    start_read();
  }
}

void HttpSession::release_upstream(bool reusable) { rq_.upstream.give_back_connection(reusable); }

void HttpSession::abort_upstream() { release_upstream(false); }

void HttpSession::on_upstream_data(UpstreamConnection& from, char* data, size_t length) {
  // Only the connection lent to this request calls, and only while the request routed there
  // is in flight (a tunnel's request stays until the connection closes).
  assert(rq_.upstream.connection.holds(from) && rq_.cluster);
  (void)from;
  if (tunnel_) {
    rq_.bytes_out += length;
    append({data, length});
    if (flush() != 0) {
      close();
      return;
    }
    if (pending_bytes() > kHighWater && rq_.upstream.connection) {
      rq_.paused_for_downstream = true;
      rq_.upstream.connection->stop_read();
    }
    return;
  }
  rq_.upstream.response_bytes_seen = true;
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
  if (rq_.after_response.kind != NextStep::pass && !closing()) {
    NextStep next = rq_.after_response;
    rq_.after_response = {NextStep::pass};
    abort_upstream();
    follow(next);
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
             cluster_state().pools[static_cast<size_t>(rq_.upstream.endpoint)]->address().text + ": " + result.reason);
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
  if (rq_.upstream.connection && pending_bytes() > kHighWater) {
    rq_.paused_for_downstream = true;
    rq_.upstream.connection->stop_read();
  }
  maybe_finish_request();
}

void HttpSession::on_upstream_end(UpstreamConnection& from, int status) {
  assert(rq_.upstream.connection.holds(from) && rq_.cluster);
  (void)from;
  // The connection is closing itself; it is no longer ours.
  bool tls_refused = status == kUpstreamTlsFailed && !rq_.upstream.response_bytes_seen;
  rq_.upstream.connection_lost();
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
  follow(rq_.upstream.after_reset(attempt_scope(), tls_refused, request_.method_is_idempotent()));
  after_downstream_io();
}

// ---------------------------------------------------------------------------------------------
// Response parsing

Step HttpSession::on_response_head(ResponseHead&) {
  // A reason phrase is HTAB, SP, visible ASCII and obs-text (RFC 9112 4): one with NUL or other
  // control characters makes the response invalid, although it is never passed on.
  if (response_.version_major() != 1 || !fields_valid(resp_.fields) || !framing_headers_valid(resp_.fields) ||
      resp_.reason.size() > kMaxReasonBytes || !is_valid_field_value(resp_.reason))
    return Step::fail;
  int status = response_.status_code();
  if (status < 100 || status > 999) return Step::fail;
  if (status >= 200 || status == 101) cluster_state().stats->upstream_codes.add(status);
  if (status == 101) {
    // An upgrade nobody asked for, or one without Upgrade and Connection: upgrade, which the
    // decoder would not stop at: the tunnel's bytes would be read as responses.
    if (!rq_.websocket || !response_.upgrade()) return Step::fail;
    endpoint_verdict(true);
    rq_.upstream.retry_slot.release();
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
    // It ends at its blank line, whatever its fields say (RFC 9112 6.3). llhttp would read a
    // body after a 1xx with Content-Length or chunked, and that body would reach the client
    // unframed: a response the upstream forged inside it, taken for this request's answer.
    return Step::skip_body;
  }
  // The final answer: the endpoint's verdict, and perhaps a retry instead of passing it on.
  rq_.after_response = rq_.upstream.after_response(attempt_scope(), status);
  if (rq_.after_response.kind != NextStep::pass)
    return Step::fail;  // on_upstream_data drops this answer and its connection, and follows
  // `Keep-Alive: timeout=N`: the upstream closes idle connections after N s; this one is not
  // kept idle that long, so that no request is written to it as it closes.
  size_t ka = resp_.fields.find("keep-alive");
  if (ka != HeaderList::npos && rq_.upstream.connection) {
    std::string_view v = resp_.fields.value(ka);
    size_t t = v.find("timeout=");
    if (t != std::string_view::npos) {
      uint64_t seconds = 0;
      size_t i = t + 8;
      while (i < v.size() && v[i] >= '0' && v[i] <= '9' && seconds < 1'000'000) seconds = seconds * 10 + (v[i++] - '0');
      rq_.upstream.connection->set_idle_limit(seconds == 0 ? 1 : seconds * 800);
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
  std::string tokens = connection_tokens(resp_.fields);
  for (size_t i = 0; i < resp_.fields.size(); ++i) {
    std::string_view name = resp_.fields.name(i);
    if (is_hop_by_hop(name, tokens)) continue;
    if (status < 200 || status == 204 || (status == 304 && iequals(name, "content-length"))) {
      if (iequals(name, "content-length")) continue;
    }
    o += name;
    o += ": ";
    o += trim_ows(resp_.fields.value(i));
    o += "\r\n";
  }
  if (status == 101) {
    o += "connection: upgrade\r\nupgrade: ";
    size_t u = resp_.fields.find("upgrade");
    o += u != HeaderList::npos ? trim_ows(resp_.fields.value(u)) : std::string_view("websocket");
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

Step HttpSession::on_response_message_complete(ResponseHead& head) {
  if (tunnel_) return Step::go;  // 101: the decoder stops for the upgrade itself
  if (!rq_.response_started) return Step::pause;  // the end of an interim response
  if (!fields_valid(head.trailers)) return Step::fail;  // cut short: the client sees no last chunk
  if (rq_.framing == Framing::chunked) append_response_last_chunk(out(), head.trailers, connection_tokens(head.fields));
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
  if (rq_.upstream.connection) rq_.upstream.connection->flush();
  if (flush() != 0) {
    close();
    return;
  }
  arm_timer(Timer::idle, kTunnelIdleMs);
  start_read();
}

// ---------------------------------------------------------------------------------------------
// Timers

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
      if (rq_.upstream.deadline_ms && now >= rq_.upstream.deadline_ms) {
        if (!rq_.upstream.stall_checked && now - rq_.upstream.deadline_ms > kLoopStallMs) {
          // This timer is late: the worker itself was held up (and an answer may be waiting
          // unread in the socket). The I/O gets one turn of the loop before the verdict.
          rq_.upstream.stall_checked = true;
          arm_timer(Timer::upstream, 1);
          return;
        }
        // The endpoint had the request when it is connected and nothing is left in
        // pilotfish's own queue for it.
        const UpstreamLease& c = rq_.upstream.connection;
        follow(rq_.upstream.after_deadline(attempt_scope(), c && c->connected() && c->pending_bytes() == 0));
        after_downstream_io();
        return;
      }
      if (rq_.upstream.backoff_until_ms && now >= rq_.upstream.backoff_until_ms) {
        rq_.upstream.backoff_until_ms = 0;
        start_attempt();
        after_downstream_io();
        return;
      }
      if (rq_.upstream.try_deadline_ms && now >= rq_.upstream.try_deadline_ms && rq_.upstream.connection) {
        abort_upstream();
        follow(rq_.upstream.after_try_timeout(attempt_scope()));
        after_downstream_io();
        return;
      }
      arm_upstream_timer();
      return;
    }
  }
}

}  // namespace pilotfish
