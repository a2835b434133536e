#include "upstream/resilience.h"

#include <algorithm>
#include <chrono>
#include <set>

namespace pilotfish {

RetryBudget::Bucket& RetryBudget::bucket(unsigned worker, uint64_t now_ms) {
  uint64_t second = now_ms / 1000 + 1;  // +1: 0 marks a bucket never used
  Bucket& b = rows_[worker % rows_.size()].buckets[second % 10];
  if (b.second.load(std::memory_order_relaxed) != second) {
    // Only the owning worker writes its row, so resetting is not a race with another writer.
    b.requests.store(0, std::memory_order_relaxed);
    b.retries.store(0, std::memory_order_relaxed);
    b.second.store(second, std::memory_order_relaxed);
  }
  return b;
}

bool RetryBudget::allows_retry(uint64_t now_ms, double ratio, double min_per_second) const {
  uint64_t second = now_ms / 1000 + 1;
  uint64_t requests = 0, retries = 0;
  for (const Row& row : rows_) {
    for (const Bucket& b : row.buckets) {
      uint64_t s = b.second.load(std::memory_order_relaxed);
      if (s == 0 || s + 10 <= second) continue;  // older than 10 s
      requests += b.requests.load(std::memory_order_relaxed);
      retries += b.retries.load(std::memory_order_relaxed);
    }
  }
  return static_cast<double>(retries + 1) <= ratio * static_cast<double>(requests) + min_per_second * 10.0;
}

std::shared_ptr<ClusterShared> ResilienceRegistry::cluster(const std::string& name) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto& slot = clusters_[name];
  if (!slot) slot = std::make_shared<ClusterShared>(workers_);
  return slot;
}

std::shared_ptr<EndpointHealth> ResilienceRegistry::endpoint(const std::string& cluster, const std::string& address) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto& slot = endpoints_[{cluster, address}];
  if (!slot) slot = std::make_shared<EndpointHealth>();
  return slot;
}

void ResilienceRegistry::keep_only(const Policy& policy) {
  std::set<std::string> names;
  std::set<std::pair<std::string, std::string>> endpoints;
  for (const auto& c : policy.clusters) {
    names.insert(c.name);
    for (const auto& ep : c.endpoints) endpoints.insert({c.name, ep.text});
  }
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto& [key, health] : endpoints_) {
    if (endpoints.count(key)) continue;
    // A removed endpoint that was ejected no longer counts against max_ejection_percent.
    health->retired.store(true, std::memory_order_release);
    uint32_t was = health->state.exchange(EndpointHealth::ok, std::memory_order_acq_rel);
    auto cluster = clusters_.find(key.first);
    if (was != EndpointHealth::ok && cluster != clusters_.end())
      cluster->second->ejected.fetch_sub(1, std::memory_order_acq_rel);
  }
  std::erase_if(clusters_, [&](const auto& e) { return !names.count(e.first); });
  std::erase_if(endpoints_, [&](const auto& e) { return !endpoints.count(e.first); });
}

std::shared_ptr<ClusterShared> ResilienceRegistry::find_cluster(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = clusters_.find(name);
  return it == clusters_.end() ? nullptr : it->second;
}

std::shared_ptr<EndpointHealth> ResilienceRegistry::find_endpoint(const std::string& cluster,
                                                                  const std::string& address) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = endpoints_.find({cluster, address});
  return it == endpoints_.end() ? nullptr : it->second;
}

bool record_endpoint_failure(EndpointHealth& health, ClusterShared& cluster, const OutlierDetection& od,
                             size_t cluster_endpoints, uint64_t now_ms) {
  if (od.consecutive_failures == 0 || health.retired.load(std::memory_order_acquire)) return false;
  uint32_t state = health.state.load(std::memory_order_acquire);
  // The deadline goes in before the state says "ejected", so that no worker can see the new
  // state with the old, passed deadline and probe at once.
  auto set_deadline = [&](uint32_t times) {
    uint64_t base = static_cast<uint64_t>(od.base_ejection_time.count());
    uint64_t duration = std::min<uint64_t>(base * times, static_cast<uint64_t>(od.max_ejection_time.count()));
    health.ejected_until_ms.store(now_ms + duration, std::memory_order_relaxed);
    auto unix_now = std::chrono::duration_cast<std::chrono::milliseconds>(
                        std::chrono::system_clock::now().time_since_epoch())
                        .count();
    health.ejected_until_unix_ms.store(unix_now + static_cast<int64_t>(duration), std::memory_order_relaxed);
  };
  uint32_t times = health.ejections.load(std::memory_order_relaxed) + 1;
  if (state == EndpointHealth::probing) {
    // The probe failed: ejected again, for longer. It still counts as ejected.
    set_deadline(times);
    uint32_t expected = EndpointHealth::probing;
    if (!health.state.compare_exchange_strong(expected, EndpointHealth::ejected)) return false;
  } else if (state == EndpointHealth::ok) {
    uint32_t failures = health.consecutive_failures.fetch_add(1, std::memory_order_acq_rel) + 1;
    if (failures < od.consecutive_failures) return false;
    // Never more than max_ejection_percent of the endpoints at once, but one always may be.
    int64_t cap = std::max<int64_t>(1, static_cast<int64_t>(cluster_endpoints) * od.max_ejection_percent / 100);
    if (!ClusterShared::try_take(cluster.ejected, static_cast<uint32_t>(cap))) return false;
    set_deadline(times);
    uint32_t expected = EndpointHealth::ok;
    if (!health.state.compare_exchange_strong(expected, EndpointHealth::ejected)) {
      cluster.ejected.fetch_sub(1, std::memory_order_acq_rel);  // another worker was first
      return false;
    }
  } else {
    return false;  // ejected already
  }
  health.ejections.fetch_add(1, std::memory_order_acq_rel);
  health.consecutive_failures.store(0, std::memory_order_relaxed);
  return true;
}

void record_endpoint_success(EndpointHealth& health, ClusterShared& cluster) {
  if (health.consecutive_failures.load(std::memory_order_relaxed) != 0)
    health.consecutive_failures.store(0, std::memory_order_relaxed);
  if (health.state.load(std::memory_order_relaxed) == EndpointHealth::probing) {
    uint32_t expected = EndpointHealth::probing;
    if (health.state.compare_exchange_strong(expected, EndpointHealth::ok))
      cluster.ejected.fetch_sub(1, std::memory_order_acq_rel);
  }
}

}  // namespace pilotfish
