#pragma once
// What a request holds of state shared with other requests while it runs: a slot of a circuit
// breaker limit (max_requests, max_retries), an ejected endpoint's one probe, and its place in
// the balancer's count of active requests. Each hold gives back what it took when it is
// released, reassigned or destroyed, so no path through a request can forget to. The breaker
// slot and the probe keep what they took from alive (state shared by every worker), so a reload
// that drops a cluster cannot leave them dangling.

#include <uv.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>

#include "pilotfish/balancer.h"
#include "upstream/resilience.h"

namespace pilotfish {

// One unit of a breaker counter (ClusterShared::requests or ::retries).
class BreakerSlot {
 public:
  BreakerSlot() = default;
  BreakerSlot(BreakerSlot&& other) noexcept { *this = std::move(other); }
  BreakerSlot& operator=(BreakerSlot&& other) noexcept {
    if (this != &other) {
      release();
      owner_ = std::move(other.owner_);
      counter_ = std::exchange(other.counter_, nullptr);
    }
    return *this;
  }
  ~BreakerSlot() { release(); }

  // Takes one unit of `owner`'s `counter` if it is under `limit`; false (holding nothing) when
  // the breaker is full. A slot already held is given back first.
  bool take(std::shared_ptr<ClusterShared> owner, std::atomic<int64_t> ClusterShared::*counter, uint32_t limit) {
    release();
    std::atomic<int64_t>& c = (*owner).*counter;
    if (!ClusterShared::try_take(c, limit)) return false;
    counter_ = &c;
    owner_ = std::move(owner);
    return true;
  }
  bool held() const { return counter_ != nullptr; }
  void release() {
    if (!counter_) return;
    ClusterShared::give_back(*counter_);
    counter_ = nullptr;
    owner_.reset();
  }

 private:
  std::shared_ptr<ClusterShared> owner_;
  std::atomic<int64_t>* counter_ = nullptr;
};

// The one probe an ejected endpoint takes when its ejection is over (EndpointHealth). Either
// the attempt's verdict settles it (recorded success or failure: settle()), or it is released
// and the next request probes instead.
class ProbeClaim {
 public:
  ProbeClaim() = default;
  ProbeClaim(ProbeClaim&& other) noexcept { *this = std::move(other); }
  ProbeClaim& operator=(ProbeClaim&& other) noexcept {
    if (this != &other) {
      release();
      health_ = std::move(other.health_);
    }
    return *this;
  }
  ~ProbeClaim() { release(); }

  // True when this request is the endpoint's probe now (no other request, on any worker, is).
  bool claim(std::shared_ptr<EndpointHealth> health) {
    release();
    if (!health->claim_probe()) return false;
    health_ = std::move(health);
    return true;
  }
  bool held() const { return health_ != nullptr; }
  // The verdict was recorded: the endpoint's state says what came of the probe.
  void settle() { health_.reset(); }
  void release() {
    if (!health_) return;
    // The same monotonic clock as the loops' uv_now().
    health_->release_probe(uv_hrtime() / 1'000'000);
    health_.reset();
  }

 private:
  std::shared_ptr<EndpointHealth> health_;
};

// A request counted in its balancer's active requests at one endpoint (least-request). The
// balancer is the worker's own and outlives the request (the request's snapshot holds it), so
// it is held by pointer: no reference count on the request path.
class BalancedRequest {
 public:
  BalancedRequest() = default;
  BalancedRequest(BalancedRequest&& other) noexcept { *this = std::move(other); }
  BalancedRequest& operator=(BalancedRequest&& other) noexcept {
    if (this != &other) {
      end();
      balancer_ = std::exchange(other.balancer_, nullptr);
      endpoint_ = other.endpoint_;
    }
    return *this;
  }
  ~BalancedRequest() { end(); }

  void start(Balancer* balancer, size_t endpoint) {
    end();
    balancer->on_request_start(endpoint);
    balancer_ = balancer;
    endpoint_ = endpoint;
  }
  bool active() const { return balancer_ != nullptr; }
  void end() {
    if (!balancer_) return;
    balancer_->on_request_end(endpoint_);
    balancer_ = nullptr;
  }

 private:
  Balancer* balancer_ = nullptr;
  size_t endpoint_ = 0;
};

}  // namespace pilotfish
