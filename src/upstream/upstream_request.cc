#include "upstream/upstream_request.h"

#include "log/logger.h"
#include "net/descriptor_budget.h"
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

namespace {
NextStep answer(int status, const char* error) { return {NextStep::answer, status, error}; }
}  // namespace

NextStep UpstreamRequest::after_connect_failure(const AttemptScope& at, int status) {
  at.cs.stats->upstream_connect_failure.add();
  log_debug("cluster " + at.cluster.name + ": connect to " + at.cs.pools[static_cast<size_t>(endpoint)]->address().text +
            " failed: " + upstream_error_text(status));
  // A connect that failed here (no descriptors, no local port) says nothing about the endpoint,
  // and another endpoint would fare no better: the client is told pilotfish is overloaded.
  if (is_local_failure(status)) {
    probe.release();
    return answer(503, "overloaded");
  }
  verdict(at.cs, at.cluster, false, at.now_ms);
  if (may_retry(at.cs, at.cluster, kRetryConnectFailure, at.request_complete, at.now_ms, at.worker))
    return {NextStep::retry};
  return answer(503, retry_overflow                 ? "overloaded"
                     : status == UV_ETIMEDOUT       ? "connect_timeout"
                     : status == kUpstreamTlsFailed ? "upstream_tls_failure"
                                                    : "connect_failure");
}

NextStep UpstreamRequest::after_reset(const AttemptScope& at, bool tls_refused, bool idempotent) {
  (tls_refused ? at.cs.stats->upstream_connect_failure : at.cs.stats->upstream_reset).add();
  if (tls_refused) {
    // The server refused our certificate (TLS 1.3 tells a client after its side of the
    // handshake): a connection that never was, as a failed connect. The server read none of
    // the request, but what was sent is sent again only if it was kept.
    verdict(at.cs, at.cluster, false, at.now_ms);
    if (may_retry(at.cs, at.cluster, kRetryConnectFailure, at.request_complete, at.now_ms, at.worker))
      return {NextStep::retry};
    return answer(503, retry_overflow ? "overloaded" : "upstream_tls_failure");
  }
  // Nothing of a response came back. A request written to a pooled connection that the
  // upstream was closing at that moment (the keep-alive race) is sent once more on a fresh
  // connection when that is safe; it is not the endpoint's fault.
  if (may_resend_after_race(idempotent, at.request_complete)) return {NextStep::resend};
  verdict(at.cs, at.cluster, false, at.now_ms);
  if (may_retry(at.cs, at.cluster, kRetryReset, at.request_complete, at.now_ms, at.worker)) return {NextStep::retry};
  return retry_overflow ? answer(503, "overloaded") : answer(502, "upstream_reset");
}

NextStep UpstreamRequest::after_try_timeout(const AttemptScope& at) {
  // A 504 for the retry conditions and a failure of the endpoint.
  try_deadline_ms = 0;
  at.cs.stats->upstream_timeout.add();
  verdict(at.cs, at.cluster, false, at.now_ms);
  if (may_retry(at.cs, at.cluster, kRetry5xx | kRetryGatewayError, at.request_complete, at.now_ms, at.worker))
    return {NextStep::retry};
  return retry_overflow ? answer(503, "overloaded") : answer(504, "timeout");
}

NextStep UpstreamRequest::after_deadline(const AttemptScope& at, bool endpoint_had_it) {
  // Every attempt together had the cluster's timeout. The endpoint is blamed only when it had
  // the request.
  if (endpoint_had_it) verdict(at.cs, at.cluster, false, at.now_ms);
  probe.release();
  return answer(504, "timeout");
}

NextStep UpstreamRequest::after_response(const AttemptScope& at, int status, int grpc_status) {
  uint32_t condition = retry_conditions_for_status(at.cluster.retry, status);
  if (grpc_status > 0) condition |= retry_condition_for_grpc(grpc_status);
  verdict(at.cs, at.cluster, status < 500, at.now_ms);
  if (condition && may_retry(at.cs, at.cluster, condition, at.request_complete, at.now_ms, at.worker))
    return {NextStep::retry};
  if (condition && retry_overflow) return answer(503, "overloaded");
  answer_chosen();
  return {NextStep::pass};
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
