#pragma once
// One request and its response, whatever protocol the client speaks: routing, admission (rate
// limit, auth), the breaker's slots, attempts at endpoints over pooled HTTP/1.1 connections,
// retries with backoff, the cluster and per-try deadlines, the response decoded and handed to
// the owner, pilotfish's own answers, the request's metrics and its access-log line. The owner
// is the protocol's side of it: an HTTP/1.1 connection (HttpSession, one exchange at a time)
// or an HTTP/2 stream (Http2Session, one exchange per stream). The owner checks what its
// protocol requires of a request, hands the exchange a checked head, the body and its end, and
// writes what the exchange gives back in its own framing. The exchange arms no timer itself:
// it asks the owner for one (one timer per HTTP/1.1 connection, as before).

#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>

#include "http/http1_codec.h"
#include "http/trace_context.h"
#include "http/message_head.h"
#include "pilotfish/header_list.h"
#include "pilotfish/path_normalizer.h"
#include "pilotfish/policy.h"
#include "proxy/http2_upstream.h"
#include "proxy/mirror.h"
#include "proxy/worker_context.h"
#include "upstream/upstream_pool.h"
#include "upstream/upstream_request.h"

namespace pilotfish {

class TlsState;

// What the exchange asks of its protocol's side.
class ExchangeOwner {
 public:
  virtual ~ExchangeOwner() = default;
  // A response head to pass on: an interim one (1xx, not 101), the final one, or a 101 (a
  // WebSocket tunnel follows). `no_body`: a HEAD's answer, a 204 or a 304; `has_length`: the
  // upstream framed its body with content-length.
  virtual void exchange_head(const ResponseHead& head, bool no_body, bool has_length) = 0;
  // A piece of the response body (in a tunnel: the upstream's bytes).
  virtual void exchange_body(std::string_view piece) = 0;
  // The response is complete; head.trailers holds its trailer fields (valid, often none).
  virtual void exchange_end(const ResponseHead& head) = 0;
  // pilotfish answers itself, with `extra_headers` (whole header lines, pilotfish's own text).
  // `request_unread`: the rest of the request's body will not be read (HTTP/1.1 closes).
  virtual void exchange_local_reply(int status, const char* error, std::string_view extra_headers,
                                    bool request_unread) = 0;
  // The upstream failed after part of its response went to the client: the client's message
  // must end abnormally (a close, a stream reset).
  virtual void exchange_broken() = 0;
  // The exchange's timer: call Exchange::on_timer in `ms` (replaces the previous request).
  virtual void exchange_timer(uint64_t ms) = 0;
  // The request body's flow: stop reading it (the upstream is behind), or go on.
  virtual void exchange_request_flow(bool go) = 0;
  // Bytes of the response queued for the client and not written yet: backpressure.
  virtual size_t exchange_downstream_pending() const = 0;
  // The exchange stopped reading its upstream until the client takes what is queued: call
  // downstream_drained when it has (an owner that calls it on every write may ignore this).
  virtual void exchange_downstream_blocked() {}
  // The 101 went out: the rest are bytes both ways; `rest`: the upstream's bytes after its head.
  virtual void exchange_upgraded(std::string_view rest) = 0;
  // After an upstream event: write what is queued; the exchange may be over.
  virtual void exchange_progress() = 0;
};

// The request's head once its protocol has checked it.
struct ExchangeRequest {
  std::string_view method;
  bool method_head = false;
  bool idempotent = false;
  bool websocket = false;       // an HTTP/1.1 WebSocket upgrade
  bool has_body = false;
  bool body_chunked = false;    // the body goes upstream chunked (no content-length)
  const HeaderList& fields;     // the client's fields (host included)
  std::string_view client_address;
  const TlsState* tls = nullptr;  // the client's TLS, established, or null
  std::string_view fixed_cluster;  // intercepted: the destination's cluster, by name
};

class Exchange final : public Spare, public UpstreamHandler, private Http1ResponseHandler, private Http2StreamOwner {
 public:
  Exchange(WorkerContext& worker, ExchangeOwner& owner);
  ~Exchange() override;
  // A worker's sessions reuse the memory of exchanges that ended (capacity_pool.h).
  static void* operator new(size_t size) { return BlockPool<Exchange>::take(size); }
  static void operator delete(void* p, size_t size) { BlockPool<Exchange>::give(p, size); }
  Exchange(const Exchange&) = delete;
  Exchange& operator=(const Exchange&) = delete;

