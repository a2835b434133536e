#include "proxy/tcp_proxy.h"

#include <cassert>

#include "log/logger.h"
#include "net/descriptor_budget.h"
#include "proxy/worker_context.h"

namespace pilotfish {

namespace {
constexpr uint64_t kTcpIdleMs = 3600 * 1000;
constexpr uint64_t kDirectConnectTimeoutMs = 5000;
}

TcpProxySession::TcpProxySession(WorkerContext& worker, std::shared_ptr<ListenerSlot> slot, const InterceptTarget& target)
    : Stream(worker),
      worker_(worker),
      slot_(slot),
      snap_(worker.snapshot()),
      listener_(snap_->policy->listeners[slot->index]),
      conn_stats_(snap_->listener_stats[slot->index]) {
  conn_stats_->connections.add(1);
  conn_stats_->connections_total.add();
  cluster_index_ = listener_.routes.empty() ? 0 : listener_.routes.front().cluster_index;
  if (target.kind == InterceptTarget::Kind::cluster) {
    for (size_t i = 0; i < snap_->policy->clusters.size(); ++i)
      if (snap_->policy->clusters[i].name == target.cluster) cluster_index_ = i;
  } else if (target.kind == InterceptTarget::Kind::address) {
    direct_ = true;
    direct_address_ = target.address;
  }
  worker.add_downstream();
}

void TcpProxySession::start_adopted(const std::string& first_bytes) {
  uv_tcp_nodelay(tcp(), 1);
  pending_ = first_bytes;
  start_read();
  if (tls() && tls()->established()) {
    on_tls_established();  // the allow list, then the upstream
    return;
  }
  set_deadline(kTcpIdleMs);
  connect();
}

void TcpProxySession::start() {
  uv_tcp_nodelay(tcp(), 1);
  if (listener_.mtls) {
    if (!accept_tls(worker_.tls(), /*http=*/false)) {
      close();
      return;
    }
    // The upstream is connected only for a peer that proved an allowed identity, and the
    // handshake is bounded like an HTTP request head.
    handshaking_ = true;
    set_deadline(static_cast<uint64_t>(listener_.header_timeout.count()));
    start_read();
    return;
  }
  set_deadline(kTcpIdleMs);
  start_read();
  connect();
}

void TcpProxySession::on_tls_established() {
  handshaking_ = false;
  if (!identity_allowed(listener_.allow, tls()->peer_id())) {
    conn_stats_->authz_denied.add();
    log_debug("listener " + listener_.name + ": " + tls()->peer_id() + " is not in its allow list; connection closed");
    close();
    return;
  }
  set_deadline(kTcpIdleMs);
  connect();
}

// A reload applies the listener's mtls and allow list to the tunnels already open: one that
// would not be let in now is closed (a removed listener's tunnels run until they end).
void TcpProxySession::on_policy_changed() {
  if (handshaking_ || closing() || slot_->index == SIZE_MAX) return;
  const SnapshotPtr& now = worker_.snapshot();
  const Listener& l = now->policy->listeners[slot_->index];
  if (!l.mtls) return;
  if (tls() && tls()->established() && identity_allowed(l.allow, tls()->peer_id())) return;
  now->listener_stats[slot_->index]->authz_denied.add();
  log_info("listener " + l.name + ": an open tunnel from " +
           (tls() && tls()->established() ? tls()->peer_id() : std::string("a peer without mTLS")) +
           " is no longer allowed; closed");
  close();
}

void TcpProxySession::on_tls_failed() {
  log_debug("listener " + listener_.name + ": mTLS handshake failed: " + tls()->error());
  close();
}

void TcpProxySession::connect() {
  if (direct_) {
    // Passed through to the original destination, or to the local app: plain TCP, no cluster.
    ++attempts_;
    upstream_ = UpstreamLease(new UpstreamConnection(worker_, nullptr, this, nullptr, nullptr));
    upstream_->set_half_close(true);
    upstream_->connect(direct_address_.sa(), kDirectConnectTimeoutMs);
    return;
  }
  ClusterState& cs = *snap_->clusters[cluster_index_];
  const Cluster& c = snap_->policy->clusters[cluster_index_];
  uint64_t now = uv_now(worker_.loop());
  int previous = endpoint_;
  endpoint_ = cs.balancer->pick([&](size_t i) { return cs.health[i]->may_try(now); }, previous);
  // An ejected endpoint whose time is up takes one connection as its probe.
  probe_.release();
  if (endpoint_ >= 0 && cs.health[static_cast<size_t>(endpoint_)]->needs_probe() &&
      !probe_.claim(cs.health[static_cast<size_t>(endpoint_)]))
    endpoint_ = -1;
  if (endpoint_ < 0) {
    close();
    return;
  }
  if (!ClusterShared::try_take(cs.shared->connections, c.circuit_breaker.max_connections)) {
    cs.stats->breaker_overflow[static_cast<size_t>(BreakerLimit::connections)].add();
    probe_.release();
    close();
    return;
  }
  ++attempts_;
  // A byte stream is never pooled: each client gets its own upstream connection.
  upstream_ = UpstreamLease(new UpstreamConnection(worker_, nullptr, this, cs.stats, cs.shared));
  upstream_->set_half_close(true);
  const EndpointPool& pool = *cs.pools[static_cast<size_t>(endpoint_)];
  if (pool.tls_options()) {
    TlsOptions options = *pool.tls_options();  // its sessions resume here too
    options.http = false;
    upstream_->set_tls(std::move(options), pool.label());
  }
  upstream_->connect(pool.address().sa(),
                     static_cast<uint64_t>(c.connect_timeout.count()));
}

void TcpProxySession::on_upstream_connected(UpstreamConnection& from) {
  assert(upstream_.holds(from));
  (void)from;
  if (!direct_) {
    ClusterState& cs = *snap_->clusters[cluster_index_];
    record_endpoint_success(*cs.health[static_cast<size_t>(endpoint_)], *cs.shared);
  }
  probe_.settle();
  upstream_->append(pending_);
  pending_.clear();
  pending_.shrink_to_fit();
  upstream_->flush();
  if (downstream_eof_) upstream_->shutdown_after_flush();
  if (paused_for_upstream_ && upstream_->pending_bytes() < kLowWater) {
    paused_for_upstream_ = false;
    start_read();
  }
}

void TcpProxySession::on_upstream_connect_failed(UpstreamConnection& from, int status) {
  assert(upstream_.holds(from));
  (void)from;
  upstream_.lost();
  if (direct_) {
    log_debug("listener " + listener_.name + ": connect to " + direct_address_.text + " failed: " +
              upstream_error_text(status));
    close();
    return;
  }
  const Cluster& c = snap_->policy->clusters[cluster_index_];
  ClusterState& cs = *snap_->clusters[cluster_index_];
  cs.stats->upstream_connect_failure.add();
  if (is_local_failure(status)) {
    // No descriptor, memory or local port here: nothing to hold against the endpoint, and no
    // other endpoint would fare better.
    probe_.release();
    log_debug("listener " + listener_.name + ": no connection to cluster " + c.name + ": " + upstream_error_text(status));
    close();
    return;
  }
  if (record_endpoint_failure(*cs.health[static_cast<size_t>(endpoint_)], *cs.shared, c.outlier_detection,
                              cs.pools.size(), uv_now(worker_.loop())))
    cs.stats->outlier_ejections.add();
  probe_.settle();
  log_debug("listener " + listener_.name + ": connect to cluster " + c.name + " failed: " + upstream_error_text(status));
  if ((c.retry.on & kRetryConnectFailure) && attempts_ <= c.retry.retries) {
    connect();
    return;
  }
  close();
}

void TcpProxySession::on_data(char* data, size_t length) {
  set_deadline(kTcpIdleMs);
  if (upstream_ && upstream_->connected()) {
    upstream_->append({data, length});
    upstream_->flush();
    if (upstream_->pending_bytes() > kHighWater) {
      paused_for_upstream_ = true;
      stop_read();
    }
  } else {
    pending_.append(data, length);
    if (pending_.size() > kHighWater) {
      paused_for_upstream_ = true;
      stop_read();
    }
  }
}

void TcpProxySession::on_read_end(int status) {
  if (status != UV_EOF) {
    close();
    return;
  }
  downstream_eof_ = true;
  if (upstream_ && upstream_->connected()) upstream_->shutdown_after_flush();
  maybe_close();
}

void TcpProxySession::on_upstream_data(UpstreamConnection& from, char* data, size_t length) {
  assert(upstream_.holds(from));
  (void)from;
  set_deadline(kTcpIdleMs);
  append({data, length});
  if (flush() != 0) {
    close();
    return;
  }
  if (pending_bytes() > kHighWater) {
    paused_for_downstream_ = true;
    upstream_->stop_read();
  }
}

void TcpProxySession::on_upstream_end(UpstreamConnection& from, int status) {
  assert(upstream_.holds(from));
  (void)from;
  if (status != UV_EOF) {
    upstream_.lost();  // it closes itself
    close();
    return;
  }
  upstream_eof_ = true;
  shutdown_after_flush();
  maybe_close();
}

void TcpProxySession::maybe_close() {
  if (downstream_eof_ && upstream_eof_) {
    // Both directions are done; let the last bytes out first.
    upstream_.end_after_flush();
    close_after_flush();
  }
}

void TcpProxySession::on_write_done(int status) {
  if (status < 0) {
    close();
    return;
  }
  if (paused_for_downstream_ && pending_bytes() < kLowWater && upstream_) {
    paused_for_downstream_ = false;
    upstream_->start_read();
  }
}

void TcpProxySession::on_upstream_drained(UpstreamConnection& from) {
  assert(upstream_.holds(from));
  (void)from;
  if (paused_for_upstream_ && upstream_ && upstream_->pending_bytes() < kLowWater) {
    paused_for_upstream_ = false;
    if (!downstream_eof_) start_read();
  }
}

void TcpProxySession::on_timeout() {
  if (handshaking_ && tls()) tls()->abandon("handshake not complete within header_timeout");
  close();
}

void TcpProxySession::on_close() {
  upstream_.end(false);
  probe_.release();  // left before the probe had a verdict: the next one probes
  conn_stats_->connections.add(-1);
  worker_.remove_downstream();
}

}  // namespace pilotfish
