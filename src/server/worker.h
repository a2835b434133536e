#pragma once
// One worker: one thread, one uv_loop_t, its own listening sockets (SO_REUSEPORT), its own
// snapshot of the policy and its own upstream pools. Nothing on the request path is shared with
// another worker, so nothing on it takes a lock.
//
// A policy reload hands every worker a new Policy, and with it the keys the process holds (the
// identity's TLS material and the JWKS key sets); a rotation or a changed JWKS file hands new
// keys alone. Nothing a request reads comes from a process-wide global. The worker builds a WorkerSnapshot from it on
// its own thread: cluster states (balancer, pools) whose endpoints did not change are carried
// over, so pooled connections survive; listening sockets whose address did not change are kept,
// so their connections survive. A connection holds the snapshot its request started with and
// takes the worker's current one at the start of its next request.

#include <uv.h>

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "log/access_log.h"
#include "metrics/metrics.h"
#include "net/event_loop.h"
#include "pilotfish/balancer.h"
#include "pilotfish/policy.h"
#include "gateway/jwt.h"
#include "gateway/rate_limit.h"
#include "tls/tls.h"
#include "upstream/resilience.h"
#include "upstream/upstream_pool.h"

namespace pilotfish {

class Stream;

// Per-worker state of one cluster: its balancer and one connection pool per endpoint. Shared by
// every snapshot in which the cluster has the same endpoints, balancing policy and upstream TLS.
struct ClusterState {
  std::string name;
  std::vector<SocketAddress> endpoints;
  LbPolicy lb = LbPolicy::round_robin;
  ClusterMtls mtls;  // pooled connections were made with these TLS settings
  std::shared_ptr<ClusterStats> stats;
  std::shared_ptr<ClusterShared> shared;                // breaker counts, retry budget: all workers
  std::unique_ptr<Balancer> balancer;
  std::vector<std::shared_ptr<EndpointPool>> pools;     // by endpoint index
  std::vector<std::shared_ptr<EndpointHealth>> health;  // by endpoint index: all workers
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
  std::vector<std::vector<std::shared_ptr<RouteStats>>> route_stats;  // [listener][cluster + 1]
  // Rate limiters, shared with every worker whose snapshot has the same limit (see
  // RateLimiterRegistry): per listener, and per route ([listener][route]); null where none.
  std::vector<std::shared_ptr<RateLimiter>> listener_limiters;
  std::vector<std::vector<std::shared_ptr<RateLimiter>>> route_limiters;
  WorkerKeys keys;

  // Requests of a listener answered for a cluster (SIZE_MAX: for none), resolved once.
  RouteStats& route(size_t listener, size_t cluster);
};
using SnapshotPtr = std::shared_ptr<WorkerSnapshot>;

class Worker final : public UpstreamHost {
 public:
  // `listen_fds[i]` is this worker's bound socket for policy->listeners[i], kept under `keys[i]`.
  Worker(unsigned index, PolicyPtr policy, WorkerKeys keys, std::vector<std::string> listen_keys,
         std::vector<int> listen_fds, AccessLogWriter* access_log, MetricsRegistry& metrics, ResilienceRegistry& resilience);
  ~Worker();

  // Runs the loop on a new thread; `done` is called on that thread when the loop has ended.
  void start_with_callback(std::function<void()> done);
  void join();
  // Thread-safe: answer with `connection: close`, close idle connections; with
  // `stop_accepting`, also stop accepting (except on outbound intercept listeners). The loop
  // ends once accepting has stopped and no downstream connection is left.
  void begin_drain(bool stop_accepting);
  // Thread-safe: the drain delay is over; stop accepting (outbound intercept listeners go on).
  void stop_accepting() { post({Command::stop_accepting}); }
  // Thread-safe: close every connection now and end the loop.
  void force_stop();
  // Thread-safe: switch to `policy`. `keys[i]` names listener i's socket across reloads (its
  // address as written); `new_fds[i]` is a freshly bound socket for it, or -1 where the worker
  // keeps the socket it has under that key. `done` runs once the new snapshot is in place (on
  // the worker's thread, or at once if the worker has ended).
  void reload(PolicyPtr policy, WorkerKeys keys, std::vector<std::string> listen_keys, std::vector<int> new_fds,
              std::function<void()> done);
  // Thread-safe: new TLS material or JWKS keys, for the connections and requests that start next.
  void update_keys(WorkerKeys keys) { post({Command::keys, nullptr, std::move(keys)}); }

  unsigned index() const { return index_; }
  const SnapshotPtr& snapshot() const { return snapshot_; }
  // Closes one idle upstream connection of this worker (the oldest of the first pool that has
  // one), so that its descriptor can serve a connection a request needs; false if none is idle.
  bool close_idle_upstream() override;
  bool draining() const { return draining_; }
  FastRandom& random() { return random_; }
  JwtCache& jwt_cache() { return jwt_cache_; }
  // The TLS material new connections use (null without an identity).
  const TlsMaterialPtr& tls() const override;
  bool winding_down() const override { return draining_ && downstream_count_ == 0; }
  AccessLogBuffer& access_log() { return access_log_; }
  // Milliseconds (steady clock) of this worker's last heartbeat: /live checks the loops answer.
  uint64_t heartbeat_ms() const { return heartbeat_ms_.load(std::memory_order_relaxed); }
  bool finished() const { return finished_.load(std::memory_order_acquire); }

  // A downstream connection finished a request or closed: may end a drain.
  void maybe_finish_drain();
  size_t downstream_count() const { return downstream_count_; }
  void add_downstream() { ++downstream_count_; }
  void remove_downstream();

 private:
  void log_refusal(const std::string& listener);
  struct ListenHandle {
    Worker* worker;
    std::shared_ptr<ListenerSlot> slot;
    std::string key;  // the listener's address as written (see Worker::reload)
    uv_tcp_t tcp;
  };
  struct Command {
    enum Kind { drain, stop_accepting, force_stop, reload, keys } kind;
    PolicyPtr policy = nullptr;
    WorkerKeys new_keys = {};
    std::vector<std::string> listen_keys = {};
    std::vector<int> fds = {};
    std::function<void()> done = nullptr;
  };
  static void on_connection(uv_stream_t* server, int status);
  static void on_async(uv_async_t* a);
  static void on_heartbeat(uv_timer_t* t);
  void post(Command command);
  void run();
  SnapshotPtr build_snapshot(PolicyPtr policy, WorkerKeys keys);
  void apply_reload(Command& command);
  void open_listener(size_t index, const std::string& key, int fd);
  void close_listener(ListenHandle* h);
  void stop_listening(bool keep_outbound);
  void close_everything();

  unsigned index_;
  MetricsRegistry& metrics_;
  ResilienceRegistry& resilience_;
  SnapshotPtr snapshot_;
  uv_loop_t loop_;
  uv_async_t async_;
  std::mutex command_mutex_;
  std::vector<Command> commands_;
  bool async_closed_ = false;  // under command_mutex_: commands are no longer taken
  std::vector<ListenHandle*> listeners_;
  uv_timer_t heartbeat_;
  std::atomic<uint64_t> heartbeat_ms_{0};
  std::atomic<bool> finished_{false};
  size_t downstream_count_ = 0;
  bool draining_ = false;
  bool accepting_stopped_ = false;
  bool stopping_ = false;
  uint64_t last_refusal_log_ms_ = 0;
  FastRandom random_;
  JwtCache jwt_cache_;
  AccessLogBuffer access_log_;
  std::thread thread_;
  std::function<void()> done_;
};

}  // namespace pilotfish
