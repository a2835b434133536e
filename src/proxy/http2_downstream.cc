// HTTP/2 from the client (see http2_downstream.h): each stream's request checked and handed to
// its Exchange, the response written back as frames, the connection's timer shared by its
// streams, and streams deleted only between events.
#include "proxy/http2_downstream.h"

#include <uv.h>

#include <algorithm>

#include "http/http1_codec.h"
#include "http/local_reply.h"
#include "log/logger.h"
#include "pilotfish/header_rules.h"

namespace pilotfish {

namespace {

constexpr uint32_t kNoError = 0;        // NGHTTP2_NO_ERROR
constexpr uint32_t kInternalError = 2;  // NGHTTP2_INTERNAL_ERROR

Http2Limits limits_of(const Listener& l) {
  Http2Limits limits;
  limits.max_concurrent_streams = l.http2_max_concurrent_streams;
  limits.max_header_bytes = l.max_header_bytes;
  return limits;
}

bool method_idempotent(std::string_view m) {
  return m == "GET" || m == "HEAD" || m == "OPTIONS" || m == "PUT" || m == "DELETE" || m == "TRACE";
}

}  // namespace

// One stream: its request's exchange, and the exchange's side in HTTP/2.
// Streams are kept for reuse by the worker (WorkerContext::spare_streams), with their buffers.
struct Http2Downstream::H2Stream final : ExchangeOwner, Spare {
  explicit H2Stream(WorkerContext& worker) : ex(worker, *this) {}

  // Made ready for stream `stream_id` of `c`: as new, but for the capacity of its buffers.
  void reuse(Http2Downstream& c, int32_t stream_id) {
    conn = &c;
    id = stream_id;
    head.clear();
    timer_at = body_at = 0;
    unconsumed = 0;
    request_paused = ended = request_ended = closed = blocked = false;
  }

  Http2Downstream* conn = nullptr;
  int32_t id = 0;
  Exchange ex;
  RequestHead head;
  uint64_t timer_at = 0;      // loop ms at which ex.on_timer is due; 0: none
  uint64_t body_at = 0;       // loop ms by which the request's body must be in (body_timeout)
  size_t unconsumed = 0;      // body bytes received while the upstream was behind
  bool request_paused = false;
  bool ended = false;         // the response's end (or a reset) was submitted
  bool request_ended = false; // the client's END_STREAM came
  bool closed = false;        // the codec closed the stream: swept at the next safe point
  bool blocked = false;       // in conn->blocked_: its response waits for the client to read

  // Body bytes are passed on (or dropped) and the client's window opens by as much, unless
  // the upstream is behind.
  bool discarding() const { return ex.local_response() || ex.response_complete() || ended; }

  void exchange_head(const ResponseHead& h, bool no_body, bool) override {
    if (h.status == 101) {  // never asked for on HTTP/2
      exchange_broken();
      return;
    }
    HeaderList& fields = conn->response_fields_;
    fields.clear();
    std::string tokens = connection_tokens(h.fields);
    for (size_t i = 0; i < h.fields.size(); ++i) {
      std::string_view name = h.fields.name(i);
      if (is_hop_by_hop(name, tokens)) continue;
      if ((h.status < 200 || h.status == 204) && iequals(name, "content-length")) continue;
      fields.add(name, trim_ows(h.fields.value(i)));
    }
    bool final = h.status >= 200;
    conn->codec_.submit_response(id, h.status, fields, final && no_body);
    if (final && no_body) ended = true;
  }

  void exchange_body(std::string_view piece) override { conn->codec_.send_data(id, piece); }

  void exchange_end(const ResponseHead& h) override {
    if (ended) {  // a response without a body ended with its head
      if (!request_ended) conn->codec_.end_early(id);
      ex.log();
      return;
    }
    ended = true;
    HeaderList trailers;
    std::string tokens = connection_tokens(h.fields);
    for (size_t i = 0; i < h.trailers.size(); ++i) {
      std::string_view name = h.trailers.name(i);
      if (allowed_in_trailers(name) && !is_hop_by_hop(name, tokens)) trailers.add(name, trim_ows(h.trailers.value(i)));
    }
    conn->codec_.send_end(id, trailers.size() ? &trailers : nullptr);
    if (!request_ended) conn->codec_.end_early(id);
    ex.log();
  }

