// An exchange's attempts over HTTP/2 (clusters[].protocol http2, or auto when the endpoint
// picked h2): a stream on a shared connection (proxy/http2_upstream.h) instead of a pooled
// HTTP/1.1 connection of its own. The decisions (retries, outlier verdicts, deadlines) are the
// same UpstreamRequest's; a stream the peer refused unprocessed is sent again without counting.
#include <uv.h>

#include "http/upstream_head.h"
#include "log/logger.h"
#include "pilotfish/header_rules.h"
#include "proxy/exchange.h"

namespace pilotfish {

namespace {

// A peer that refuses a request this many times running (REFUSED_STREAM, GOAWAY) is not sent
// it again: the refusal goes through the ordinary reset decision.
constexpr int kMaxRefusedResends = 3;

}  // namespace

bool Exchange::use_h2(const EndpointPool& pool) const {
  if (st_.websocket) return false;  // a WebSocket upgrade is HTTP/1.1's (no RFC 8441 here)
  return pool.prefers_h2();
}

void Exchange::start_h2_attempt() {
  ClusterState& cs = cluster_state();
  UpstreamRequest& up = st_.upstream;
  const std::shared_ptr<EndpointPool>& pool = cs.pools[static_cast<size_t>(up.endpoint)];
  BreakerLimit limit = BreakerLimit::connections;
  Http2Upstream* mux = Http2Upstream::for_stream(pool, worker_, &limit);
  if (mux == nullptr) {
    up.probe.release();
    overflow(limit);
    return;
  }
  st_.mux = mux;
  st_.stream = -1;
  st_.unconsumed = 0;
  up.balanced.start(cs.balancer.get(), static_cast<size_t>(up.endpoint));
  up.sent = false;
  up.response_bytes_seen = false;
  st_.interim_responses = 0;
  if (st_.request_complete) {
    uint64_t now = uv_now(worker_.loop());
    up.start_try_deadline(*st_.cluster, now);
    arm_upstream_timer();
  }
  if (mux->ready())
    h2_open();
  else
    mux->wait(this);
}

void Exchange::h2_open() {
  UpstreamRequest& up = st_.upstream;
  RequestHead& head = h2_head_;  // reused, as the exchange is
  // gRPC: the upstream is given the time that is left of the client's deadline.
  std::string left;
  if (st_.grpc_deadline_ms) {
    uint64_t now = uv_now(worker_.loop());
    left = std::to_string(st_.grpc_deadline_ms > now ? st_.grpc_deadline_ms - now : 1) + "m";
  }
  h2_attempt_fields(head, h2_base_fields_, up.attempts, st_.te_trailers, left);
  size_t host = head.fields.find("host");
  std::string_view authority = host == HeaderList::npos ? std::string_view() : head.fields.value(host);
  bool tls = cluster_state().pools[static_cast<size_t>(up.endpoint)]->tls_options() != nullptr;
  bool end_now = !st_.has_body || (st_.request_complete && to_upstream_.empty() && h2_trailers_.size() == 0);
  int32_t id = st_.mux->open(this, head, tls ? "https" : "http", authority, end_now);
  if (id < 0) {
    // The connection is going away under us: another one takes the request, as a resend.
    st_.mux->abandon(this, -1);
    h2_let_go();
    --up.attempts;
    start_attempt();
    return;
  }
  st_.stream = id;
  up.sent = true;
  if (!end_now) {
    if (!to_upstream_.empty()) {
      st_.mux->send_data(id, to_upstream_);
      to_upstream_.clear();
    }
    if (st_.request_complete) st_.mux->send_end(id, h2_trailers_.size() ? &h2_trailers_ : nullptr);
    // The client's body waited for the stream: it goes on once the queue drains.
    if (st_.paused_for_upstream) st_.mux->wait_drained(id);
  }
  st_.mux->flush();
}

void Exchange::h2_let_go() {
  st_.mux = nullptr;
  st_.stream = -1;
  st_.unconsumed = 0;
  st_.upstream.balanced.end();
}

void Exchange::h2_ready() { h2_open(); }

void Exchange::h2_connect_failed(int status) {
  h2_let_go();
  follow(st_.upstream.after_connect_failure(attempt_scope(), status));
  owner_->exchange_progress();
}

void Exchange::h2_not_spoken() {
  // auto: the endpoint picked http/1.1 in ALPN; the pool remembers, and this request goes on
  // over HTTP/1.1 at once (not a retry: nothing was sent).
  h2_let_go();
  --st_.upstream.attempts;
  start_attempt();
  owner_->exchange_progress();
}

void Exchange::h2_head(ResponseHead& head, bool end_stream) {
  UpstreamRequest& up = st_.upstream;
  up.response_bytes_seen = true;
  st_.last_progress_ms = uv_now(worker_.loop());
  int status = head.status;
  // Its fields are valid, and its framing is HTTP/2's: the codec refuses anything else (a
  // stream error), so neither fields_valid nor framing_headers_valid has work here.
  if (status == 101) {
    log_warn("cluster " + st_.cluster->name + ": invalid HTTP/2 response from " +
             cluster_state().pools[static_cast<size_t>(up.endpoint)]->address().text);
    if (!st_.response_started) {
      cluster_state().stats->upstream_reset.add();
      endpoint_verdict(false);
    }
    release_upstream(false);
    if (!st_.response_started)
      answer(502, "invalid_response", true);
    else
      st_.error = "invalid_response", break_off();
    owner_->exchange_progress();
    return;
  }
  if (status >= 200) cluster_state().stats->upstream_codes.add(status);
  if (status < 200) {
    if (++st_.interim_responses > kMaxInterimResponses) {
      release_upstream(false);
      answer(502, "invalid_response", true);
      owner_->exchange_progress();
      return;
    }
    owner_->exchange_head(head, true, false);
    owner_->exchange_progress();
    return;
  }
  // A trailers-only gRPC answer (the call failed before any message): its grpc-status may be
  // retried (retry.on: unavailable, ...).
  int grpc_status = -1;
  if (st_.grpc && end_stream) {
    size_t g = head.fields.find("grpc-status");
    if (g != HeaderList::npos) {
      std::string_view v = trim_ows(head.fields.value(g));
      if (!v.empty() && v.size() <= 2 && v.find_first_not_of("0123456789") == std::string_view::npos)
        grpc_status = std::stoi(std::string(v));
    }
  }
  NextStep next = up.after_response(attempt_scope(), status, grpc_status);
  if (next.kind != NextStep::pass) {
    release_upstream(false);  // this answer is dropped: a retry, or pilotfish's own
    follow(next);
    owner_->exchange_progress();
    return;
  }
  st_.status = status;
  // end_stream: a head alone (gRPC's trailers-only answer) goes on as a head alone.
  bool no_body = st_.method_head || status == 204 || status == 304 || end_stream;
  st_.response_started = true;
  std::swap(resp_, head);  // kept for the end (its fields name the connection tokens)
  apply_response_rules(resp_);
  bool has_length = resp_.fields.find("content-length") != HeaderList::npos;
  owner_->exchange_head(resp_, no_body, has_length);
  owner_->exchange_timer(static_cast<uint64_t>(st_.cluster->timeout.count()));
  owner_->exchange_progress();
}

void Exchange::h2_data(std::string_view piece) {
  if (!st_.response_started || st_.broken) {
    if (st_.mux) st_.mux->consume(st_.stream, piece.size());
    return;
  }
  st_.last_progress_ms = uv_now(worker_.loop());
  st_.bytes_out += piece.size();
  owner_->exchange_body(piece);
  if (owner_->exchange_downstream_pending() > Stream::kHighWater) {
    // The client is behind: the stream's window stays shut until it catches up.
    wait_for_downstream();
    st_.unconsumed += piece.size();
  } else if (st_.mux) {
    st_.mux->consume(st_.stream, piece.size());
  }
  owner_->exchange_progress();
}

void Exchange::h2_end(HeaderList& trailers) {
  h2_let_go();  // the connection forgot this stream: its response is complete
  if (!st_.response_started) {
    // Only interim heads came, then the end: no final response.
    answer(502, "invalid_response", true);
    owner_->exchange_progress();
    return;
  }
  std::swap(resp_.trailers, trailers);  // valid fields: the codec refuses others (a stream error)
  st_.response_complete = true;
  owner_->exchange_end(resp_);
  owner_->exchange_progress();
}

void Exchange::h2_reset(uint32_t error_code, bool unprocessed) {
  h2_let_go();
  if (st_.response_started) {
    st_.error = "upstream_reset";
    break_off();
    owner_->exchange_progress();
    return;
  }
  if (unprocessed && ++st_.refused <= kMaxRefusedResends && (!st_.has_body || st_.body_kept)) {
    // The peer did not act on it (REFUSED_STREAM, above GOAWAY's last stream id): sent again,
    // on another connection, and not held against the endpoint.
    --st_.upstream.attempts;
    start_attempt();
    owner_->exchange_progress();
    return;
  }
  (void)error_code;
  follow(st_.upstream.after_reset(attempt_scope(), false, st_.idempotent));
  owner_->exchange_progress();
}

void Exchange::h2_gone() {
  h2_let_go();
  if (st_.response_started)
    st_.error = "upstream_reset", break_off();
  else
    answer(502, "upstream_reset", true);
  owner_->exchange_progress();
}

void Exchange::h2_drained() {
  if (!st_.paused_for_upstream) return;
  if (upstream_pending() < Stream::kLowWater) {
    st_.paused_for_upstream = false;
    owner_->exchange_request_flow(true);
  } else if (st_.mux && st_.stream >= 0) {
    st_.mux->wait_drained(st_.stream);
  }
}

}  // namespace pilotfish
