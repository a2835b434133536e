#include "pilotfish/balancer.h"

#include <sys/random.h>

#include <chrono>

namespace pilotfish {

namespace {
uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
uint64_t splitmix(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
}  // namespace

FastRandom::FastRandom() {
  uint64_t seed = 0;
  if (getrandom(&seed, sizeof seed, 0) != sizeof seed)
    seed = static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  for (auto& s : s_) s = splitmix(seed);
}

uint64_t FastRandom::next() {
  uint64_t result = rotl(s_[1] * 5, 7) * 9;
  uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

Balancer::Balancer(LbPolicy policy, size_t endpoint_count, FastRandom* random)
    : policy_(policy), random_(random), active_(endpoint_count, 0) {
  // Workers start at different places so that N workers do not all hit endpoint 0 first.
  next_ = endpoint_count ? static_cast<size_t>(random_->below(endpoint_count)) : 0;
}

int Balancer::pick_once(int exclude) {
  size_t n = active_.size();
  switch (policy_) {
    case LbPolicy::round_robin: {
      size_t i = next_++ % n;
      if (static_cast<int>(i) == exclude && n > 1) i = next_++ % n;
      return static_cast<int>(i);
    }
    case LbPolicy::random: {
      size_t i = random_->below(n);
      if (static_cast<int>(i) == exclude && n > 1) i = (i + 1 + random_->below(n - 1)) % n;
      return static_cast<int>(i);
    }
    case LbPolicy::least_request: {
      // Power of two choices: two distinct random endpoints, the one with fewer active requests.
      if (n == 1) return 0;
      size_t a = random_->below(n);
      size_t b = (a + 1 + random_->below(n - 1)) % n;
      if (static_cast<int>(a) == exclude) return static_cast<int>(b);
      if (static_cast<int>(b) == exclude) return static_cast<int>(a);
      return static_cast<int>(active_[b] < active_[a] ? b : a);
    }
  }
  return 0;
}

}  // namespace pilotfish
