#pragma once
// The HTTP/2 side of a client connection (RFC 9113): a `protocol: http` connection whose first
// bytes are the HTTP/2 connection preface (prior knowledge, or after ALPN h2 on an mtls
// listener) is handed here by its HttpSession, which keeps the socket, the TLS and the timer.
// Each stream is one request: the codec (http/http2_codec) decodes and checks it, this file
// checks what a request must be to go on (a host, a target pilotfish can normalise, no CONNECT,
// the body limit) and hands it to the stream's own Exchange (proxy/exchange.h), the same way
// as an HTTP/1.1 request: admission, routing, breakers, retries, metrics and access log. The
// response comes back as HEADERS, DATA and trailers; pilotfish's own answers too.
//
// Flow control: a stream's window opens only as the exchange passes its body on to the
// upstream; a response is read from the upstream only while what is queued for the client (on
// the stream, and on the socket) is under the high-water mark, so a client that reads slowly
// slows its upstream, and memory stays bounded.
//
// Work per event is per stream touched, not per stream open: what the streams' responses
// queue is written once after the loop's I/O callbacks of the turn (EventLoop::defer), only the
// streams waiting for the client are woken when it reads, and the connection's one timer is
// armed for the earliest deadline asked for and recomputed only when it fires.

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "http/http2_codec.h"
#include "net/stream.h"
#include "proxy/exchange.h"
#include "proxy/worker_context.h"

namespace pilotfish {

class Http2Downstream final : private Http2Handler, private Deferred {
 public:
  // `connection`: the client's (an HttpSession), which forwards its events here from now on.
  Http2Downstream(WorkerContext& worker, Stream& connection, std::shared_ptr<ListenerSlot> slot, SnapshotPtr snap,
                  std::string_view client_address, std::string_view fixed_cluster);
  ~Http2Downstream() override;
  Http2Downstream(const Http2Downstream&) = delete;
  Http2Downstream& operator=(const Http2Downstream&) = delete;

  // The connection's events.
  void receive(const char* data, size_t length);
  void on_write_done();
  void on_timeout();
  // The client closed its side: nothing more can be answered.
  void on_read_end();
  // Graceful: GOAWAY, streams in flight finish, then the connection closes.
  void drain();
  // The connection is closing: every stream ends here.
  void on_close();

 private:
  struct H2Stream;
  using StreamList = std::vector<std::pair<int32_t, std::unique_ptr<H2Stream>>>;
  // Http2Handler
  void on_request_head(int32_t stream, RequestHead& head, bool end_stream) override;
  void on_request_head_too_large(int32_t stream, const RequestHead& partial) override;
  void on_response_head(int32_t, ResponseHead&, bool) override {}
  void on_data(int32_t stream, std::string_view piece) override;
  void on_end(int32_t stream, HeaderList& trailers) override;
  void on_stream_closed(int32_t stream, uint32_t error_code) override;
  void on_goaway(int32_t, uint32_t) override {}

  H2Stream* open_stream(int32_t id);
  StreamList::iterator at_or_after(int32_t id);  // the first stream whose id is not below `id`
  void recycle(std::unique_ptr<H2Stream> s);
  H2Stream* find(int32_t id);
  bool check_request(H2Stream& s, bool end_stream);
  // Writes what the codec has ready (closes once both sides are done), then deletes the
  // streams the codec closed. Only where no exchange is running: an exchange asks for it with
  // schedule(), which runs it after this turn's I/O (run_deferred).
  void pump();
  void schedule() { worker_.defer(*this); }
  void run_deferred() override { pump(); }
  void sweep();
  // The connection's one timer, due at loop ms `at` (0: none) unless armed earlier already.
  void arm_at(uint64_t at);
  // The client read: the streams that waited for it go on.
  void wake_blocked();
  const Listener& listener() const { return snap_->policy->listeners[listener_index_]; }

  WorkerContext& worker_;
  Stream& conn_;
  std::shared_ptr<ListenerSlot> slot_;
  SnapshotPtr snap_;  // new streams run under it; refreshed at each stream's start
  size_t listener_index_;
  std::string client_address_;
  std::string fixed_cluster_;
  Http2Connection codec_;
  // By id, in order (a client's stream ids only grow): found by a binary search, no node each.
  StreamList streams_;
  HeaderList response_fields_;  // a response head's fields as they go out (reused)
  std::vector<int32_t> blocked_;  // streams whose response waits for the client to read
  size_t closed_ = 0;          // streams the codec closed, not yet swept
  uint64_t idle_at_ = 0;       // loop ms: close then if still no stream is open
  uint64_t armed_at_ = 0;      // loop ms the connection's timer is due at; 0: none
  uint64_t last_write_ms_ = 0; // loop ms the client last took bytes
  bool draining_ = false;
  bool read_paused_ = false;   // the client is not reading what it is sent: not read either
};

}  // namespace pilotfish
