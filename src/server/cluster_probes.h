#pragma once
// Startup ordering: /ready answers 503 until each cluster named in wait_for_clusters accepts a
// TCP connection (the app's own dependencies, such as the local service, are up). Each cluster
// is probed every 250 ms, at a random endpoint, one connect at a time, each given up after 1 s.
// Once every cluster was reached the probing stops for good.

#include <uv.h>

#include <string>
#include <vector>

#include "pilotfish/balancer.h"
#include "pilotfish/policy.h"

namespace pilotfish {

class ClusterProbes {
 public:
  explicit ClusterProbes(uv_loop_t* loop);
  ~ClusterProbes();
  ClusterProbes(const ClusterProbes&) = delete;
  ClusterProbes& operator=(const ClusterProbes&) = delete;

  // Starts probing `policy`'s wait_for_clusters.
  void start(PolicyPtr policy);
  // A reload before the app came up: the clusters to wait for are the new policy's; one that
  // was reached stays reached, one no longer listed is no longer waited for.
  void policy_changed(PolicyPtr policy);
  bool all_reachable() const { return all_reachable_; }
  // "payments, users": the clusters not reached yet.
  std::string waiting_for() const;
  void close();

 private:
  struct Probe {
    ClusterProbes* owner;
    size_t cluster;  // index into wait_for_
    uint64_t started_ms;
    bool stale;  // the wait list changed since it started
    uv_tcp_t tcp;
    uv_connect_t req;
  };
  void check_all_reachable();
  static void on_timer(uv_timer_t* t);
  static void on_connect(uv_connect_t* req, int status);
  static void close_probe(Probe* probe);
  static void on_probe_closed(uv_handle_t* h);

  uv_loop_t* loop_;
  PolicyPtr policy_;
  std::vector<std::string> wait_for_;
  std::vector<bool> reachable_;
  std::vector<Probe*> probes_;
  uv_timer_t* timer_;  // freed when closed
  bool all_reachable_ = true;
  FastRandom random_;
};

}  // namespace pilotfish