  // A request's first byte arrived on `listener_index` of `snap`.
  void open(const SnapshotPtr& snap, size_t listener_index);
  // The target as sent: normalised for routing (OPTIONS *, dot segments, percent-encoding);
  // false when answered 400.
  bool set_target(std::string_view target, bool options);
  // The target as sent, for the access log of a request refused before it is normalised.
  void set_raw_target(std::string_view target) { raw_target_.assign(target); }
  // `host` (or `:authority`): false when answered 400.
  bool set_authority(std::string_view host);
  // A gRPC request (content-type application/grpc...): its answers are counted by grpc-status.
  void note_grpc(const HeaderList& fields);
  // The x-request-id the client sent, else a new one; and the request's W3C trace context (its
  // traceparent continued, else a new trace) with this hop's parent id.
  void set_request_id(const HeaderList& fields);
  // Admits, routes and starts the first attempt. False when pilotfish answered (or the
  // connection closed): nothing goes upstream.
  bool begin(const ExchangeRequest& request);
  // The request's body and end. request_body is false when answered meanwhile (413: over
  // max_body_bytes); request_end when the trailers are invalid (answered 400).
  bool request_body(std::string_view piece);
  bool request_end(const HeaderList& fields, const HeaderList& trailers);
  // pilotfish answers (or, with part of a response gone, breaks the client's message).
  void answer(int status, const char* error, bool request_unread);
  // The owner's timer for this exchange fired.
  void on_timer();
  // The client took queued response bytes: the upstream may be read again.
  void downstream_drained();
  // Tunnel: the client's bytes go to the upstream.
  void tunnel_send(const char* data, size_t length);
  // The request's metrics and access-log line (once).
  void log();
  // The request is over: everything held goes back, the buffers are kept for the next one.
  void reset();
  // Kept for another owner's request later: as reset, and the policy and big buffers let go.
  void recycle();
  // Between requests (reset() done, the connection idle) the buffers that grew for requests go
  // back to the worker's pools (capacity_pool.h), so that an idle keep-alive connection holds
  // none; take_buffers() at the next request's first byte borrows them again.
  void release_buffers();
  void take_buffers();
  // An HTTP/1.1 connection gone idle hands its exchange (reset()) to the worker to keep for the
  // next connection's request (WorkerContext::spare_exchanges): its buffers go back to the pools.
  // rebind() gives it to its next owner.
  void detach();
  void rebind(ExchangeOwner& owner) { owner_ = &owner; }
  // reset() since open(): nothing of a request is left in it.
  bool is_reset() const { return st_.started_ns == 0 && st_.bytes_in == 0 && st_.bytes_out == 0; }
  // A spare's snapshot is let go at the worker's next sweep, so a reload's old policy is not held.
  void forget_snapshot() { snap_.reset(); }
  // The client went away: counted as downstream_closed unless answered.
  void client_gone();
  // The connection of a tunnel or attempt in flight is dropped (the client's side closed).
  void drop_upstream();

