#pragma once
// What a session sees of the worker it runs on. A worker (server/worker.h) is one loop on one
// thread; it builds a WorkerSnapshot from each policy it is handed and keeps the pieces a request
// uses (its random numbers, JWT cache, access-log buffer, drain state). Sessions (HTTP, TCP,
// interception) take all of it through a WorkerContext and know nothing of threads, listeners
// or reloads, so the dependencies run one way: server -> proxy -> http, gateway, upstream -> net.

#include <uv.h>

#include <memory>
#include <string>
#include <vector>

#include "gateway/jwt.h"
#include "gateway/rate_limit.h"
#include "log/access_log.h"
#include "metrics/stats.h"
#include "metrics/tap.h"
#include "pilotfish/balancer.h"
#include "pilotfish/policy.h"
#include "tls/tls.h"
#include "upstream/cluster_state.h"
#include "upstream/resilience.h"
#include "upstream/upstream_pool.h"

namespace pilotfish {

// An object a worker keeps for reuse (see WorkerContext::spare_streams).
class Spare {
 public:
  virtual ~Spare() = default;
};

// One listening address of a worker, stable across reloads while its address is unchanged.
struct ListenerSlot {
  size_t index = SIZE_MAX;  // its listener in the worker's current snapshot; SIZE_MAX: removed
  Protocol protocol = Protocol::http;
  Intercept intercept = Intercept::none;
};

// What the process holds besides the policy and hands to every worker: the TLS material new
// connections use (null without an identity) and the keys of each JWKS file the policy names,
// as last loaded.
struct WorkerKeys {
  TlsMaterialPtr tls;
  std::shared_ptr<const JwksSet> jwks;
};

// Everything a request needs from its policy, resolved for one worker. Immutable once built,
// except for the lazily filled route-stats table (touched only by the owning worker's thread).
struct WorkerSnapshot {
  PolicyPtr policy;
  std::vector<std::shared_ptr<ClusterState>> clusters;         // by cluster index
  std::vector<std::shared_ptr<ListenerStats>> listener_stats;  // by listener index
  // [listener][(route + 1) * (clusters + 1) + cluster]; route SIZE_MAX (none matched) is row 0,
  // cluster SIZE_MAX (none) the last column.
  std::vector<std::vector<std::shared_ptr<RouteStats>>> route_stats;
  // Rate limiters, shared with every worker whose snapshot has the same limit (see
  // RateLimiterRegistry): per listener, and per route ([listener][route]); null where none.
  std::vector<std::shared_ptr<RateLimiter>> listener_limiters;
  std::vector<std::vector<std::shared_ptr<RateLimiter>>> route_limiters;
  WorkerKeys keys;

  // Requests of a listener's route (SIZE_MAX: none matched) answered for a cluster (SIZE_MAX:
  // for none), resolved once.
  RouteStats& route(size_t listener, size_t route, size_t cluster);
};
using SnapshotPtr = std::shared_ptr<WorkerSnapshot>;

class WorkerContext : public UpstreamHost {
 public:
  unsigned index() const { return index_; }
  // The policy new requests run under; a session holds the one its request started with.
  const SnapshotPtr& snapshot() const { return snapshot_; }
  const TlsMaterialPtr& tls() const override {
    static const TlsMaterialPtr none;
    return snapshot_ ? snapshot_->keys.tls : none;
  }
  bool draining() const { return draining_; }
  bool winding_down() const override { return draining_ && downstream_count_ == 0; }
  FastRandom& random() { return random_; }
  JwtCache& jwt_cache() { return jwt_cache_; }
  AccessLogBuffer& access_log() { return access_log_; }
  // The process's taps (GET /tap): non-null only while one is open, so a request checks once.
  TapHub* tapping() const { return tap_ && tap_->active() ? tap_ : nullptr; }
  // Client connections: counted while open; the last one to close may end a drain.
  size_t downstream_count() const { return downstream_count_; }
  void add_downstream() { ++downstream_count_; }
  virtual void remove_downstream() = 0;
  // HTTP/2 streams that ended, kept with their buffers for the next ones (proxy/http2_downstream).
  std::vector<std::unique_ptr<Spare>>& spare_streams() { return spare_streams_; }
  // HTTP/1.1 exchanges of connections gone idle, kept for the next requests (proxy/http_session).
  std::vector<std::unique_ptr<Spare>>& spare_exchanges() { return spare_exchanges_; }

 protected:
  WorkerContext(uv_loop_t* loop, unsigned index) : UpstreamHost(loop), index_(index) {}

  unsigned index_;
  SnapshotPtr snapshot_;
  bool draining_ = false;
  size_t downstream_count_ = 0;
  FastRandom random_;
  JwtCache jwt_cache_;
  AccessLogBuffer access_log_;
  TapHub* tap_ = nullptr;
  std::vector<std::unique_ptr<Spare>> spare_streams_;
  std::vector<std::unique_ptr<Spare>> spare_exchanges_;
};

}  // namespace pilotfish
