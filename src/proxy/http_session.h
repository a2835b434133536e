#pragma once
// The downstream side of one HTTP/1.1 client connection: parse (http1_codec, strict), check what the
// parser lets through, normalise, route, forward to a pooled upstream connection, and stream
// the response back, one request at a time in request order (pipelined requests wait in the
// input buffer). A WebSocket upgrade turns the connection into a byte tunnel after the 101.

#include <cstdint>
#include <string>

#include "http/http1_codec.h"
#include "net/stream.h"
#include "pilotfish/header_list.h"
#include "pilotfish/path_normalizer.h"
#include "pilotfish/policy.h"
#include "proxy/worker_context.h"
#include "upstream/circuit_breaker.h"
#include "upstream/upstream_pool.h"
#include "upstream/upstream_request.h"

namespace pilotfish {

class HttpSession final : public Stream,
                          public UpstreamHandler,
                          private Http1RequestHandler,
                          private Http1ResponseHandler {
 public:
  HttpSession(WorkerContext& worker, std::shared_ptr<ListenerSlot> slot);
  // Called once the socket is accepted.
  void start();
  // Called instead of start() for a connection an InterceptSession hands over (see
  // proxy/intercept.h), with the bytes it read.
  void start_adopted(const std::string& first_bytes);
  // Intercepted by original destination: every request goes to this cluster, not by routes.
  void set_fixed_cluster(std::string name) { fixed_cluster_ = std::move(name); }
  // Worker is draining: close if idle, else close after the response in flight.
  void drain() override;
  void on_policy_changed() override;


 protected:
  // The client's requests, from its decoder.
  Step on_message_begin() override;
  Step on_request_head(RequestHead& head) override;
  Step on_body(std::string_view piece) override;
  Step on_message_complete(RequestHead& head) override;
  // The upstream's response, from its decoder.
  Step on_response_head(ResponseHead& head) override;
  Step on_response_body(std::string_view piece) override;
  Step on_response_message_complete(ResponseHead& head) override;

  void on_data(char* data, size_t length) override;
  void on_read_end(int status) override;
  void on_write_done(int status) override;
  void on_timeout() override;
  void on_close() override;
  void on_tls_established() override;
  void on_tls_failed() override;
  bool admit(const Route* route, size_t route_index);
  void note_peer();

  void on_upstream_connected(UpstreamConnection& from) override;
  void on_upstream_connect_failed(UpstreamConnection& from, int status) override;
  void on_upstream_data(UpstreamConnection& from, char* data, size_t length) override;
  void on_upstream_end(UpstreamConnection& from, int status) override;
  void on_upstream_drained(UpstreamConnection& from) override;

 private:
  enum class Timer { none, idle, handshake, header, body, upstream };
  static constexpr uint64_t kTunnelIdleMs = 3600 * 1000;
  // An upstream's response head (status line and fields) may take this much.
  static constexpr uint64_t kMaxResponseHeadBytes = 64 * 1024;
  // An idle keep-alive connection is closed this long after a drain begins, not at once: a
  // client may have sent its next request already, and closing under it would fail that
  // request. Arriving within the grace, the request is answered, with `connection: close`.
  static constexpr uint64_t kDrainIdleGraceMs = 1000;
  enum class Framing { none, length, chunked, close };

  void parse_input(const char* data, size_t length);
  void after_downstream_io();
  bool validate_request_head();
  // Resilience: one attempt at an endpoint the outlier detection allows; its verdict; retries.
  void start_attempt(bool fresh_connection = false);
  void send_body(const char* data, size_t length);
  void overflow(BreakerLimit limit);
  void endpoint_verdict(bool ok);
  AttemptScope attempt_scope();
  // Carries out what UpstreamRequest decided after an attempt.
  void follow(const NextStep& next);
  void schedule_retry();
  void arm_upstream_timer();
  void send_upstream(const char* data, size_t length);
  size_t upstream_pending() const;
  void release_upstream(bool reusable);
  void abort_upstream();
  void send_local_response(int status, const char* reason, bool close);
  void write_response_head();
  void enter_tunnel(const char* upstream_rest, size_t upstream_rest_length);
  void maybe_finish_request();
  // Closes once what is queued for the client has gone out, or after idle_timeout.
  void close_when_flushed();
  void finish_request();
  void continue_pipeline();
  void reset_request();
  void arm_timer(Timer which, uint64_t ms);
  void log_request();
  // Takes the worker's current snapshot, between requests.
  void refresh_snapshot();
  bool draining() const { return draining_ || worker_.draining(); }
  ClusterState& cluster_state() { return *snap_->clusters[rq_.cluster_index]; }

  WorkerContext& worker_;
  std::shared_ptr<ListenerSlot> slot_;
  std::string fixed_cluster_;
  std::string local_headers_;         // extra headers for the next local response
  SnapshotPtr snap_;              // the policy this connection's current request runs under
  const Listener* listener_;      // in snap_
  size_t listener_index_;         // in snap_
  std::shared_ptr<ListenerStats> conn_stats_;  // the listener that accepted the connection
  bool draining_ = false;         // its listener left the policy: close after this response
  RequestHead req_;    // the request in flight's head, filled by request_
  ResponseHead resp_;  // its response's, filled by response_
  Http1Decoder request_{static_cast<Http1RequestHandler*>(this), &req_};
  Http1Decoder response_{static_cast<Http1ResponseHandler*>(this), &resp_};
  std::string client_address_;

  // The request in flight, from its first byte to the end of its response. A fresh value
  // replaces it once the response is done (reset_request), so nothing of one request (a flag,
  // a deadline, a breaker slot, a probe claim) outlives it: the holds give back what they took
  // as they go. The text buffers below it are reused from request to request for their
  // capacity, and cleared in the same place.
  struct ActiveRequest {
    bool in_request = false;
    bool request_complete = false;
    bool request_has_body = false;
    bool request_chunked = false;
    bool client_keep_alive = true;
    bool websocket = false;
    bool local_response = false;
    uint64_t body_bytes = 0;
    NormalizedTarget target;
    uint64_t started_ns = 0;
    uint64_t bytes_in = 0;
    uint64_t bytes_out = 0;
    const AuthPolicy* auth = nullptr;  // this request's auth, if any (in snap_'s policy)
    std::string auth_subject;
    bool auth_subject_ok = false;
    const Cluster* cluster = nullptr;
    size_t cluster_index = 0;
    // Its way to the cluster: endpoint, connection, holds, attempts, deadlines, retries.
    UpstreamRequest upstream;
    size_t unsent_head_length = 0;  // of the attempt head at the front of to_upstream_
    NextStep after_response{NextStep::pass};  // a final response dropped for a retry or 503
    bool paused_for_upstream = false;
    bool response_started = false;
    bool response_complete = false;
    bool keep_alive = true;
    Framing framing = Framing::none;
    int status = 0;
    const char* error = "";
    int interim_responses = 0;
    bool paused_for_downstream = false;
  };
  ActiveRequest rq_;
  // The request's text, in buffers reused from request to request.
  std::string authority_;
  std::string request_id_;
  std::string replay_;       // the body as sent, kept for a retry (up to kMaxReplayBytes)
  std::string to_upstream_;  // bytes waiting for a connection

  // The connection.
  std::string upstream_head_;  // the request's head for the upstream, without the attempt header
  bool close_after_response_ = false;
  std::string leftover_;        // pipelined bytes after the current request
  size_t leftover_off_ = 0;     // where the unparsed part of leftover_ begins
  bool parser_paused_ = false;  // a request is complete and its response not yet done
  bool in_pipeline_ = false;
  bool pipeline_again_ = false;
  bool waiting_for_client_ = false;  // answers queued past the high-water mark
  bool client_eof_ = false;          // the client shut down its side
  bool tunnel_ = false;
  uint64_t last_progress_ms_ = 0;
  Timer timer_kind_ = Timer::none;
};

}  // namespace pilotfish
