#pragma once
// One request's way to a cluster, whatever protocol carries it: the breaker's max_requests slot,
// the endpoint of each attempt (balancer, outlier probes), the connection lent to the attempt,
// the deadlines (the cluster timeout over every attempt, the per-try timeout, the backoff before
// a retry), the retry decisions with their budget and max_retries slot, and the keep-alive race
// resend. It moves no bytes and arms no timer: the session that carries the request (an HTTP/1.1
// session today, an HTTP/2 stream next) sends, relays the response, and asks it at each turn.
// Everything it holds (slots, probe, balancer count, connection) is given back when it is
// destroyed, so a request that ends any way at all leaks nothing.

#include <cstdint>

#include "pilotfish/balancer.h"
#include "pilotfish/policy.h"
#include "upstream/circuit_breaker.h"
#include "upstream/cluster_state.h"
#include "upstream/upstream_pool.h"

namespace pilotfish {

// What an attempt's end leads to.
struct NextStep {
  enum Kind {
    pass,    // the upstream's answer goes to the client
    retry,   // another attempt, after the backoff
    resend,  // the same request once more on a fresh connection (the keep-alive race)
    answer,  // pilotfish answers the client itself with `status` and `error`
  } kind = answer;
  int status = 0;
  const char* error = "";
};

// Where an attempt's outcome is judged: the cluster on this worker, the time, and whether the
// client's request is all in.
struct AttemptScope {
  ClusterState& cs;
  const Cluster& cluster;
  uint64_t now_ms;
  unsigned worker;
  bool request_complete;
};

struct UpstreamRequest {
  // One of the cluster's max_requests; false (and nothing held) when the breaker is full.
  bool take_request_slot(ClusterState& cs, const Cluster& cluster);

  // The endpoint for the next attempt: the balancer's pick among the endpoints outlier detection
  // allows, avoiding the last one tried; an ejected endpoint whose time is up only when this
  // request claims its one probe. False when no endpoint can take it.
  bool choose_endpoint(ClusterState& cs, uint64_t now_ms);
  // A connection to the chosen endpoint for `borrower` (pooled unless `fresh`); false when the
  // cluster's max_connections or max_pending_requests is full (*overflow says which). No
  // callback reaches `borrower` before this returns.
  bool lend_connection(ClusterState& cs, UpstreamHandler* borrower, bool fresh, BreakerLimit* overflow);
  // The attempt is done with its connection: parked for another request when `reusable`.
  void give_back_connection(bool reusable);
  // The connection closed itself (it said so in a callback).
  void connection_lost();

  // The attempt's outcome for outlier detection; true when it ejected the endpoint.
  bool verdict(ClusterState& cs, const Cluster& cluster, bool ok, uint64_t now_ms);
  // Whether a failure matching `condition` (kRetry* bits) is retried: the policy, the replay
  // limit, the deadline, the retry budget and max_retries. Counts the retry when it is.
  // `worker` is the index the budget records the retry under.
  bool may_retry(ClusterState& cs, const Cluster& cluster, uint32_t condition, bool request_complete,
                 uint64_t now_ms, unsigned worker);
  // How long to wait before the next attempt: full jitter under the policy's backoff.
  uint64_t backoff_ms(const Cluster& cluster, FastRandom& random) const;
  // Nothing of a response came back from a pooled connection (the keep-alive race): may the
  // request go once more on a fresh connection? Only once, only when it is safe to send again
  // (`idempotent`, with what was sent kept), and it is not a retry: no budget, no count.
  bool may_resend_after_race(bool idempotent, bool request_complete);

  // The decisions after an attempt, each with its counters, outlier verdict and probe: a connect
  // that failed (`status` as on_upstream_connect_failed gives it); a connection that ended
  // before any response (`tls_refused`: the server refused our certificate after the
  // handshake); the per-try timeout; the cluster timeout over every attempt (`endpoint_had_it`:
  // the request was all written to a connected endpoint); a final response's status.
  NextStep after_connect_failure(const AttemptScope& at, int status);
  NextStep after_reset(const AttemptScope& at, bool tls_refused, bool idempotent);
  NextStep after_try_timeout(const AttemptScope& at);
  NextStep after_deadline(const AttemptScope& at, bool endpoint_had_it);
  NextStep after_response(const AttemptScope& at, int status, int grpc_status = -1);

  // The request is all in: the cluster's timeout starts, and the per-try timeout of the attempt
  // in flight.
  void start_deadlines(const Cluster& cluster, uint64_t now_ms);
  // An attempt started after the request was all in: its per-try timeout.
  void start_try_deadline(const Cluster& cluster, uint64_t now_ms);
  // The answer that goes to the client was chosen: no deadline, no retry from here on.
  void answer_chosen();
  // The earliest of the deadlines (0: none).
  uint64_t next_deadline_ms() const;
  // The probe claim and breaker slots go back (the balancer count goes with the connection).
  void release_holds();

  int endpoint = -1;
  UpstreamLease connection;      // lent to the attempt in flight (or to a tunnel)
  int attempts = 0;
  bool replayed = false;         // sent again after the keep-alive race
  bool connection_reused = false;
  bool sent = false;             // bytes of this attempt were handed to its connection
  bool replayable = true;        // no body, or an idempotent one small enough to keep
  bool nested = false;           // sent by another pilotfish: not retried again here
  bool response_bytes_seen = false;
  bool retry_overflow = false;   // a retry was refused by max_retries: the answer is 503 overloaded
  bool stall_checked = false;    // the cluster deadline fired late once; the next time it judges
  BalancedRequest balanced;      // counted in the balancer's active requests
  ProbeClaim probe;              // this attempt is its ejected endpoint's one probe
  BreakerSlot request_slot;      // one of the cluster's max_requests
  BreakerSlot retry_slot;        // one of the cluster's max_retries
  uint64_t deadline_ms = 0;      // the cluster timeout, over every attempt
  uint64_t try_deadline_ms = 0;  // the per-try timeout of the attempt in flight
  uint64_t backoff_until_ms = 0;
};

}  // namespace pilotfish
