#pragma once
// Upstream connections and the per-worker, per-endpoint pool that keeps them alive between
// requests. An UpstreamConnection is a byte stream: the borrower (an HTTP session or a TCP
// proxy) parses what comes back, so the pool knows nothing about HTTP.

#include <uv.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "metrics/stats.h"
#include "net/event_loop.h"
#include "net/stream.h"
#include "pilotfish/policy.h"
#include "tls/tls.h"
#include "upstream/resilience.h"

namespace pilotfish {

class EndpointPool;

// What upstream connections and pools need of the loop they run on. A worker is one; a test
// can be one with a bare loop.
class UpstreamHost : public EventLoop {
 public:
  using EventLoop::EventLoop;
  // The TLS material connections originate mTLS with (null without an identity).
  virtual const TlsMaterialPtr& tls() const = 0;
  // Closes one idle pooled connection of this loop to free its descriptor; false if none is.
  virtual bool close_idle_upstream() = 0;
  // The loop is ending: a connection given back is closed, not kept.
  virtual bool winding_down() const = 0;
};

// on_upstream_connect_failed's status when TCP connected but the TLS handshake failed (the
// server's certificate or identity was refused, or it refused ours).
constexpr int kUpstreamTlsFailed = -200001;
// uv_strerror, and a word for kUpstreamTlsFailed.
const char* upstream_error_text(int status);

class UpstreamConnection;

// What a borrower of an upstream connection is told, and by which connection. A connection
// calls only the borrower it is lent to (the holder of its UpstreamLease), and only while it is
// lent: a borrower checks that the caller is the connection it holds (debug builds assert it).
// on_upstream_connect_failed and on_upstream_end mean the connection has closed itself: the
// borrower lets go of its lease (UpstreamLease::lost) without touching it again.
class UpstreamHandler {
 public:
  virtual ~UpstreamHandler() = default;
  virtual void on_upstream_connected(UpstreamConnection& from) = 0;
  virtual void on_upstream_connect_failed(UpstreamConnection& from, int status) = 0;
  virtual void on_upstream_data(UpstreamConnection& from, char* data, size_t length) = 0;
  virtual void on_upstream_end(UpstreamConnection& from, int status) = 0;  // UV_EOF or an error
  virtual void on_upstream_drained(UpstreamConnection& from) = 0;  // write queue below low water
  // The deadline its holder set on the connection (Stream::set_deadline) passed.
  virtual void on_upstream_timeout(UpstreamConnection&) {}
  // The connection was closed by someone else while lent (the worker shutting down): the
  // lease is gone (UpstreamLease::lost), nothing more will be said.
  virtual void on_upstream_closed(UpstreamConnection&) {}
};

// A connection that carries many requests at once (an HTTP/2 client connection,
// proxy/http2_upstream.h), known to its endpoint's pool, which does not own it.
class SharedConnection {
 public:
  virtual ~SharedConnection() = default;
  // May take another request now (or once connected).
  virtual bool accepting() const = 0;
  // The endpoint left the policy: take nothing new, close once the requests in flight end.
  virtual void retire() = 0;
};

// A borrower's hold on one upstream connection: the only way to reach a connection that is
// lent. Move-only; whatever way the holder goes (end, reassignment, destruction), the connection
// is detached from it, so no connection ever calls a borrower that is gone. A connection from a
// pool goes back to it when ended reusable; any other ends closed.
class UpstreamLease {
 public:
  UpstreamLease() = default;
  // Takes a connection just made for one borrower (a byte tunnel's own, outside any pool).
  explicit UpstreamLease(UpstreamConnection* fresh) : c_(fresh) {}
  ~UpstreamLease() { end(false); }
  UpstreamLease(UpstreamLease&& other) noexcept : c_(other.c_) { other.c_ = nullptr; }
  UpstreamLease& operator=(UpstreamLease&& other) noexcept;
  UpstreamLease(const UpstreamLease&) = delete;
  UpstreamLease& operator=(const UpstreamLease&) = delete;

