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

// A slot: tokens (in units of unit_ thousandths of a token) in the high 24 bits, the time of
// the last refill in the low 40 bits, in milliseconds of the monotonic clock (0 marks an unused
// slot). 40 bits of milliseconds last 34 years, so an idle bucket never meets a clock that has
// wrapped around its stamp: one emptied and left for 50 days is full again, as it should be.
// (With a 32-bit stamp, an idle of 24.8 to 49.7 days read as a negative time and never refilled.)
constexpr int kStampBits = 40;
constexpr uint64_t kStampMask = (uint64_t{1} << kStampBits) - 1;
constexpr uint64_t kMaxUnits = (uint64_t{1} << (64 - kStampBits)) - 1;

RateLimiter::RateLimiter(double rate_per_second, uint32_t burst, size_t slots)
    : rate_(rate_per_second), burst_(std::max<uint32_t>(1, std::min<uint32_t>(burst, 4'000'000))) {
  // Thousandths of a token per unit: 1 up to a burst of 16,777 tokens, coarser beyond. A take
  // costs whole units rounded up, so a coarse unit makes a limit stricter, never looser.
  uint64_t thousandths = static_cast<uint64_t>(burst_) * 1000;
  unit_ = std::max<uint64_t>(1, (thousandths + kMaxUnits - 1) / kMaxUnits);
  full_units_ = thousandths / unit_;
  cost_units_ = (1000 + unit_ - 1) / unit_;
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
  uint64_t now = (now_ms & kStampMask) | 1;  // never 0, which marks an unused slot
  uint64_t old = slot.load(std::memory_order_relaxed);
  for (;;) {
    uint64_t units = old >> kStampBits;
    uint64_t last = old & kStampMask;
    uint64_t stamp = last;
    if (last == 0) {
      units = full_units_;
      stamp = now;
    } else if (now > last) {
      // A stamp slightly ahead of now (another thread's clock read a moment later) is no time
      // elapsed; `now > last` leaves it as it is.
      double refill = static_cast<double>(now - last) * rate_ / static_cast<double>(unit_);
      // A refill under one unit keeps the old stamp, so slow rates still accumulate.
      if (refill >= 1.0 || units >= full_units_) {
        units = refill >= static_cast<double>(full_units_) ? full_units_
                                                            : std::min(full_units_, units + static_cast<uint64_t>(refill));
        stamp = now;
      }
    }
    if (units < cost_units_) {
      double wait_s = static_cast<double>((cost_units_ - units) * unit_) / (rate_ * 1000.0);
      *retry_after_s = static_cast<uint32_t>(std::max(1.0, std::ceil(wait_s)));
      return false;
    }
    uint64_t next = ((units - cost_units_) << kStampBits) | stamp;
    if (slot.compare_exchange_weak(old, next, std::memory_order_relaxed)) return true;
  }
}

}  // namespace pilotfish
