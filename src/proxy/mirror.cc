#include "proxy/mirror.h"

#include <uv.h>

#include "http/http1_codec.h"
#include "http/upstream_head.h"
#include "log/logger.h"
#include "net/descriptor_budget.h"
#include "proxy/http2_upstream.h"
#include "upstream/upstream_request.h"

namespace pilotfish {

namespace {

// build_upstream_head's output for a copy: an HTTP/2-style head (method, target, fields) whose
// Host is the shadow's and whose framing fields are left out (the copy's body is whole: it gets a
// content-length when it is sent).
class MirrorHeadWriter final : public UpstreamHeadWriter {
 public:
  explicit MirrorHeadWriter(RequestHead& out) : parts_(out, {}) {}
  void request_line(std::string_view method, std::string_view path, std::string_view query) override {
    parts_.request_line(method, path, query);
  }
  void field(std::string_view name, std::initializer_list<std::string_view> value) override {
    if (iequals(name, "content-length") || iequals(name, "transfer-encoding")) return;
    if (!iequals(name, "host")) return parts_.field(name, value);
    std::string host;
    for (auto piece : value) host += piece;
    parts_.field(name, {shadow_authority(host)});
  }

 private:
  Http2HeadWriter parts_;
};

}  // namespace

std::string shadow_authority(std::string_view host) {
  if (!host.empty() && host.front() == '[') return std::string(host);  // an IPv6 literal
  // The port (after the last ':') stays after the suffix.
  size_t colon = host.rfind(':');
  if (colon == std::string_view::npos) colon = host.size();
  std::string_view name = host.substr(0, colon);
  if (name.find_first_not_of("0123456789.") == std::string_view::npos) return std::string(host);  // IPv4
  std::string out(name);
  out += "-shadow";
  out += host.substr(colon);
  return out;
}

// One copy on its way: a connection (or an HTTP/2 stream) of the cluster, its answer read and
// dropped, the cluster's timeout. It deletes itself once done (after its timer has closed).
class Mirror final : public UpstreamHandler, private Http1ResponseHandler, private Http2StreamOwner {
 public:
  Mirror(WorkerContext& worker, std::unique_ptr<MirrorCopy> copy) : worker_(worker), copy_(std::move(copy)) {
    uv_timer_init(worker_.loop(), &timer_);
    timer_.data = this;
    decoder_.set_head_limit(64 * 1024);
  }
  void start() { uv_timer_start(&timer_, on_timer, 0, 0); }  // on the loop's next turn

  // UpstreamHandler
  void on_upstream_connected(UpstreamConnection& from) override;
  void on_upstream_connect_failed(UpstreamConnection& from, int status) override;
  void on_upstream_data(UpstreamConnection& from, char* data, size_t length) override;
  void on_upstream_end(UpstreamConnection& from, int status) override;
  void on_upstream_drained(UpstreamConnection&) override {}
  void on_upstream_closed(UpstreamConnection& from) override;

 private:
  ~Mirror() override = default;  // only through finish()

  // Http1ResponseHandler: the answer, read to its end and dropped.
  Step on_response_head(ResponseHead& head) override;
  Step on_response_body(std::string_view) override { return Step::go; }
  Step on_response_message_complete(ResponseHead&) override;

  // Http2StreamOwner
  void h2_ready() override;
  void h2_connect_failed(int status) override;
  void h2_not_spoken() override;
  void h2_head(ResponseHead& head, bool end_stream) override;
  void h2_data(std::string_view piece) override;
  void h2_end(HeaderList& trailers) override;
  void h2_reset(uint32_t error_code, bool unprocessed) override;
  void h2_drained() override {}
  void h2_gone() override;

  void begin();
  void attempt(bool fresh);
  void send_h1();
  void h2_let_go();
  void answered(int status);
  // No answer: counted in the cluster's `counter`, held against the endpoint when `blame`.
  void fail(RelaxedCounter ClusterStats::*counter, bool blame = true);
  // A breaker limit refused the copy: dropped, unless it had gone out already (a resend).
  void overflow(BreakerLimit limit);
  // Counts the result, gives back everything held, and deletes this once its timer has closed.
  void finish(MirrorResult result, bool reusable = false);
  static void on_timer(uv_timer_t* t);