  void exchange_local_reply(int status, const char* error, std::string_view extra, bool) override {
    if (ended) return;
    ended = true;
    LocalReply reply{status, error, extra, true, false, head.method == "HEAD"};
    HeaderList fields;
    if (is_grpc_request(head.fields)) {
      // A trailers-only gRPC answer: the client reads grpc-status, not the HTTP status.
      grpc_local_reply_fields(reply, fields);
      conn->codec_.submit_response(id, 200, fields, true);
      if (!request_ended) conn->codec_.end_early(id);
      ex.log();
      if (unconsumed) conn->codec_.consume(id, unconsumed), unconsumed = 0;
      return;
    }
    std::string body;
    ex.count_out(local_reply_parts(reply, fields, body));
    conn->codec_.submit_response(id, status, fields, body.empty());
    if (!body.empty()) {
      conn->codec_.send_data(id, body);
      conn->codec_.send_end(id, nullptr);
    }
    if (!request_ended) conn->codec_.end_early(id);
    ex.log();
    // What the client still sends of the body is read and dropped (its window opens).
    if (unconsumed) conn->codec_.consume(id, unconsumed), unconsumed = 0;
  }

  void exchange_broken() override {
    ended = true;
    conn->codec_.reset(id, kInternalError);
    ex.log();
  }

  void exchange_timer(uint64_t ms) override {
    timer_at = uv_now(conn->worker_.loop()) + ms;
    conn->arm_at(timer_at);
  }

  void exchange_request_flow(bool go) override {
    request_paused = !go;
    if (go && unconsumed) {
      conn->codec_.consume(id, unconsumed);
      unconsumed = 0;
      // The WINDOW_UPDATE goes out after this turn's I/O (or when the codec's call under way returns).
      conn->schedule();
    }
  }

  size_t exchange_downstream_pending() const override {
    return conn->codec_.queued(id) + conn->conn_.pending_bytes();
  }

  void exchange_downstream_blocked() override {
    if (blocked) return;
    blocked = true;
    conn->blocked_.push_back(id);
  }

  void exchange_upgraded(std::string_view) override {}