  explicit operator bool() const { return c_ != nullptr; }
  UpstreamConnection* operator->() const { return c_; }
  UpstreamConnection* get() const { return c_; }
  // Whether `caller` is the connection held here.
  bool holds(const UpstreamConnection& caller) const { return c_ == &caller; }
  // Done with it: back to its pool for another request when `reusable` and nothing of ours is
  // left unwritten, else closed.
  void end(bool reusable);
  // Done with it once what is queued has gone out (a tunnel's last bytes).
  void end_after_flush();
  // The connection closed itself and said so (connect failed, end): forgotten, not touched.
  void lost() { c_ = nullptr; }

 private:
  UpstreamConnection* c_ = nullptr;
};

class UpstreamConnection final : public Stream {
 public:
  // `stats` (may be null) counts this connection in upstream_connections while it is open;
  // `shared` (may be null) in the cluster-wide count the max_connections breaker reads.
  UpstreamConnection(UpstreamHost& host, EndpointPool* pool, UpstreamHandler* handler, std::shared_ptr<ClusterStats> stats,
                     std::shared_ptr<ClusterShared> shared = nullptr);

  bool connected() const { return connected_; }
  bool reused() const { return requests_started_ > 1; }
  EndpointPool* pool() const { return pool_; }
  void detach_pool() { pool_ = nullptr; }
  void attach(UpstreamHandler* handler) { handler_ = handler; ++requests_started_; }
  void detach() { handler_ = nullptr; }
  bool lent_to(const UpstreamHandler* handler) const { return handler_ == handler; }
  // A byte tunnel wants the peer's FIN passed on while the other direction still flows; an
  // HTTP exchange closes on EOF.
  void set_half_close(bool on) { half_close_ = on; }

  // Originate TLS once connected; the connection counts as connected only after the handshake,
  // which the connect timeout also bounds. `label` names the connection in log lines.
  void set_tls(TlsOptions options, std::string label);
  // A connect that cannot start (no descriptor, no local port) fails on the next turn of the
  // loop, never inside this call: the borrower holds its lease before any callback.
  void connect(const sockaddr* address, uint64_t timeout_ms);
  // Counted in the cluster's pending requests until the connect completes or fails.
  void count_pending() { pending_counted_ = true; }
  // The upstream said `Keep-Alive: timeout=N`: never kept idle for that long.
  void set_idle_limit(uint64_t ms) { idle_limit_ms_ = ms; }
  // Parks the connection in its pool: reads continue so that a close by the upstream is seen.
  void park(uint64_t idle_timeout_ms);

 protected:
  void on_data(char* data, size_t length) override;
  void on_read_end(int status) override;
  void on_write_done(int status) override;
  void on_timeout() override;
  void on_close() override;
  void on_tls_established() override;
  void on_tls_failed() override;

 private:
  static void connect_cb(uv_connect_t* req, int status);
  void ready();
  void connect_failed(int status);
  UpstreamHost& host_;
  std::unique_ptr<TlsOptions> tls_options_;
  std::string tls_label_;
  EndpointPool* pool_;
  UpstreamHandler* handler_;
  uv_connect_t connect_req_;
  bool connected_ = false;
  bool connecting_ = false;
  bool half_close_ = false;
  uint64_t requests_started_ = 0;
  std::shared_ptr<ClusterStats> stats_;
  std::shared_ptr<ClusterShared> shared_;
  bool pending_counted_ = false;
  int deferred_failure_ = 0;    // a connect that could not start, reported by the timer
  bool deadline_rechecked_ = false;  // connect_timeout passed once with the outcome waiting
  bool connect_outcome_waiting();
  uint64_t idle_limit_ms_ = 0;  // 0: none
  void end_pending();
  // Every connection of a pool, idle or busy, so that a pool that goes away can let go of all.
  friend class EndpointPool;
  UpstreamConnection* pool_prev_ = nullptr;
  UpstreamConnection* pool_next_ = nullptr;
};

class EndpointPool {
 public:
  EndpointPool(UpstreamHost& host, const SocketAddress& address, const Cluster& cluster,
               std::shared_ptr<ClusterStats> stats, std::shared_ptr<ClusterShared> shared);
  // With cluster mtls: how to originate TLS to this endpoint (null without); sessions resume.
  const TlsOptions* tls_options() const { return tls_options_.get(); }
  const std::string& label() const { return label_; }
  ~EndpointPool();
  EndpointPool(const EndpointPool&) = delete;
  EndpointPool& operator=(const EndpointPool&) = delete;