  ClusterState& cs() { return copy_->cluster_state(); }
  const Cluster& cluster() const { return copy_->snap_->policy->clusters[copy_->cluster_]; }
  uint64_t now() { return uv_now(worker_.loop()); }

  WorkerContext& worker_;
  std::unique_ptr<MirrorCopy> copy_;  // its snapshot keeps the cluster state alive
  UpstreamRequest up_;
  uv_timer_t timer_;
  ResponseHead resp_;
  Http1Decoder decoder_{static_cast<Http1ResponseHandler*>(this), &resp_};
  Http2Upstream* mux_ = nullptr;
  int32_t stream_ = -1;
  int status_ = 0;  // the final answer's
  int interim_ = 0;  // 1xx answers before it
  bool begun_ = false;
  bool done_ = false;
};

std::unique_ptr<MirrorCopy> MirrorCopy::make(SnapshotPtr snap, const MirrorPolicy& policy, const UpstreamHeadInput& in,
                                             bool has_length, bool idempotent, bool te_trailers) {
  ClusterState& cs = *snap->clusters[policy.cluster_index];
  if (!ClusterShared::try_take(cs.shared->mirrors, policy.max_in_flight)) {
    cs.stats->mirror[static_cast<size_t>(MirrorResult::dropped)].add();
    return nullptr;
  }
  return std::unique_ptr<MirrorCopy>(new MirrorCopy(std::move(snap), policy, in, has_length, idempotent, te_trailers));
}

MirrorCopy::MirrorCopy(SnapshotPtr snap, const MirrorPolicy& policy, const UpstreamHeadInput& in, bool has_length,
                       bool idempotent, bool te_trailers)
    : snap_(std::move(snap)),
      cluster_(policy.cluster_index),
      max_body_bytes_(policy.max_body_bytes),
      has_length_(has_length),
      idempotent_(idempotent),
      te_trailers_(te_trailers) {
  MirrorHeadWriter writer(head_);
  build_upstream_head(writer, in);
}

MirrorCopy::~MirrorCopy() {
  if (!counted_) count(MirrorResult::dropped);
  ClusterShared::give_back(cluster_state().shared->mirrors);
}

void MirrorCopy::count(MirrorResult result) const {
  cluster_state().stats->mirror[static_cast<size_t>(result)].add();
}

void MirrorCopy::add_body(std::string_view piece) {
  if (over_) return;
  if (body_.size() + piece.size() > max_body_bytes_) {
    over_ = true;
    std::string().swap(body_);
    return;
  }
  body_.append(piece);
}

void MirrorCopy::send(WorkerContext& worker, std::unique_ptr<MirrorCopy> copy) {
  if (copy->over_) return;  // dropped (counted as it goes)
  if (copy->has_length_) copy->head_.fields.add("content-length", std::to_string(copy->body_.size()));
  auto* mirror = new Mirror(worker, std::move(copy));
  mirror->start();
}

void Mirror::begin() {
  const Cluster& c = cluster();
  if (!up_.take_request_slot(cs(), c)) {
    overflow(BreakerLimit::requests);
    return;
  }
  uv_timer_start(&timer_, on_timer, static_cast<uint64_t>(c.timeout.count()), 0);
  attempt(false);
}

void Mirror::overflow(BreakerLimit limit) {
  cs().stats->breaker_overflow[static_cast<size_t>(limit)].add();
  finish(up_.attempts > 1 ? MirrorResult::failed : MirrorResult::dropped);
}

void Mirror::attempt(bool fresh) {
  ClusterState& state = cs();
  if (!up_.choose_endpoint(state, now())) {
    finish(MirrorResult::failed);  // no endpoint may take it: the shadow is down
    return;
  }
  ++up_.attempts;
  const std::shared_ptr<EndpointPool>& pool = state.pools[static_cast<size_t>(up_.endpoint)];
  if (pool->prefers_h2()) {
    BreakerLimit limit = BreakerLimit::connections;
    mux_ = Http2Upstream::for_stream(pool, worker_, &limit);
    if (mux_ == nullptr) {
      up_.probe.release();
      overflow(limit);
      return;
    }
    up_.balanced.start(state.balancer.get(), static_cast<size_t>(up_.endpoint));
    if (mux_->ready())
      h2_ready();
    else
      mux_->wait(this);
    return;
  }
  BreakerLimit limit = BreakerLimit::connections;
  if (!up_.lend_connection(state, this, fresh, &limit)) {
    overflow(limit);
    return;
  }
  resp_.clear();
  decoder_.restart();
  if (up_.connection_reused) on_upstream_connected(*up_.connection.get());
}

void Mirror::send_h1() {
  std::string head;
  render_http1_head(head, copy_->head_, copy_->head_.fields.size());
  std::string out;
  append_attempt_head(out, head, 1);
  out += copy_->body_;
  up_.sent = true;
  up_.connection->append(out);
  up_.connection->flush();
}

void Mirror::on_upstream_connected(UpstreamConnection& from) {
  (void)from;
  send_h1();
}

void Mirror::on_upstream_connect_failed(UpstreamConnection&, int status) {
  up_.connection_lost();
  cs().stats->upstream_connect_failure.add();
  // A connect that failed here (no descriptor, no local port) says nothing of the shadow.
  if (is_local_failure(status)) {
    up_.probe.release();
    finish(MirrorResult::dropped);
    return;
  }
  log_debug("cluster " + cluster().name + ": a mirror's copy could not connect to " +
            cs().pools[static_cast<size_t>(up_.endpoint)]->address().text + ": " + upstream_error_text(status));
  up_.verdict(cs(), cluster(), false, now());
  finish(MirrorResult::failed);
}

void Mirror::on_upstream_data(UpstreamConnection&, char* data, size_t length) {
  up_.response_bytes_seen = true;
  using Outcome = Http1Decoder::Outcome;
  Outcome result = decoder_.execute(data, length);
  // Interim answers (100 Continue) pause too: the final one follows.
  while (result.kind == Outcome::paused && status_ == 0 && result.consumed < length) {
    decoder_.resume();
    data += result.consumed;
    length -= result.consumed;
    result = decoder_.execute(data, length);
  }
  if (result.kind == Outcome::paused && status_ != 0) {
    finish(MirrorResult::sent, result.consumed == length && decoder_.keep_alive());
  } else if (result.kind == Outcome::paused) {
    decoder_.resume();
  } else if (result.kind == Outcome::failed || result.kind == Outcome::upgrade) {
    if (status_ == 0) fail(&ClusterStats::upstream_reset);
    else finish(MirrorResult::sent);  // answered, then the rest of it was broken
  }
}

void Mirror::on_upstream_end(UpstreamConnection&, int status) {
  up_.connection_lost();
  if (status_ != 0 && status == UV_EOF && decoder_.finish()) {
    finish(MirrorResult::sent);  // an answer delimited by the close
    return;
  }
  if (status_ != 0) {
    finish(MirrorResult::sent);
    return;
  }
  if (status == kUpstreamTlsFailed && !up_.response_bytes_seen) {
    fail(&ClusterStats::upstream_connect_failure);  // the shadow refused our certificate
    return;
  }
  // Written to a pooled connection the shadow was closing (the keep-alive race): once more on a
  // fresh one, as a request would be.
  if (up_.may_resend_after_race(copy_->idempotent_, true)) {
    attempt(true);
    return;
  }
  fail(&ClusterStats::upstream_reset);
}

void Mirror::on_upstream_closed(UpstreamConnection&) {
  up_.connection_lost();
  finish(status_ ? MirrorResult::sent : MirrorResult::failed);
}

Step Mirror::on_response_head(ResponseHead&) {
  int status = decoder_.status_code();
  // Checked as an exchange checks an answer: the connection may serve a request next.
  if (!response_head_acceptable(decoder_, resp_) || status == 101) return Step::fail;
  if (status < 200) return ++interim_ > kMaxInterimResponses ? Step::fail : Step::skip_body;  // ends at its blank line
  answered(status);
  if (uint64_t idle = keep_alive_idle_limit_ms(resp_.fields); idle && up_.connection)
    up_.connection->set_idle_limit(idle);
  return copy_->head_.method == "HEAD" || status == 204 || status == 304 ? Step::skip_body : Step::go;
}

Step Mirror::on_response_message_complete(ResponseHead&) { return Step::pause; }

void Mirror::answered(int status) {
  status_ = status;
  cs().stats->upstream_codes.add(status);
  up_.verdict(cs(), cluster(), status < 500, now());
}

// HTTP/2

void Mirror::h2_let_go() {
  mux_ = nullptr;
  stream_ = -1;
  up_.balanced.end();
}

void Mirror::h2_ready() {
  RequestHead& head = copy_->head_;
  size_t base = head.fields.size();
  h2_attempt_fields(head, base, 1, copy_->te_trailers_);
  size_t host = head.fields.find("host");
  std::string_view authority = host == HeaderList::npos ? std::string_view() : head.fields.value(host);
  bool tls = cs().pools[static_cast<size_t>(up_.endpoint)]->tls_options() != nullptr;
  bool end_now = copy_->body_.empty();
  int32_t id = mux_->open(this, head, tls ? "https" : "http", authority, end_now);
  head.fields.truncate(base);
  if (id < 0) {
    // The connection is going away: no other try for a copy.
    mux_->abandon(this, -1);
    h2_let_go();
    finish(MirrorResult::failed);
    return;
  }
  stream_ = id;
  up_.sent = true;
  if (!end_now) {
    mux_->send_data(id, copy_->body_);
    mux_->send_end(id, nullptr);
  }
  mux_->flush();
}

void Mirror::h2_connect_failed(int status) {
  h2_let_go();
  cs().stats->upstream_connect_failure.add();
  if (!is_local_failure(status)) up_.verdict(cs(), cluster(), false, now());
  finish(MirrorResult::failed);
}

void Mirror::h2_not_spoken() {
  // auto: the endpoint picked http/1.1; the copy goes over HTTP/1.1 (nothing was sent).
  h2_let_go();
  --up_.attempts;
  attempt(false);
}

void Mirror::h2_head(ResponseHead& head, bool) {
  if (head.status >= 200 && status_ == 0) answered(head.status);
}

void Mirror::h2_data(std::string_view piece) {
  if (mux_) mux_->consume(stream_, piece.size());
}

void Mirror::h2_end(HeaderList&) {
  h2_let_go();  // the connection forgot the stream
  if (status_)
    finish(MirrorResult::sent);
  else
    fail(&ClusterStats::upstream_reset);
}

void Mirror::h2_reset(uint32_t, bool unprocessed) {
  h2_let_go();
  if (status_)
    finish(MirrorResult::sent);
  else if (unprocessed)
    finish(MirrorResult::failed);  // refused unprocessed: not the endpoint's failure, and not resent
  else
    fail(&ClusterStats::upstream_reset);
}

void Mirror::h2_gone() {
  h2_let_go();
  finish(status_ ? MirrorResult::sent : MirrorResult::failed);
}

// The end

void Mirror::fail(RelaxedCounter ClusterStats::*counter, bool blame) {
  (cs().stats.get()->*counter).add();
  if (blame)
    up_.verdict(cs(), cluster(), false, now());
  else
    up_.probe.release();
  finish(MirrorResult::failed);
}

void Mirror::on_timer(uv_timer_t* t) {
  auto* m = static_cast<Mirror*>(t->data);
  if (m->done_) return;
  if (!m->begun_) {
    m->begun_ = true;
    m->begin();
    return;
  }
  if (m->status_ != 0) {
    m->finish(MirrorResult::sent);  // answered; the rest of the answer is not waited for
    return;
  }
  // The cluster's timeout: the endpoint is blamed only when it had the copy.
  m->fail(&ClusterStats::upstream_timeout, m->up_.sent);
}

void Mirror::finish(MirrorResult result, bool reusable) {
  if (done_) return;
  done_ = true;
  copy_->count(result);
  copy_->counted_ = true;
  if (mux_) {
    mux_->abandon(this, stream_);
    h2_let_go();
  }
  up_.give_back_connection(reusable);
  up_.release_holds();
  uv_timer_stop(&timer_);
  uv_close(reinterpret_cast<uv_handle_t*>(&timer_), [](uv_handle_t* h) { delete static_cast<Mirror*>(h->data); });
}

}  // namespace pilotfish