  bool local_response() const { return st_.local_response; }
  // A fault's delay holds the request: no attempt has started yet.
  bool delayed() const { return st_.upstream.backoff_until_ms != 0 && st_.upstream.attempts == 0; }
  bool response_started() const { return st_.response_started; }
  bool response_complete() const { return st_.response_complete; }
  // The attempt is a stream on an HTTP/2 connection: its response comes in pieces (head, data,
  // end) from one read of that connection.
  bool on_h2_stream() const { return st_.mux != nullptr; }
  bool request_complete() const { return st_.request_complete; }
  size_t upstream_pending() const;
  void flush_upstream();
  void count_in(uint64_t n) { st_.bytes_in += n; }
  void count_out(uint64_t n) { st_.bytes_out += n; }
  const NormalizedTarget& target() const { return st_.target; }
  // The client took response bytes at loop ms `ms`: a streaming response is not stalled.
  void set_last_progress(uint64_t ms) { st_.last_progress_ms = std::max(st_.last_progress_ms, ms); }
  // Waiting for the client to take what is queued (see ExchangeOwner::exchange_downstream_blocked).
  bool waiting_for_downstream() const { return st_.paused_for_downstream; }
  const Listener& listener() const { return snap_->policy->listeners[listener_index_]; }

  // UpstreamHandler
  void on_upstream_connected(UpstreamConnection& from) override;
  void on_upstream_connect_failed(UpstreamConnection& from, int status) override;
  void on_upstream_data(UpstreamConnection& from, char* data, size_t length) override;
  void on_upstream_end(UpstreamConnection& from, int status) override;
  void on_upstream_drained(UpstreamConnection& from) override;

 private:
  // The upstream's response, from its decoder.
  Step on_response_head(ResponseHead& head) override;
  Step on_response_body(std::string_view piece) override;
  Step on_response_message_complete(ResponseHead& head) override;

  // An attempt over HTTP/2 (clusters[].protocol http2, or auto): a stream on a shared
  // connection (proxy/http2_upstream.h).
  void h2_ready() override;
  void h2_connect_failed(int status) override;
  void h2_not_spoken() override;
  void h2_head(ResponseHead& head, bool end_stream) override;
  void h2_data(std::string_view piece) override;
  void h2_end(HeaderList& trailers) override;
  void h2_reset(uint32_t error_code, bool unprocessed) override;
  void h2_drained() override;
  void h2_gone() override;
  bool use_h2(const EndpointPool& pool) const;
  void start_h2_attempt();
  void h2_open();
  void h2_let_go();  // the stream is over (or never opened): the connection is not ours
  // The body as an HTTP/1.1 attempt sends it: chunk-framed when it has no length, with the
  // last chunk once the request is all in.
  void append_h1_body(std::string& out, std::string_view raw);
  bool attempt_active() const { return st_.upstream.connection || st_.mux != nullptr; }

  bool admit(const Route* route, size_t route_index, const ExchangeRequest& request);
  // The listener's and the route's authorization rules: false when answered 403.
  bool authorize(const Route* route, const ExchangeRequest& request);
  // The route's fault policy for this request: the delay drawn (ms, 0: none), or an abort
  // answered now (local_response).
  uint64_t inject_fault(const FaultPolicy& fault, const ExchangeRequest& request);
  // A copy of this request for the route's mirror, when drawn (sent by request_end).
  void copy_for_mirror(const MirrorPolicy& mirror, const ExchangeRequest& request, const UpstreamHeadInput& in);
  // The position in a route's weighted split of the cluster this request goes to.
  size_t split_position(const Route& route, const ExchangeRequest& request);
  // The route's response_headers on a final response head.
  void apply_response_rules(ResponseHead& head);
  // The route's own answer (respond, redirect), given through the owner as a response.
  void answer_from_route(const Route& route);
  void start_attempt(bool fresh_connection = false);
  void send_body(const char* data, size_t length);
  void send_upstream(const char* data, size_t length);
  void overflow(BreakerLimit limit);
  void wait_for_downstream();
  void endpoint_verdict(bool ok);
  AttemptScope attempt_scope();
  void follow(const NextStep& next);
  void schedule_retry();
  void arm_upstream_timer();
  void release_upstream(bool reusable);
  void enter_tunnel(const char* rest, size_t rest_length);
  void break_off();
  ClusterState& cluster_state() { return *snap_->clusters[st_.cluster_index]; }

  WorkerContext& worker_;
  ExchangeOwner* owner_;
  SnapshotPtr snap_;
  size_t listener_index_ = 0;

