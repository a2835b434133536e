#include "upstream/upstream_request.h"

#include "log/logger.h"
#include "upstream/retry_decision.h"

namespace pilotfish {

bool UpstreamRequest::take_request_slot(ClusterState& cs, const Cluster& cluster) {
  return request_slot.take(cs.shared, &ClusterShared::requests, cluster.circuit_breaker.max_requests);
}

bool UpstreamRequest::choose_endpoint(ClusterState& cs, uint64_t now_ms) {
  int previous = endpoint;
  endpoint = -1;
  size_t n = cs.pools.size();
  for (size_t tries = 0; tries < n; ++tries) {
    int chosen = cs.balancer->pick([&](size_t i) { return cs.health[i]->may_try(now_ms); }, previous);
    if (chosen < 0) break;
    const std::shared_ptr<EndpointHealth>& health = cs.health[static_cast<size_t>(chosen)];
    // An ejection that is over: this request is its one probe, unless another got there first.
    if (!health->needs_probe() || probe.claim(health)) {
      endpoint = chosen;
      break;
    }
  }
  return endpoint >= 0;
}

bool UpstreamRequest::lend_connection(ClusterState& cs, UpstreamHandler* borrower, bool fresh,
                                      BreakerLimit* overflow) {
  bool reused = false;
  connection = cs.pools[static_cast<size_t>(endpoint)]->acquire(borrower, &reused, overflow, fresh);
  if (!connection) {
    probe.release();
    return false;
  }
  balanced.start(cs.balancer.get(), static_cast<size_t>(endpoint));
  connection_reused = reused;
  return true;
}

void UpstreamRequest::give_back_connection(bool reusable) {
  if (!connection) return;
  balanced.end();
  connection.end(reusable);
}

void UpstreamRequest::connection_lost() {
  balanced.end();
  connection.lost();
}

bool UpstreamRequest::verdict(ClusterState& cs, const Cluster& cluster, bool ok, uint64_t now_ms) {
  if (endpoint < 0) return false;
  EndpointHealth& health = *cs.health[static_cast<size_t>(endpoint)];
  probe.settle();
  if (ok) {
    record_endpoint_success(health, *cs.shared);
    return false;
  }
  if (!record_endpoint_failure(health, *cs.shared, cluster.outlier_detection, cs.pools.size(), now_ms)) return false;
  cs.stats->outlier_ejections.add();
  log_warn("cluster " + cluster.name + ": endpoint " + cs.pools[static_cast<size_t>(endpoint)]->address().text +
           " ejected (outlier detection)");
  return true;
}

bool UpstreamRequest::may_retry(ClusterState& cs, const Cluster& cluster, uint32_t condition, bool request_complete,
                                uint64_t now_ms, unsigned worker) {
  const RetryPolicy& retry = cluster.retry;
  AttemptFacts facts{condition, nested, attempts, sent, request_complete, replayable,
                     deadline_ms && now_ms >= deadline_ms};
  if (!retry_permitted(retry, facts)) return false;
  if (!cs.shared->budget.allows_retry(now_ms, retry.budget_ratio, retry.budget_min_per_second)) {
    cs.stats->retry_budget_exhausted.add();
    return false;
  }
  if (!retry_slot.held() && !retry_slot.take(cs.shared, &ClusterShared::retries, cluster.circuit_breaker.max_retries)) {
    cs.stats->breaker_overflow[static_cast<size_t>(BreakerLimit::retries)].add();
    retry_overflow = true;  // answered 503 overloaded, as every breaker limit is
    return false;
  }
  cs.stats->retries.add();
  cs.shared->budget.record_retry(worker, now_ms);
  return true;
}

uint64_t UpstreamRequest::backoff_ms(const Cluster& cluster, FastRandom& random) const {
  uint64_t cap = backoff_bound_ms(cluster.retry, attempts);
  return cap ? random.below(cap) : 0;
}

bool UpstreamRequest::may_resend_after_race(bool idempotent, bool request_complete) {
  if (!connection_reused || response_bytes_seen || !idempotent || !replayable || !request_complete || replayed)
    return false;
  replayed = true;
  probe.release();
  --attempts;  // the next attempt takes this one's place
  return true;
}

void UpstreamRequest::start_deadlines(const Cluster& cluster, uint64_t now_ms) {
  deadline_ms = now_ms + static_cast<uint64_t>(cluster.timeout.count());
  if (connection) start_try_deadline(cluster, now_ms);
}

void UpstreamRequest::start_try_deadline(const Cluster& cluster, uint64_t now_ms) {
  if (cluster.retry.per_try_timeout.count() > 0)
    try_deadline_ms = now_ms + static_cast<uint64_t>(cluster.retry.per_try_timeout.count());
}

void UpstreamRequest::answer_chosen() {
  deadline_ms = try_deadline_ms = backoff_until_ms = 0;
  retry_slot.release();
}

uint64_t UpstreamRequest::next_deadline_ms() const {
  uint64_t next = 0;
  for (uint64_t t : {deadline_ms, try_deadline_ms, backoff_until_ms})
    if (t && (next == 0 || t < next)) next = t;
  return next;
}

void UpstreamRequest::release_holds() {
  probe.release();
  request_slot.release();
  retry_slot.release();
}

}  // namespace pilotfish
