#pragma once
// HTTP/2 to an upstream endpoint (clusters[].protocol http2, or auto when the endpoint picks h2
// in ALPN): one connection carries many requests at once, each on its own stream. A worker
// keeps these connections per endpoint in its EndpointPool (as SharedConnections, beside the
// HTTP/1.1 ones): a request takes a stream on one that has room under the peer's
// SETTINGS_MAX_CONCURRENT_STREAMS, and a second connection is made only when none has. The
// connection is made, counted and bounded like any upstream connection (max_connections,
// max_pending_requests, connect_timeout, TLS); max_requests counts streams.
//
// GOAWAY: the streams the peer took (up to its last stream id) finish, new requests take a new
// connection; a stream the peer refused (REFUSED_STREAM, or above GOAWAY's last stream id) was
// not processed, and its exchange sends it again without counting it against the endpoint. A
// connection with no stream for the cluster's idle_timeout is closed.
//
// What the streams queue is written once after the loop's I/O callbacks of the turn
// (EventLoop::defer), and only the streams that wait for their body to go out are told when it
// has: the work per event is per stream touched, not per stream open.

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "http/http2_codec.h"
#include "http/stream_table.h"
#include "upstream/upstream_pool.h"

namespace pilotfish {

// A request's stream on a shared HTTP/2 connection: what the connection tells it.
class Http2StreamOwner {
 public:
  virtual ~Http2StreamOwner() = default;
  // The connection is ready (the stream can be opened now), or it could not be made (as a
  // connect failure; the owner is forgotten), or it turned out to speak HTTP/1.1 (auto: the
  // endpoint picked http/1.1 in ALPN; the owner tries again over HTTP/1.1).
  virtual void h2_ready() = 0;
  virtual void h2_connect_failed(int status) = 0;
  virtual void h2_not_spoken() = 0;
  // The response: heads (1xx too), body pieces, the end with trailers.
  virtual void h2_head(ResponseHead& head, bool end_stream) = 0;
  virtual void h2_data(std::string_view piece) = 0;
  virtual void h2_end(HeaderList& trailers) = 0;
  // The stream ended before its response did: reset by the peer or the connection lost.
  // `unprocessed`: the peer did not act on it (REFUSED_STREAM, above GOAWAY's last id).
  virtual void h2_reset(uint32_t error_code, bool unprocessed) = 0;
  // Request bytes queued on the stream went out: the client's body may be read again.
  // Told only after Http2Upstream::wait_drained(stream), once.
  virtual void h2_drained() = 0;
  // The worker closed the connection (it is shutting down): no retry, the request ends.
  virtual void h2_gone() = 0;
};

class Http2Upstream final : public SharedConnection, public UpstreamHandler, private Http2Handler, private Deferred {
 public:
  // A connection to `pool`'s endpoint with room for one more stream (made if needed; it may
  // still be connecting: the owner waits for h2_ready). Null when the cluster's breaker is full
  // (*overflow says which).
  static Http2Upstream* for_stream(const std::shared_ptr<EndpointPool>& pool, UpstreamHost& host,
                                   BreakerLimit* overflow);

  // Connected (and the handshake done): streams may be opened now. Else the owner waits and is
  // told (h2_ready, h2_connect_failed, h2_not_spoken).
  bool ready() const { return ready_; }
  void wait(Http2StreamOwner* owner);
  // Opens a stream for `owner`; -1 when it cannot (the connection is going away: try another).
  int32_t open(Http2StreamOwner* owner, const RequestHead& head, std::string_view scheme, std::string_view authority,
               bool end_stream);
  void send_data(int32_t stream, std::string_view piece);
  void send_end(int32_t stream, const HeaderList* trailers);
  // Bytes of the stream's body not yet on the wire (the peer's window, the socket).
  size_t pending(int32_t stream) const;
  // The owner passed `n` response bytes on: the stream's window opens by as much.
  void consume(int32_t stream, size_t n);
  // The stream's owner waits for its queued body to go out: h2_drained, once, when some has.
  void wait_drained(int32_t stream);
  // The owner is gone: its stream is reset (CANCEL), or it stops waiting.
  void abandon(Http2StreamOwner* owner, int32_t stream);
  // Writes what the codec has ready, after this turn's I/O.
  void flush();

  // SharedConnection
  bool accepting() const override;
  void retire() override;

  // UpstreamHandler
  void on_upstream_connected(UpstreamConnection& from) override;
  void on_upstream_connect_failed(UpstreamConnection& from, int status) override;
  void on_upstream_data(UpstreamConnection& from, char* data, size_t length) override;
  void on_upstream_end(UpstreamConnection& from, int status) override;
  void on_upstream_drained(UpstreamConnection& from) override;
  void on_upstream_timeout(UpstreamConnection& from) override;
  void on_upstream_closed(UpstreamConnection& from) override;

 private:
  Http2Upstream(std::shared_ptr<EndpointPool> pool, UpstreamHost& host);
  ~Http2Upstream() override;

  // Http2Handler (client role)
  void on_request_head(int32_t, RequestHead&, bool) override {}
  void on_request_head_too_large(int32_t, const RequestHead&) override {}
  void on_response_head(int32_t stream, ResponseHead& head, bool end_stream) override;
  void on_data(int32_t stream, std::string_view piece) override;
  void on_end(int32_t stream, HeaderList& trailers) override;
  void on_stream_closed(int32_t stream, uint32_t error_code) override;
  void on_goaway(int32_t last_stream_id, uint32_t error_code) override;

  Http2StreamOwner* owner_of(int32_t stream);
  // The connection is gone: every owner is told, then this object deletes itself.
  void fail_all(int status, bool connect, bool closed_by_worker = false);
  // No stream and no waiter: closes when going away, else arms the idle timeout.
  void maybe_idle();
  // Entry points from the connection: deletion and output wait until the outermost returns.
  struct Guard;
  void leave();
  void run_deferred() override;

  std::shared_ptr<EndpointPool> pool_;
  UpstreamHost& host_;
  UpstreamLease connection_;
  Http2Connection codec_;
  std::vector<Http2StreamOwner*> waiting_;
  StreamTable<Http2StreamOwner*> streams_;  // open streams and their owners
  std::vector<int32_t> blocked_;  // streams whose owner waits for h2_drained
  int32_t goaway_last_ = -1;  // the peer's GOAWAY: streams above were not processed
  bool ready_ = false;
  bool going_away_ = false;   // takes no new stream (GOAWAY either way, retired, failed)
  bool dead_ = false;         // the connection is gone: delete once no call is under way
  int depth_ = 0;             // calls under way (callbacks, codec): output and deletion wait
  bool want_output_ = false;
};

}  // namespace pilotfish
