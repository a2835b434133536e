#pragma once
// The downstream side of one HTTP/1.1 client connection: parse (http1_codec, strict), check what
// HTTP/1.1 requires of a request, hand it to an Exchange (proxy/exchange.h: routing, admission,
// attempts, the response), and write the response back, one request at a time in request order
// (pipelined requests wait in the input buffer). A WebSocket upgrade turns the connection into a
// byte tunnel after the 101.

#include <cstdint>
#include <memory>
#include <string>

#include "http/http1_codec.h"
#include "net/stream.h"
#include "pilotfish/capacity_pool.h"
#include "pilotfish/policy.h"
#include "proxy/exchange.h"
#include "proxy/http2_downstream.h"
#include "proxy/worker_context.h"

namespace pilotfish {

class HttpSession final : public Stream, private ExchangeOwner, private Http1RequestHandler, private Deferred {
 public:
  HttpSession(WorkerContext& worker, std::shared_ptr<ListenerSlot> slot);
  ~HttpSession() override;
  void release_idle_memory() override;
  // Between requests, at the end of a loop turn: buffers and the exchange go back to the worker.
  void run_deferred() override;
  // A worker's connections reuse the memory of those that ended (capacity_pool.h).
  static void* operator new(size_t size) { return BlockPool<HttpSession>::take(size); }
  static void operator delete(void* p, size_t size) { BlockPool<HttpSession>::give(p, size); }
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

  void on_data(char* data, size_t length) override;
  void on_read_end(int status) override;
  void on_write_done(int status) override;
  void on_timeout() override;
  void on_close() override;
  void on_tls_established() override;
  void on_tls_failed() override;
  void note_peer();

 private:
  // The exchange's side (proxy/exchange.h): its response written as HTTP/1.1.
  void exchange_head(const ResponseHead& head, bool no_body, bool has_length) override;
  void exchange_body(std::string_view piece) override;
  void exchange_end(const ResponseHead& head) override;
  void exchange_local_reply(int status, const char* error, std::string_view extra_headers,
                            bool request_unread) override;
  void exchange_broken() override;
  void exchange_timer(uint64_t ms) override { arm_timer(Timer::upstream, ms); }
  void exchange_request_flow(bool go) override;
  size_t exchange_downstream_pending() const override { return pending_bytes(); }
  void exchange_upgraded(std::string_view rest) override;
  void exchange_progress() override;

  enum class Timer { none, idle, handshake, header, body, upstream };
  static constexpr uint64_t kTunnelIdleMs = 3600 * 1000;
  // An idle keep-alive connection is closed this long after a drain begins, not at once: a
  // client may have sent its next request already, and closing under it would fail that
  // request. Arriving within the grace, the request is answered, with `connection: close`.
  static constexpr uint64_t kDrainIdleGraceMs = 1000;
  enum class Framing { none, length, chunked, close };

  // The connection's first bytes: the HTTP/2 preface (or a part of it) hands the connection
  // to an Http2Downstream; anything else is HTTP/1.1. False while the bytes so far could still
  // be the preface (they are kept).
  bool detect_http2(char*& data, size_t& length);
  void parse_input(const char* data, size_t length);
  void after_downstream_io();
  bool validate_request_head();
  void send_local_response(int status, const char* reason, bool close);
  void write_response_head(const ResponseHead& head);
  void maybe_finish_request();
  // Closes once what is queued for the client has gone out, or after idle_timeout.
  void close_when_flushed(bool linger = true);
  void finish_request();
  void continue_pipeline();
  void reset_request();
  void arm_timer(Timer which, uint64_t ms);
  // Takes the worker's current snapshot, between requests.
  void refresh_snapshot();
  bool draining() const { return draining_ || worker_.draining(); }

  WorkerContext& worker_;
  std::shared_ptr<ListenerSlot> slot_;
  std::string fixed_cluster_;
  SnapshotPtr snap_;              // the policy this connection's current request runs under
  const Listener* listener_;      // in snap_
  size_t listener_index_;         // in snap_
  std::shared_ptr<ListenerStats> conn_stats_;  // the listener that accepted the connection
  bool draining_ = false;         // its listener left the policy: close after this response
  RequestHead req_;    // the request in flight's head, filled by request_
  Http1Decoder request_{static_cast<Http1RequestHandler*>(this), &req_};
  std::string client_address_;

  // The request in flight, from its first byte to the end of its response: what HTTP/1.1
  // decides about it here, beside the exchange (everything else). Both are made anew when the
  // response is done (reset_request).
  struct H1Request {
    bool in_request = false;
    bool client_keep_alive = true;
    bool client_close = false;  // the client asked for the close (Connection: close, HTTP/1.0)
    bool keep_alive = true;
    Framing framing = Framing::none;
    bool zero_length = false;  // a body-less answer that must say content-length: 0
  };
  H1Request h1_;
  // The request in flight's exchange: taken at a request's first byte from the worker's spares
  // (or made), and given back when the connection goes idle, so that an idle keep-alive
  // connection does not hold its 1.8 KiB.
  std::unique_ptr<Exchange> ex_;
  Exchange& ex() {
    if (!ex_) adopt_exchange();
    return *ex_;
  }
  void adopt_exchange();
  void take_request_buffers();
  void give_request_buffers();
  // Between requests: the exchange goes back to the worker (its spares), if it keeps fewer
  // than kSpareExchanges.
  void give_back_exchange();
  // No request in flight, none waiting in the input, not a tunnel or HTTP/2.
  bool idle() const;

  // The connection.
  bool close_after_response_ = false;
  std::string leftover_;        // pipelined bytes after the current request
  size_t leftover_off_ = 0;     // where the unparsed part of leftover_ begins
  bool parser_paused_ = false;  // a request is complete and its response not yet done
  bool in_pipeline_ = false;
  bool pipeline_again_ = false;
  bool waiting_for_client_ = false;  // answers queued past the high-water mark
  bool client_eof_ = false;          // the client shut down its side
  bool progress_deferred_ = false;   // an HTTP/2 upstream's piece of the answer waits for the turn's end
  bool tunnel_ = false;
  Timer timer_kind_ = Timer::none;
  bool detect_http2_ = false;   // no byte read yet, and the listener takes HTTP/2
  std::string preface_;         // the first bytes, while they match the HTTP/2 preface
  std::unique_ptr<Http2Downstream> h2_;  // the connection speaks HTTP/2: everything goes there
};

}  // namespace pilotfish
