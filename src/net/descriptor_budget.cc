#include "net/descriptor_budget.h"

#include <dirent.h>
#include <sys/resource.h>
#include <uv.h>

#include <algorithm>

namespace pilotfish {

namespace {

int64_t open_descriptors() {
  int64_t n = 0;
  if (DIR* d = opendir("/proc/self/fd")) {
    while (dirent* e = readdir(d))
      if (e->d_name[0] != '.') ++n;
    closedir(d);
    return n - 1;  // the directory's own descriptor
  }
  return 64;  // no /proc: a generous guess
}

}  // namespace

DescriptorBudget& DescriptorBudget::process() {
  static DescriptorBudget budget;
  return budget;
}

void DescriptorBudget::init(uint32_t margin) {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
  if (rl.rlim_cur < rl.rlim_max) {
    // As Go's runtime and nginx's worker_rlimit_nofile do: the hard limit is what the operator
    // granted; the soft default (often 1024) is a relic for select().
    rlimit raised = rl;
    raised.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0) rl = raised;
  }
  soft_limit_ = rl.rlim_cur;
  if (rl.rlim_cur == RLIM_INFINITY) return;
  int64_t reserve = static_cast<int64_t>(margin + 2 * admin_connection_cap(rl.rlim_cur));
  int64_t budget = static_cast<int64_t>(rl.rlim_cur) - open_descriptors() - reserve;
  limit_.store(std::max<int64_t>(budget, 8), std::memory_order_relaxed);
}

size_t admin_connection_cap(uint64_t soft_limit) {
  if (soft_limit == 0) return 64;
  return static_cast<size_t>(std::clamp<uint64_t>(soft_limit / 32, 4, 64));
}

bool is_local_failure(int status) {
  return status == UV_EMFILE || status == UV_ENFILE || status == UV_EADDRNOTAVAIL || status == UV_ENOBUFS ||
         status == UV_ENOMEM;
}

}  // namespace pilotfish
