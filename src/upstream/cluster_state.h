#pragma once
// One worker's view of one cluster: what requests to it share on that worker.

#include <memory>
#include <string>
#include <vector>

#include "metrics/stats.h"
#include "pilotfish/balancer.h"
#include "pilotfish/policy.h"
#include "upstream/resilience.h"
#include "upstream/upstream_pool.h"

namespace pilotfish {

// Per-worker state of one cluster: its balancer and one connection pool per endpoint. Shared by
// every snapshot in which the cluster has the same endpoints, balancing policy and upstream TLS.
struct ClusterState {
  std::string name;
  std::vector<SocketAddress> endpoints;
  LbPolicy lb = LbPolicy::round_robin;
  ClusterMtls mtls;  // pooled connections were made with these TLS settings
  UpstreamProtocol protocol = UpstreamProtocol::http1;  // and in this protocol
  std::shared_ptr<ClusterStats> stats;
  std::shared_ptr<ClusterShared> shared;                // breaker counts, retry budget: all workers
  std::unique_ptr<Balancer> balancer;
  std::vector<std::shared_ptr<EndpointPool>> pools;     // by endpoint index
  std::vector<std::shared_ptr<EndpointHealth>> health;  // by endpoint index: all workers
};

}  // namespace pilotfish
