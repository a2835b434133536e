#pragma once
// Per-worker load balancing over a cluster's endpoints. Needs no lock: every worker has its
// own Balancer and its own active-request counts (as Envoy's thread-local load balancers do).

#include <cstdint>
#include <vector>

#include "pilotfish/policy.h"

namespace pilotfish {

// A small, fast PRNG for balancing and request ids (xoshiro256**), seeded from the OS.
class FastRandom {
 public:
  FastRandom();
  uint64_t next();
  uint64_t below(uint64_t n) { return n ? next() % n : 0; }

 private:
  uint64_t s_[4];
};

class Balancer {
 public:
  Balancer(LbPolicy policy, size_t endpoint_count, FastRandom* random);

  // Picks an endpoint index, skipping those for which `usable(i)` is false; returns -1 when
  // none is usable. `exclude` (or -1) is avoided when another usable endpoint exists, so a
  // retry goes elsewhere.
  template <typename Usable>
  int pick(Usable usable, int exclude = -1);

  // Active requests per endpoint, for least_request.
  void on_request_start(size_t endpoint) { ++active_[endpoint]; }
  void on_request_end(size_t endpoint) { if (active_[endpoint]) --active_[endpoint]; }
  uint32_t active(size_t endpoint) const { return active_[endpoint]; }

 private:
  int pick_once(int exclude);
  LbPolicy policy_;
  FastRandom* random_;
  size_t next_ = 0;
  std::vector<uint32_t> active_;
};

template <typename Usable>
int Balancer::pick(Usable usable, int exclude) {
  size_t n = active_.size();
  if (n == 0) return -1;
  // Fast path: the policy's choice is usable.
  int first = pick_once(exclude);
  if (first >= 0 && usable(static_cast<size_t>(first)) && (first != exclude || n == 1)) return first;
  // Otherwise walk from a random start to find any usable endpoint, preferring not `exclude`.
  size_t start = static_cast<size_t>(random_->below(n));
  int fallback = -1;
  for (size_t k = 0; k < n; ++k) {
    size_t i = (start + k) % n;
    if (!usable(i)) continue;
    if (static_cast<int>(i) == exclude) {
      fallback = static_cast<int>(i);
      continue;
    }
    return static_cast<int>(i);
  }
  return fallback;
}

}  // namespace pilotfish
