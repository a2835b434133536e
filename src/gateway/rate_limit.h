#pragma once
// `rate_limit` on a listener or route: a token bucket (rate per second, burst) per client key,
// shared by every worker without a lock: each key hashes to one slot, a 64-bit atomic holding
// the bucket's tokens (in thousandths, or coarser for bursts over 16,777) and the time it was
// last refilled (40 bits of milliseconds: no wrap in 34 years), updated with one
// compare-and-swap per request. Keys that share a slot share a bucket (4096 slots per limit by
// default: a collision makes a limit stricter, never looser).

#include <atomic>
#include <cstdint>
#include <memory>
#include <string_view>

namespace pilotfish {

class RateLimiter {
 public:
  RateLimiter(double rate_per_second, uint32_t burst, size_t slots = 4096);
  // Takes one token for `key` at `now_ms` (a monotonic clock). False when the bucket is empty;
  // then *retry_after_s is when the next token is due (at least 1).
  bool take(std::string_view key, uint64_t now_ms, uint32_t* retry_after_s);
  double rate() const { return rate_; }
  uint32_t burst() const { return burst_; }

 private:
  double rate_;
  uint32_t burst_;
  uint64_t unit_ = 1;        // thousandths of a token per unit of a slot's count
  uint64_t full_units_ = 0;  // the burst, in units
  uint64_t cost_units_ = 0;  // one token, in units, rounded up
  size_t mask_;
  uint64_t seed_ = 0;
  std::unique_ptr<std::atomic<uint64_t>[]> slots_;
};

}  // namespace pilotfish