  void exchange_progress() override { conn->schedule(); }
};

Http2Downstream::Http2Downstream(WorkerContext& worker, Stream& connection, std::shared_ptr<ListenerSlot> slot,
                                 SnapshotPtr snap, std::string_view client_address, std::string_view fixed_cluster)
    : worker_(worker),
      conn_(connection),
      slot_(std::move(slot)),
      snap_(std::move(snap)),
      listener_index_(slot_->index),
      client_address_(client_address),
      fixed_cluster_(fixed_cluster),
      codec_(Http2Connection::Role::server, *this, limits_of(snap_->policy->listeners[listener_index_])) {
  idle_at_ = uv_now(worker_.loop()) + static_cast<uint64_t>(listener().idle_timeout.count());
  arm_at(idle_at_);
}

Http2Downstream::~Http2Downstream() {
  worker_.cancel(*this);
  for (auto& [id, s] : streams_) recycle(std::move(s));
}

void Http2Downstream::recycle(std::unique_ptr<H2Stream> s) {
  // Per worker, up to ten connections at the default max_concurrent_streams: a burst of streams
  // that all end together is followed by as many new ones, and they reuse these (their memory
  // would stay with the allocator anyway).
  constexpr size_t kSpares = 1024;
  auto& spares = worker_.spare_streams();
  if (spares.size() >= kSpares) return;
  s->ex.recycle();
  spares.push_back(std::move(s));
}

Http2Downstream::StreamList::iterator Http2Downstream::at_or_after(int32_t id) {
  return std::lower_bound(streams_.begin(), streams_.end(), id, [](const auto& e, int32_t v) { return e.first < v; });
}

Http2Downstream::H2Stream* Http2Downstream::find(int32_t id) {
  auto it = at_or_after(id);
  return it == streams_.end() || it->first != id || it->second->closed ? nullptr : it->second.get();
}

Http2Downstream::H2Stream* Http2Downstream::open_stream(int32_t id) {
  // A new stream runs under the worker's current policy while its listener is in it.
  const SnapshotPtr& current = worker_.snapshot();
  if (current && current != snap_ && slot_->index != SIZE_MAX && slot_->protocol == Protocol::http) {
    snap_ = current;
    listener_index_ = slot_->index;
  }
  auto at = at_or_after(id);
  if (at == streams_.end() || at->first != id) at = streams_.emplace(at, id, nullptr);
  std::unique_ptr<H2Stream>& slot = at->second;
  auto& spares = worker_.spare_streams();
  if (spares.empty()) {
    slot = std::make_unique<H2Stream>(worker_);
  } else {
    slot.reset(static_cast<H2Stream*>(spares.back().release()));  // only H2Streams are kept there
    spares.pop_back();
  }
  slot->reuse(*this, id);
  slot->ex.open(snap_, listener_index_);
  idle_at_ = 0;
  return slot.get();
}

void Http2Downstream::receive(const char* data, size_t length) {
  bool ok = codec_.receive(data, length);
  if (!ok) log_debug("listener " + listener().name + ": HTTP/2 connection error from " + client_address_ + ": " +
                     codec_.error());
  // The client's WINDOW_UPDATE may have let queued response bytes go (pump wakes their streams).
  pump();
  if (!ok) {
    conn_.close_after_flush();
    return;
  }
  // A client that sends without reading what it is sent (a SETTINGS or PING flood, each asking
  // for an acknowledgement) is not read further until it reads: memory stays bounded.
  if (conn_.pending_bytes() > Stream::kHighWater) {
    conn_.stop_read();
    read_paused_ = true;
  }
}

void Http2Downstream::pump() {
  if (conn_.closing()) return;
  codec_.output(conn_.out());
  if (conn_.flush() != 0) {
    conn_.close();
    return;
  }
  if (codec_.done()) conn_.close_after_flush();
  // What was queued may all have gone to the kernel at once: no write callback will say so.
  wake_blocked();
  sweep();
}

void Http2Downstream::wake_blocked() {
  if (blocked_.empty()) return;
  std::vector<int32_t> waiting;
  waiting.swap(blocked_);
  for (int32_t id : waiting) {
    if (conn_.closing()) return;
    H2Stream* s = find(id);
    if (s == nullptr) continue;
    s->blocked = false;
    s->ex.downstream_drained();
    if (s->ex.waiting_for_downstream()) s->exchange_downstream_blocked();
  }
}

void Http2Downstream::on_write_done() {
  if (read_paused_ && conn_.pending_bytes() < Stream::kLowWater) {
    read_paused_ = false;
    conn_.start_read();
  }
  last_write_ms_ = uv_now(worker_.loop());
  pump();
}

void Http2Downstream::on_read_end() {
  for (auto& [id, s] : streams_)
    if (!s->closed) s->ex.client_gone();
  conn_.close();
}

void Http2Downstream::drain() {
  if (draining_) return;
  draining_ = true;
  codec_.shutdown();
  schedule();
}

void Http2Downstream::on_close() {
  // Called inside close(), which may run inside a stream's exchange: the streams are deleted
  // with this object (after libuv has closed the socket), not here.
  for (auto& [id, s] : streams_) {
    if (s->closed) continue;
    if (!s->ended) s->ex.client_gone();
    s->ex.log();
    s->ex.drop_upstream();
    s->closed = true;
  }
}

void Http2Downstream::sweep() {
  if (closed_ == 0 || conn_.closing()) return;
  for (auto& entry : streams_)
    if (entry.second->closed) recycle(std::move(entry.second));
  streams_.erase(std::remove_if(streams_.begin(), streams_.end(), [](const auto& e) { return !e.second; }),
                 streams_.end());
  closed_ = 0;
  if (streams_.empty() && !draining_) {
    idle_at_ = uv_now(worker_.loop()) + static_cast<uint64_t>(listener().idle_timeout.count());
    arm_at(idle_at_);
  }
}

void Http2Downstream::arm_at(uint64_t at) {
  if (at == 0 || conn_.closing() || (armed_at_ != 0 && armed_at_ <= at)) return;
  armed_at_ = at;
  uint64_t now = uv_now(worker_.loop());
  conn_.set_deadline(at > now ? at - now : 1);
}

void Http2Downstream::on_timeout() {
  armed_at_ = 0;
  sweep();
  uint64_t now = uv_now(worker_.loop());
  if (idle_at_ && now >= idle_at_ && streams_.empty()) {
    // Idle for the listener's idle_timeout: GOAWAY, and close (at once when the client has not
    // even taken what was written before: it is not waited for).
    bool stuck = conn_.pending_bytes() > 0;
    codec_.shutdown();
    pump();
    if (stuck)
      conn_.close();
    else
      conn_.close_after_flush();
    return;
  }
  // The timer was armed for the earliest deadline asked for; deadlines that moved later since
  // are found here and the timer armed for the next.
  uint64_t next = streams_.empty() ? idle_at_ : 0;
  for (auto& [id, s] : streams_) {
    if (s->closed) continue;
    if (s->body_at && s->body_at <= now) {
      // A client that trickles a body is cut off, as on HTTP/1.1.
      s->body_at = 0;
      if (!s->ex.request_complete() && !s->ex.response_started()) s->ex.answer(408, "body_timeout", true);
    }
    if (s->timer_at && s->timer_at <= now) {
      s->timer_at = 0;
      s->ex.set_last_progress(last_write_ms_);  // the client took bytes then (of any stream)
      s->ex.on_timer();
    }
    if (conn_.closing()) return;
    if (s->timer_at && (next == 0 || s->timer_at < next)) next = s->timer_at;
    if (s->body_at && (next == 0 || s->body_at < next)) next = s->body_at;
  }
  pump();
  arm_at(next);
}

// ---------------------------------------------------------------------------------------------
// Requests

// What an HTTP/2 request must be to go on, beyond the codec's checks (RFC 9113 8.3: its fields
// are valid and its framing is HTTP/2's, or it never gets here): a host, no CONNECT, a target
// pilotfish can normalise, within the body limit.
bool Http2Downstream::check_request(H2Stream& s, bool end_stream) {
  Exchange& ex = s.ex;
  RequestHead& h = s.head;
  ex.set_raw_target(h.target);
  if (h.method == "CONNECT") {
    ex.answer(405, "connect_refused", !end_stream);
    return false;
  }
  if (!http1_method_known(h.method)) {  // the upstream speaks HTTP/1.1 (found by fuzz_session)
    ex.answer(400, "bad_request", !end_stream);
    return false;
  }
  size_t host = h.fields.find("host");
  if (host == HeaderList::npos) {
    ex.answer(400, "invalid_host", !end_stream);
    return false;
  }
  if (!ex.set_authority(h.fields.value(host))) return false;
  // A request-target is visible ASCII (RFC 9112 3.2; other bytes are percent-encoded): nghttp2
  // lets obs-text through in :path, which an HTTP/1.1 upstream would refuse or read otherwise
  // (found by fuzz_session).
  for (char c : h.target) {
    if (c <= 0x20 || c >= 0x7f) {
      ex.answer(400, "invalid_target", !end_stream);
      return false;
    }
  }
  if (!ex.set_target(h.target, h.method == "OPTIONS")) return false;
  size_t length = h.fields.find("content-length");
  uint64_t max = listener().max_body_bytes;
  if (max && length != HeaderList::npos) {
    if (content_length_value(h.fields.value(length)) > max) {
      ex.answer(413, "body_too_large", !end_stream);
      return false;
    }
  }
  return true;
}

void Http2Downstream::on_request_head(int32_t id, RequestHead& head, bool end_stream) {
  H2Stream* s = open_stream(id);
  s->request_ended = end_stream;
  std::swap(s->head, head);
  s->ex.note_grpc(s->head.fields);
  if (!check_request(*s, end_stream)) return;
  s->ex.set_request_id(s->head.fields);
  bool has_body = !end_stream;
  bool chunked = has_body && s->head.fields.find("content-length") == HeaderList::npos;
  const std::string& m = s->head.method;
  const TlsState* tls = conn_.tls();
  ExchangeRequest request{m, m == "HEAD", method_idempotent(m), false, has_body, chunked, s->head.fields,
                          client_address_, tls, fixed_cluster_};
  bool started = s->ex.begin(request);
  s->ex.flush_upstream();
  uint64_t body_timeout = static_cast<uint64_t>(listener().body_timeout.count());
  if (started && has_body && body_timeout > 0) {
    s->body_at = uv_now(worker_.loop()) + body_timeout;
    arm_at(s->body_at);
  }
}

void Http2Downstream::on_request_head_too_large(int32_t id, const RequestHead& partial) {
  H2Stream* s = open_stream(id);
  // Only what chooses the answer's form is kept (a gRPC client gets a gRPC status).
  if (is_grpc_request(partial.fields)) s->head.fields.add("content-type", "application/grpc");
  s->ex.note_grpc(s->head.fields);
  s->ex.answer(431, "header_too_large", true);
}

void Http2Downstream::on_data(int32_t id, std::string_view piece) {
  H2Stream* s = find(id);
  if (s == nullptr) return;
  s->ex.count_in(piece.size());
  if (s->discarding()) {
    codec_.consume(id, piece.size());
    return;
  }
  s->ex.request_body(piece);
  s->ex.flush_upstream();
  if (s->request_paused && !s->discarding())
    s->unconsumed += piece.size();
  else
    codec_.consume(id, piece.size());
}

void Http2Downstream::on_end(int32_t id, HeaderList& trailers) {
  H2Stream* s = find(id);
  if (s == nullptr) return;
  s->body_at = 0;
  s->request_ended = true;
  if (s->discarding()) return;
  s->ex.request_end(s->head.fields, trailers);
  s->ex.flush_upstream();
}

void Http2Downstream::on_stream_closed(int32_t id, uint32_t error_code) {
  H2Stream* s = find(id);
  if (s == nullptr) return;
  if (!s->ended) {
    // Reset by the client (or the connection went) before the answer was done.
    s->ex.client_gone();
    if (error_code != kNoError) log_debug("listener " + listener().name + ": stream reset by " + client_address_);
  }
  s->ex.log();
  s->ex.drop_upstream();
  s->closed = true;
  ++closed_;
}

}  // namespace pilotfish