  // An idle pooled connection if there is one (most recently used first, as it is the most
  // likely to still be open), else a new connection that is connecting; or null when the
  // cluster's max_connections or max_pending_requests breaker is full (*overflow says which).
  // `fresh`: a new connection even if an idle one is pooled. No callback runs before this
  // returns.
  UpstreamLease acquire(UpstreamHandler* handler, bool* reused, BreakerLimit* overflow, bool fresh = false);
  // The borrower is done and the connection may serve another request.
  void release(UpstreamConnection* connection);
  // Called by a closing connection.
  void forget(UpstreamConnection* connection);
  // A reload: the cluster's timeouts may have changed.
  void configure(const Cluster& cluster);
  // The endpoint left the policy: idle connections close now, busy ones when released.
  void retire();

  const SocketAddress& address() const { return address_; }
  size_t open_connections() const { return open_; }

  // HTTP/2 (clusters[].protocol http2 or auto): the shared connections to this endpoint, and
  // a new connection for one, offering h2 in ALPN with mtls.
  UpstreamProtocol protocol() const { return protocol_; }
  const std::vector<SharedConnection*>& shared_connections() const { return multiplexed_; }
  void add_shared(SharedConnection* c) { multiplexed_.push_back(c); }
  void forget_shared(SharedConnection* c);
  UpstreamLease connect_shared(UpstreamHandler* handler, BreakerLimit* overflow);
  // auto: what the endpoint picked in ALPN last time (HTTP/1.1 requests then go on HTTP/1.1).
  enum class H2 { unknown, yes, no };
  H2 speaks_h2() const { return speaks_h2_; }
  // A request to this endpoint goes as an HTTP/2 stream: protocol http2, or auto unless the
  // endpoint picked http/1.1 last time.
  bool prefers_h2() const {
    return protocol_ == UpstreamProtocol::http2 || (protocol_ == UpstreamProtocol::automatic && speaks_h2_ != H2::no);
  }
  void set_speaks_h2(bool yes) { speaks_h2_ = yes ? H2::yes : H2::no; }
  bool retired() const { return retired_; }
  uint64_t idle_timeout_ms() const { return idle_timeout_ms_; }
  size_t idle_connections() const { return idle_.size(); }
  // Closes the connection idle longest, to give its descriptor to a new one; false if none.
  bool close_oldest_idle();

 private:
  UpstreamHost& host_;
  SocketAddress address_;
  uint64_t connect_timeout_ms_;
  uint64_t idle_timeout_ms_;
  CircuitBreakerLimits limits_;
  std::vector<UpstreamConnection*> idle_;
  UpstreamConnection* all_ = nullptr;  // intrusive list of every open connection
  size_t open_ = 0;
  bool retired_ = false;
  UpstreamProtocol protocol_ = UpstreamProtocol::http1;
  std::unique_ptr<TlsOptions> h2_tls_options_;  // ALPN h2 (http2) or h2 then http/1.1 (auto)
  std::vector<SharedConnection*> multiplexed_;
  H2 speaks_h2_ = H2::unknown;
  UpstreamLease open_connection(UpstreamHandler* handler, BreakerLimit* overflow, const TlsOptions* tls);
  std::shared_ptr<ClusterStats> stats_;
  std::shared_ptr<ClusterShared> shared_;
  std::unique_ptr<TlsOptions> tls_options_;
  std::string label_;  // "cluster NAME endpoint ADDRESS"
};

// How a connection to an endpoint of `cluster` originates TLS (the cluster's mtls must be on).
TlsOptions upstream_tls_options(const Cluster& cluster, bool http);

}  // namespace pilotfish