  // The request in flight. A fresh value replaces it at reset(), so nothing of one request (a
  // flag, a deadline, a breaker slot, a probe claim) outlives it: the holds give back what
  // they took as they go.
  struct State {
    bool request_complete = false;
    bool has_body = false;
    bool body_chunked = false;
    bool method_head = false;
    bool idempotent = false;
    bool websocket = false;
    bool local_response = false;
    bool tunnel = false;
    bool broken = false;  // the owner was told to end the client's message abnormally
    uint64_t body_bytes = 0;
    NormalizedTarget target;
    uint64_t started_ns = 0;
    uint64_t bytes_in = 0;
    uint64_t bytes_out = 0;
    const AuthPolicy* auth = nullptr;  // this request's auth, if any (in snap_'s policy)
    std::string auth_subject;
    bool auth_subject_ok = false;
    // The claims of the token auth verified, for authorization rules.
    bool token_verified = false;
    std::vector<std::string> token_scopes;
    std::vector<std::string> token_audiences;
    size_t route_index = SIZE_MAX;  // the listener's route that matched; SIZE_MAX: none (yet)
    // The route answers itself (respond, redirect): once the request is in, nothing upstream.
    bool route_answers = false;
    int fault_abort = 0;        // a delayed request the route's fault also aborts: its status
    std::string peer_identity;  // the client's, for the route's response_headers and a tap (only then)
    std::unique_ptr<MirrorCopy> mirror;  // the route's copy of this request, sent once it is all in
    const Cluster* cluster = nullptr;
    size_t cluster_index = 0;
    // Its way to the cluster: endpoint, connection, holds, attempts, deadlines, retries.
    UpstreamRequest upstream;
    size_t unsent_head_length = 0;  // of the attempt head at the front of to_upstream_
    NextStep after_response{NextStep::pass};  // a final response dropped for a retry or 503
    bool paused_for_upstream = false;
    bool paused_for_downstream = false;
    bool response_started = false;
    bool response_complete = false;
    int status = 0;
    const char* error = "";
    int interim_responses = 0;
    uint64_t last_progress_ms = 0;
    bool grpc = false;
    uint64_t grpc_deadline_ms = 0;  // loop ms: the client's grpc-timeout from the request's start
    bool te_trailers = false;      // the client said te: trailers (gRPC): an HTTP/2 upstream is told too
    // HTTP/2 attempts: the shared connection and stream (-1: not opened yet), response bytes
    // not yet given back to its window, streams the peer refused unprocessed.
    bool h2 = false;
    Http2Upstream* mux = nullptr;
    int32_t stream = -1;
    size_t unconsumed = 0;
    int refused = 0;
    bool body_kept = true;  // replay_ holds the whole body so far
  };
  State st_;
  // The request's text, in buffers reused from request to request.
  std::string method_;
  std::string raw_target_;
  std::string authority_;
  std::string request_id_;
  TraceContext trace_;
  char traceparent_[kTraceparentSize];  // as it goes upstream (when trace_.set)
  std::string tracestate_;     // the client's, when its traceparent was valid
  std::string local_headers_;  // extra header lines for the next local answer
  std::string upstream_head_;  // the request's head for the upstream, without the attempt header
  std::string replay_;         // the body as sent, kept for a retry (up to kMaxReplayBytes)
  std::string to_upstream_;    // bytes waiting for a connection (HTTP/2: body bytes for the stream)
  std::string last_chunk_;     // HTTP/1.1: the chunked body's end, with its trailers, for a replay
  HeaderList h2_trailers_;     // HTTP/2: the request's trailers that go on
  RequestHead h2_head_;        // HTTP/2: the head of the attempt's stream, as it goes
  size_t h2_base_fields_ = 0;  // its fields before the attempt's own (h2_attempt_fields)
  ResponseHead resp_;
  HeaderList rules_scratch_;   // where response_headers rebuild a head's fields
  Http1Decoder response_{static_cast<Http1ResponseHandler*>(this), &resp_};
};

}  // namespace pilotfish
