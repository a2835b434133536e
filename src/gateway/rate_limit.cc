#include "gateway/rate_limit.h"

#include <algorithm>
#include <cmath>
#include <random>

namespace pilotfish {

namespace {

uint64_t hash_key(std::string_view key, uint64_t seed) {
  uint64_t h = 1469598103934665603ull ^ seed;  // FNV-1a, seeded per limiter: slots cannot be aimed at
  for (char c : key) {
    h ^= static_cast<unsigned char>(c);
    h *= 1099511628211ull;
  }
  return h ^ (h >> 29);
}

}  // namespace

RateLimiter::RateLimiter(double rate_per_second, uint32_t burst, size_t slots)
    : rate_(rate_per_second), burst_(std::max<uint32_t>(1, std::min<uint32_t>(burst, 4'000'000))) {
  size_t n = 1;
  while (n < slots) n <<= 1;
  mask_ = n - 1;
  slots_.reset(new std::atomic<uint64_t>[n]);
  for (size_t i = 0; i < n; ++i) slots_[i].store(0, std::memory_order_relaxed);
  std::random_device random;
  seed_ = (static_cast<uint64_t>(random()) << 32) ^ random();
}

bool RateLimiter::take(std::string_view key, uint64_t now_ms, uint32_t* retry_after_s) {
  std::atomic<uint64_t>& slot = slots_[hash_key(key, seed_) & mask_];
  const uint64_t full = static_cast<uint64_t>(burst_) * 1000;
  // The time field is the low 32 bits of the clock, never 0 (0 marks an unused slot).
  uint32_t now32 = static_cast<uint32_t>(now_ms) | 1u;
  uint64_t old = slot.load(std::memory_order_relaxed);
  for (;;) {
    uint64_t tokens = old >> 32;  // thousandths of a token
    uint32_t last = static_cast<uint32_t>(old);
    uint32_t stamp = last;
    if (last == 0) {
      tokens = full;
      stamp = now32;
    } else {
      // Wraps every 49 days, as unsigned arithmetic does. A stamp slightly ahead of now (another
      // thread's clock read a moment later) is no time elapsed, not 49 days.
      int32_t elapsed = static_cast<int32_t>(now32 - last);
      if (elapsed < 0) elapsed = 0;
      uint64_t refill = static_cast<uint64_t>(static_cast<double>(elapsed) * rate_);
      // A refill under a thousandth keeps the old stamp, so slow rates still accumulate.
      if (refill > 0 || tokens >= full) {
        tokens = std::min(full, tokens + refill);
        stamp = now32;
      }
    }
    if (tokens < 1000) {
      double wait_s = static_cast<double>(1000 - tokens) / (rate_ * 1000.0);
      *retry_after_s = static_cast<uint32_t>(std::max(1.0, std::ceil(wait_s)));
      return false;
    }
    uint64_t next = ((tokens - 1000) << 32) | stamp;
    if (slot.compare_exchange_weak(old, next, std::memory_order_relaxed)) return true;
  }
}

}  // namespace pilotfish
