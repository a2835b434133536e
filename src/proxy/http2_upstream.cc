// HTTP/2 connections to upstream endpoints (see http2_upstream.h): made and found through the
// endpoint's pool, streams handed to their owners, and the connection's end told to every owner
// before the object goes.
#include "proxy/http2_upstream.h"

#include <uv.h>

#include <algorithm>

#include "log/logger.h"

namespace pilotfish {

namespace {

constexpr uint32_t kRefusedStream = 7;  // NGHTTP2_REFUSED_STREAM
constexpr uint32_t kCancel = 8;         // NGHTTP2_CANCEL
constexpr uint32_t kMaxStreams = 1000;  // whatever the peer allows, one connection takes no more

Http2Limits upstream_limits() {
  Http2Limits l;
  l.max_header_bytes = 64 * 1024;  // as an HTTP/1.1 upstream's response head
  return l;
}

}  // namespace

// Output and deletion wait until the outermost call under way returns.
struct Http2Upstream::Guard {
  explicit Guard(Http2Upstream& m) : mux(m) { ++mux.depth_; }
  ~Guard() { mux.leave(); }
  Http2Upstream& mux;
};

Http2Upstream::Http2Upstream(std::shared_ptr<EndpointPool> pool, UpstreamHost& host)
    : pool_(std::move(pool)), host_(host), codec_(Http2Connection::Role::client, *this, upstream_limits()) {}

Http2Upstream::~Http2Upstream() {
  host_.cancel(*this);
  pool_->forget_shared(this);
  connection_.end(false);
}

Http2Upstream* Http2Upstream::for_stream(const std::shared_ptr<EndpointPool>& pool, UpstreamHost& host,
                                         BreakerLimit* overflow) {
  for (SharedConnection* c : pool->shared_connections())
    if (c->accepting()) return static_cast<Http2Upstream*>(c);
  auto* mux = new Http2Upstream(pool, host);
  mux->connection_ = pool->connect_shared(mux, overflow);
  if (!mux->connection_) {
    delete mux;
    return nullptr;
  }
  pool->add_shared(mux);
  return mux;
}

bool Http2Upstream::accepting() const {
  if (going_away_ || dead_) return false;
  uint32_t limit = ready_ ? std::min(codec_.peer_max_streams(), kMaxStreams) : 100;
  return streams_.size() + waiting_.size() < limit;
}

void Http2Upstream::leave() {
  if (--depth_ > 0) return;
  if (dead_) {
    if (!streams_.empty() || !waiting_.empty()) return;
    if (connection_) {
      if (ready_) codec_.output(connection_->out());  // GOAWAY, where one was submitted
      connection_.end_after_flush();
    }
    delete this;
    return;
  }
  if (want_output_) {
    want_output_ = false;
    flush();
  }
}

void Http2Upstream::flush() {
  if (dead_ || !connection_ || !ready_) return;
  if (depth_ > 0) {  // never inside the codec's own calls
    want_output_ = true;
    return;
  }
  host_.defer(*this);
}

void Http2Upstream::wait_drained(int32_t stream) { blocked_.push_back(stream); }

void Http2Upstream::run_deferred() {
  if (dead_ || !connection_ || !ready_) return;
  Guard guard(*this);  // an owner's call may end the connection: deleted when this returns (leave)
  codec_.output(connection_->out());
  connection_->flush();  // a failed write is seen by the read side, which ends the connection
  // Queued request bodies may have gone out (a WINDOW_UPDATE came): their clients may go on.
  if (!blocked_.empty()) {
    std::vector<int32_t> blocked;
    blocked.swap(blocked_);
    for (int32_t id : blocked)
      if (Http2StreamOwner* o = owner_of(id)) o->h2_drained();
  }
  if (!dead_ && codec_.done() && streams_.empty() && waiting_.empty()) {
    dead_ = true;  // both sides said GOAWAY and nothing is left: closed and deleted by leave
    pool_->forget_shared(this);
  }
}

void Http2Upstream::wait(Http2StreamOwner* owner) { waiting_.push_back(owner); }

int32_t Http2Upstream::open(Http2StreamOwner* owner, const RequestHead& head, std::string_view scheme,
                            std::string_view authority, bool end_stream) {
  if (dead_ || !ready_ || going_away_) return -1;
  int32_t id = codec_.submit_request(head, scheme, authority, end_stream);
  if (id < 0) return -1;
  streams_.add(id, owner);
  if (connection_) connection_->clear_deadline();  // not idle
  return id;
}

void Http2Upstream::send_data(int32_t stream, std::string_view piece) { codec_.send_data(stream, piece); }

void Http2Upstream::send_end(int32_t stream, const HeaderList* trailers) { codec_.send_end(stream, trailers); }

size_t Http2Upstream::pending(int32_t stream) const {
  return codec_.queued(stream) + (connection_ ? connection_->pending_bytes() : 0);
}

void Http2Upstream::consume(int32_t stream, size_t n) {
  codec_.consume(stream, n);
  flush();
}

void Http2Upstream::abandon(Http2StreamOwner* owner, int32_t stream) {
  Guard guard(*this);
  waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), owner), waiting_.end());
  if (stream >= 0) {
    Http2StreamOwner** o = streams_.find(stream);
    if (o != nullptr && *o == owner) {
      streams_.take(stream);
      if (!dead_) codec_.reset(stream, kCancel);
    }
  }
  want_output_ = true;
  maybe_idle();
}

