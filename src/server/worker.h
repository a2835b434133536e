#pragma once
// One worker: one thread, one uv_loop_t, its own listening sockets (SO_REUSEPORT), its own
// snapshot of the policy and its own upstream pools. Nothing on the request path is shared with
// another worker, so nothing on it takes a lock.

#include <uv.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "log/access_log.h"
#include "metrics/metrics.h"
#include "net/event_loop.h"
#include "pilotfish/balancer.h"
#include "pilotfish/policy.h"
#include "upstream/upstream_pool.h"

namespace pilotfish {

class Stream;

// Per-worker state of one cluster: its balancer and one connection pool per endpoint.
struct ClusterState {
  const Cluster* config = nullptr;
  std::shared_ptr<ClusterStats> stats;
  std::unique_ptr<Balancer> balancer;
  std::vector<std::unique_ptr<EndpointPool>> pools;
};

class Worker final : public EventLoop {
 public:
  // `listen_fds[i]` is this worker's bound socket for policy->listeners[i].
  Worker(unsigned index, PolicyPtr policy, std::vector<int> listen_fds, AccessLogWriter* access_log,
         MetricsRegistry& metrics);
  ~Worker();

  // Runs the loop on a new thread; `done` is called on that thread when the loop has ended.
  void start_with_callback(std::function<void()> done);
  void join();
  // Thread-safe: stop accepting, finish what is in flight, then end the loop.
  void begin_drain();
  // Thread-safe: close every connection now and end the loop.
  void force_stop();

  unsigned index() const { return index_; }
  const PolicyPtr& policy() const { return policy_; }
  bool draining() const { return draining_; }
  FastRandom& random() { return random_; }
  ClusterState& cluster(size_t index) { return clusters_[index]; }
  AccessLogBuffer& access_log() { return access_log_; }
  ListenerStats& listener_stats(size_t listener) { return *listener_stats_[listener]; }
  // Requests of a listener answered for a cluster (SIZE_MAX: for none), resolved once.
  RouteStats& route_stats(size_t listener, size_t cluster);
  // Milliseconds (steady clock) of this worker's last heartbeat: /live checks the loops answer.
  uint64_t heartbeat_ms() const { return heartbeat_ms_.load(std::memory_order_relaxed); }
  bool finished() const { return finished_.load(std::memory_order_acquire); }

  // A downstream connection finished a request or closed: may end a drain.
  void maybe_finish_drain();
  size_t downstream_count() const { return downstream_count_; }
  void add_downstream() { ++downstream_count_; }
  void remove_downstream();


 private:
  struct ListenerHandle {
    Worker* worker;
    const Listener* config;
    size_t index;
    uv_tcp_t tcp;
  };
  static void on_connection(uv_stream_t* server, int status);
  static void on_async(uv_async_t* a);
  static void on_heartbeat(uv_timer_t* t);
  void run();
  void stop_listening();
  void close_everything();

  unsigned index_;
  PolicyPtr policy_;
  std::vector<int> listen_fds_;
  uv_loop_t loop_;
  uv_async_t async_;
  std::atomic<int> command_{0};  // 1 = drain, 2 = force stop
  std::vector<std::unique_ptr<ListenerHandle>> listeners_;
  std::vector<ClusterState> clusters_;
  std::vector<std::shared_ptr<ListenerStats>> listener_stats_;
  std::vector<std::vector<RouteStats*>> route_stats_;  // [listener][cluster + 1]
  uv_timer_t heartbeat_;
  std::atomic<uint64_t> heartbeat_ms_{0};
  std::atomic<bool> finished_{false};
  size_t downstream_count_ = 0;
  bool draining_ = false;
  bool stopping_ = false;
  FastRandom random_;
  AccessLogBuffer access_log_;
  std::thread thread_;
  std::function<void()> done_;
};

}  // namespace pilotfish
