#include "upstream/upstream_pool.h"

#include <poll.h>

#include <algorithm>

#include "log/logger.h"
#include "net/descriptor_budget.h"

namespace pilotfish {

const char* upstream_error_text(int status) {
  if (status == kUpstreamTlsFailed) return "TLS handshake failed";
  return uv_strerror(status);
}

TlsOptions upstream_tls_options(const Cluster& cluster, bool http) {
  TlsOptions o;
  o.server = false;
  o.http = http;
  o.expected_peer = cluster.mtls.server_identity;
  o.sni = cluster.mtls.sni.empty() ? cluster.name : cluster.mtls.sni;
  return o;
}

UpstreamConnection::UpstreamConnection(UpstreamHost& host, EndpointPool* pool, UpstreamHandler* handler,
                                       std::shared_ptr<ClusterStats> stats, std::shared_ptr<ClusterShared> shared)
    : Stream(host), host_(host), pool_(pool), handler_(handler), stats_(std::move(stats)), shared_(std::move(shared)) {
  requests_started_ = 1;
  if (stats_) stats_->upstream_connections.add(1);
}

void UpstreamConnection::end_pending() {
  if (!pending_counted_) return;
  pending_counted_ = false;
  ClusterShared::give_back(shared_->pending);
}

void UpstreamConnection::set_tls(TlsOptions options, std::string label) {
  tls_options_ = std::make_unique<TlsOptions>(std::move(options));
  tls_label_ = std::move(label);
}

void UpstreamConnection::connect(const sockaddr* address, uint64_t timeout_ms) {
  connecting_ = true;
  connect_req_.data = this;
  // A connection pilotfish has no descriptor for fails here, as the kernel's EMFILE would:
  // a local failure, which no endpoint is blamed for.
  int rc = UV_EMFILE;
  DescriptorBudget& budget = DescriptorBudget::process();
  // Idle pooled connections give way to one that a request needs now.
  if (budget.try_take() || (host_.close_idle_upstream() && budget.try_take())) {
    hold_descriptor(Descriptor::upstream);
    rc = uv_tcp_connect(&connect_req_, tcp(), address, connect_cb);
  } else {
    DescriptorBudget::process().count_refused_connect();
  }
  if (rc != 0) {
    deferred_failure_ = rc;
    start_timer(0);
    return;
  }
  start_timer(timeout_ms);
}

void UpstreamConnection::connect_cb(uv_connect_t* req, int status) {
  auto* self = static_cast<UpstreamConnection*>(req->data);
  self->connecting_ = false;
  if (status == UV_ECANCELED || self->closing()) {
    self->end_pending();
    return;
  }
  if (status != 0) {
    self->stop_timer();
    self->connect_failed(status);
    return;
  }
  uv_tcp_nodelay(self->tcp(), 1);
  if (self->tls_options_) {
    // Still connecting until the handshake is done; the connect timer keeps running.
    TlsMaterialPtr material = self->host_.tls();
    if (!material) {
      log_warn(self->tls_label_ + ": no identity to originate mTLS with");
      self->stop_timer();
      self->connect_failed(kUpstreamTlsFailed);
      return;
    }
    self->connecting_ = true;
    self->start_read();
    self->start_tls(std::move(material), *self->tls_options_);
    return;
  }
  self->stop_timer();
  self->ready();
}

void UpstreamConnection::ready() {
  connecting_ = false;
  end_pending();
  connected_ = true;
  start_read();
  if (handler_) handler_->on_upstream_connected(*this);
}

void UpstreamConnection::connect_failed(int status) {
  connecting_ = false;
  end_pending();
  UpstreamHandler* h = handler_;
  handler_ = nullptr;
  close();
  if (h) h->on_upstream_connect_failed(*this, status);
}

void UpstreamConnection::on_tls_established() {
  stop_timer();
  ready();
}

void UpstreamConnection::on_tls_failed() {
  stop_timer();
  log_warn(tls_label_ + ": mTLS handshake failed: " + tls()->error());
  connect_failed(kUpstreamTlsFailed);
}

void UpstreamConnection::park(uint64_t idle_timeout_ms) {
  handler_ = nullptr;
  start_read();
  if (idle_limit_ms_ && idle_limit_ms_ < idle_timeout_ms) idle_timeout_ms = idle_limit_ms_;
  set_deadline(idle_timeout_ms);
}

void UpstreamConnection::on_data(char* data, size_t length) {
  if (handler_) {
    handler_->on_upstream_data(*this, data, length);
    return;
  }
  close();  // bytes nobody asked for: this connection cannot be trusted with another request
}

void UpstreamConnection::on_read_end(int status) {
  if (tls() && tls()->refused_after_handshake()) {
    // TLS 1.3: the server refused our certificate once our side of the handshake was done.
    log_warn(tls_label_ + ": mTLS handshake failed: " + tls()->error());
    status = kUpstreamTlsFailed;
  }
  if (half_close_ && status == UV_EOF && handler_) {
    handler_->on_upstream_end(*this, status);
    return;
  }
  UpstreamHandler* h = handler_;
  handler_ = nullptr;
  close();
  if (h) h->on_upstream_end(*this, status);
}

void UpstreamConnection::on_write_done(int status) {
  if (status < 0) {
    UpstreamHandler* h = handler_;
    handler_ = nullptr;
    close();
    if (h) h->on_upstream_end(*this, status);
    return;
  }
  if (handler_ && pending_bytes() < kLowWater) handler_->on_upstream_drained(*this);
}

bool UpstreamConnection::connect_outcome_waiting() {
  uv_os_fd_t fd;
  if (uv_fileno(reinterpret_cast<uv_handle_t*>(tcp()), &fd) != 0) return false;
  pollfd p{fd, POLLOUT, 0};
  return ::poll(&p, 1, 0) == 1;  // connected (writable), or failed (POLLERR, POLLHUP)
}

void UpstreamConnection::on_timeout() {
  if (deferred_failure_) {
    connect_failed(deferred_failure_);
    return;
  }
  if (connecting_) {
    if (!tls() && !deadline_rechecked_ && connect_outcome_waiting()) {
      // The loop was busy past the deadline (timers run before the poll), and the connect's
      // outcome already waits in the poll this turn has not reached: take it on the next turn
      // rather than blame the endpoint for pilotfish's own delay.
      deadline_rechecked_ = true;
      start_timer(1);
      return;
    }
    if (tls()) {
      tls()->abandon("handshake not complete within connect_timeout");
      log_warn(tls_label_ + ": mTLS handshake not complete within connect_timeout");
    }
    connect_failed(UV_ETIMEDOUT);
    return;
  }
  if (!handler_) {
    close();  // idle too long in the pool
    return;
  }
  handler_->on_upstream_timeout(*this);
}

void UpstreamConnection::on_close() {
  if (handler_) {
    // Closed by someone else while lent (a worker shutting down closes every stream).
    UpstreamHandler* h = handler_;
    handler_ = nullptr;
    h->on_upstream_closed(*this);
  }
  if (stats_) stats_->upstream_connections.add(-1);
  end_pending();
  if (shared_) ClusterShared::give_back(shared_->connections);
  if (pool_) pool_->forget(this);
  pool_ = nullptr;
}

UpstreamLease& UpstreamLease::operator=(UpstreamLease&& other) noexcept {
  if (this != &other) {
    end(false);
    c_ = other.c_;
    other.c_ = nullptr;
  }
  return *this;
}

void UpstreamLease::end(bool reusable) {
  if (!c_) return;
  UpstreamConnection* c = c_;
  c_ = nullptr;
  c->detach();
  if (reusable && c->pool() && c->pending_bytes() == 0)
    c->pool()->release(c);
  else
    c->close();
}

void UpstreamLease::end_after_flush() {
  if (!c_) return;
  UpstreamConnection* c = c_;
  c_ = nullptr;
  c->detach();
  c->close_after_flush();
}

EndpointPool::EndpointPool(UpstreamHost& host, const SocketAddress& address, const Cluster& cluster,
                           std::shared_ptr<ClusterStats> stats, std::shared_ptr<ClusterShared> shared)
    : host_(host), address_(address), stats_(std::move(stats)), shared_(std::move(shared)) {
  configure(cluster);
  label_ = "cluster " + cluster.name + " endpoint " + address.text;
  protocol_ = cluster.protocol;
  if (cluster.mtls.enabled) {
    tls_options_ = std::make_unique<TlsOptions>(upstream_tls_options(cluster, /*http=*/true));
    tls_options_->sessions = std::make_shared<TlsSessionSlot>();
    if (protocol_ != UpstreamProtocol::http1) {
      h2_tls_options_ = std::make_unique<TlsOptions>(
          upstream_tls_options(cluster, /*http=*/protocol_ == UpstreamProtocol::automatic));
      h2_tls_options_->h2 = true;
      h2_tls_options_->sessions = tls_options_->sessions;
    }
  }
}

void EndpointPool::forget_shared(SharedConnection* c) {
  for (size_t i = 0; i < multiplexed_.size(); ++i)
    if (multiplexed_[i] == c) {
      multiplexed_[i] = multiplexed_.back();
      multiplexed_.pop_back();
      return;
    }
}

UpstreamLease EndpointPool::connect_shared(UpstreamHandler* handler, BreakerLimit* overflow) {
  return open_connection(handler, overflow, h2_tls_options_.get());
}

EndpointPool::~EndpointPool() {
  // Busy connections belong to borrowers that hold this pool through their snapshot, so only
  // idle or closing ones can be left here; none may keep a pointer to a dead pool.
  for (UpstreamConnection* c = all_; c;) {
    UpstreamConnection* next = c->pool_next_;
    c->pool_prev_ = c->pool_next_ = nullptr;
    c->detach_pool();
    c = next;
  }
  all_ = nullptr;
  std::vector<UpstreamConnection*> idle;
  idle.swap(idle_);
  for (auto* c : idle) c->close();
}

void EndpointPool::configure(const Cluster& cluster) {
  connect_timeout_ms_ = static_cast<uint64_t>(cluster.connect_timeout.count());
  idle_timeout_ms_ = static_cast<uint64_t>(cluster.idle_timeout.count());
  limits_ = cluster.circuit_breaker;
}

void EndpointPool::retire() {
  retired_ = true;
  std::vector<UpstreamConnection*> idle;
  idle.swap(idle_);
  for (auto* c : idle) c->close();
  std::vector<SharedConnection*> shared = multiplexed_;
  for (auto* c : shared) c->retire();
}

UpstreamLease EndpointPool::acquire(UpstreamHandler* handler, bool* reused, BreakerLimit* overflow, bool fresh) {
  while (!fresh && !idle_.empty()) {
    UpstreamConnection* c = idle_.back();
    idle_.pop_back();
    if (c->closing()) continue;
    c->clear_deadline();
    c->attach(handler);
    *reused = true;
    return UpstreamLease(c);
  }
  *reused = false;
  return open_connection(handler, overflow, tls_options_.get());
}

UpstreamLease EndpointPool::open_connection(UpstreamHandler* handler, BreakerLimit* overflow, const TlsOptions* tls) {
  if (shared_) {
    if (!ClusterShared::try_take(shared_->connections, limits_.max_connections)) {
      *overflow = BreakerLimit::connections;
      return {};
    }
    if (!ClusterShared::try_take(shared_->pending, limits_.max_pending_requests)) {
      ClusterShared::give_back(shared_->connections);
      *overflow = BreakerLimit::pending_requests;
      return {};
    }
  }
  auto* c = new UpstreamConnection(host_, this, handler, stats_, shared_);
  if (shared_) c->count_pending();
  if (tls) c->set_tls(*tls, label_);
  c->pool_next_ = all_;
  if (all_) all_->pool_prev_ = c;
  all_ = c;
  ++open_;
  c->connect(address_.sa(), connect_timeout_ms_);
  return UpstreamLease(c);
}

void EndpointPool::release(UpstreamConnection* c) {
  if (c->closing()) return;
  if (retired_ || host_.winding_down()) {
    c->close();
    return;
  }
  c->park(idle_timeout_ms_ ? idle_timeout_ms_ : 1);
  idle_.push_back(c);
}

bool EndpointPool::close_oldest_idle() {
  // idle_ is used as a stack (the most recently used on top), so the oldest is at the front.
  while (!idle_.empty()) {
    UpstreamConnection* c = idle_.front();
    idle_.erase(idle_.begin());
    if (c->closing()) continue;
    c->close();
    return true;
  }
  return false;
}

void EndpointPool::forget(UpstreamConnection* c) {
  auto it = std::find(idle_.begin(), idle_.end(), c);
  if (it != idle_.end()) idle_.erase(it);
  if (c->pool_prev_) c->pool_prev_->pool_next_ = c->pool_next_;
  else if (all_ == c) all_ = c->pool_next_;
  if (c->pool_next_) c->pool_next_->pool_prev_ = c->pool_prev_;
  c->pool_prev_ = c->pool_next_ = nullptr;
  if (open_) --open_;
}

}  // namespace pilotfish