void Http2Upstream::maybe_idle() {
  if (dead_ || !streams_.empty() || !waiting_.empty()) return;
  if (going_away_) {
    dead_ = true;  // closed and deleted when the outermost call returns (leave)
    pool_->forget_shared(this);
    return;
  }
  if (connection_ && ready_) connection_->set_deadline(pool_->idle_timeout_ms() ? pool_->idle_timeout_ms() : 1);
}

void Http2Upstream::retire() {
  Guard guard(*this);
  going_away_ = true;
  pool_->forget_shared(this);
  if (ready_) codec_.shutdown();
  want_output_ = true;
  maybe_idle();
}

// ---------------------------------------------------------------------------------------------
// The connection's events

void Http2Upstream::on_upstream_connected(UpstreamConnection& from) {
  Guard guard(*this);
  if (pool_->protocol() == UpstreamProtocol::automatic) {
    bool h2 = from.tls() && from.tls()->alpn_h2();
    pool_->set_speaks_h2(h2);
    if (!h2) {
      // The endpoint picked http/1.1: its requests go over HTTP/1.1 (this connection closes).
      going_away_ = true;
      pool_->forget_shared(this);
      std::vector<Http2StreamOwner*> waiting;
      waiting.swap(waiting_);
      for (auto* w : waiting) w->h2_not_spoken();
      maybe_idle();
      return;
    }
  }
  ready_ = true;
  want_output_ = true;  // the preface and SETTINGS
  std::vector<Http2StreamOwner*> waiting;
  waiting.swap(waiting_);
  for (auto* w : waiting) w->h2_ready();
  maybe_idle();
}

void Http2Upstream::fail_all(int status, bool connect, bool closed_by_worker) {
  dead_ = true;
  pool_->forget_shared(this);
  std::vector<Http2StreamOwner*> waiting;
  waiting.swap(waiting_);
  StreamTable<Http2StreamOwner*> streams;
  streams.swap(streams_);
  for (auto* w : waiting) closed_by_worker ? w->h2_gone() : w->h2_connect_failed(status);
  streams.for_each([&](int32_t id, Http2StreamOwner* owner) {
    if (closed_by_worker)
      owner->h2_gone();
    else if (connect)
      owner->h2_connect_failed(status);
    else
      owner->h2_reset(0, goaway_last_ >= 0 && id > goaway_last_);
  });
}

void Http2Upstream::on_upstream_connect_failed(UpstreamConnection&, int status) {
  Guard guard(*this);
  connection_.lost();
  fail_all(status, true);
}

void Http2Upstream::on_upstream_end(UpstreamConnection&, int status) {
  Guard guard(*this);
  connection_.lost();
  fail_all(status, !ready_);
}

void Http2Upstream::on_upstream_closed(UpstreamConnection&) {
  Guard guard(*this);
  connection_.lost();
  fail_all(UV_ECANCELED, !ready_, /*closed_by_worker=*/true);
}

void Http2Upstream::on_upstream_data(UpstreamConnection&, char* data, size_t length) {
  Guard guard(*this);
  bool ok = codec_.receive(data, length);
  if (!ok && codec_.error()[0] == '\0') {
    // Not an error: the peer's GOAWAY, and no stream of ours is left open.
    going_away_ = true;
    pool_->forget_shared(this);
    maybe_idle();
    return;
  }
  if (!ok) {
    log_warn(pool_->label() + ": HTTP/2 connection error: " + codec_.error());
    if (connection_) {
      codec_.output(connection_->out());  // GOAWAY, where possible
      connection_.end_after_flush();
    }
    fail_all(UV_EPROTO, false);
    return;
  }
  want_output_ = true;
}

void Http2Upstream::on_upstream_drained(UpstreamConnection&) {
  // The socket took what was queued: the codec may have more for it, and the streams that
  // wait are told (run_deferred).
  flush();
}

void Http2Upstream::on_upstream_timeout(UpstreamConnection&) {
  Guard guard(*this);
  if (!streams_.empty() || !waiting_.empty()) return;
  going_away_ = true;  // idle for the cluster's idle_timeout
  if (ready_) codec_.shutdown();
  maybe_idle();
}

// ---------------------------------------------------------------------------------------------
// The codec's events (inside codec_.receive: no output here)

Http2StreamOwner* Http2Upstream::owner_of(int32_t stream) {
  Http2StreamOwner** o = streams_.find(stream);
  return o == nullptr ? nullptr : *o;
}

void Http2Upstream::on_response_head(int32_t stream, ResponseHead& head, bool end_stream) {
  if (Http2StreamOwner* o = owner_of(stream)) o->h2_head(head, end_stream);
}

void Http2Upstream::on_data(int32_t stream, std::string_view piece) {
  if (Http2StreamOwner* o = owner_of(stream))
    o->h2_data(piece);
  else
    codec_.consume(stream, piece.size());
}

void Http2Upstream::on_end(int32_t stream, HeaderList& trailers) {
  Http2StreamOwner* o = streams_.take(stream);  // the response is complete: nothing more for its owner
  if (o == nullptr) return;
  o->h2_end(trailers);
  maybe_idle();
}

void Http2Upstream::on_stream_closed(int32_t stream, uint32_t error_code) {
  Http2StreamOwner* o = streams_.take(stream);
  if (o == nullptr) return;
  bool unprocessed = error_code == kRefusedStream || (goaway_last_ >= 0 && stream > goaway_last_);
  o->h2_reset(error_code, unprocessed);
  maybe_idle();
}

void Http2Upstream::on_goaway(int32_t last_stream_id, uint32_t) {
  // Streams up to last_stream_id finish; new requests take a new connection.
  goaway_last_ = last_stream_id;
  going_away_ = true;
  pool_->forget_shared(this);
}

}  // namespace pilotfish
