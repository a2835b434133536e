#pragma once
// Retry decisions that depend on nothing but the policy and what happened to the request: which
// retry conditions an answer meets, whether the policy lets an attempt be made again, and how
// long to back off. The shared parts (the retry budget, the max_retries breaker) are the
// caller's to check after these say yes.

#include <cstdint>

#include "pilotfish/policy.h"

namespace pilotfish {

// The retry conditions (kRetry5xx, kRetryGatewayError, kRetryRetriableStatusCodes) a final
// response with `status` meets under `retry`; 0 for none.
uint32_t retry_conditions_for_status(const RetryPolicy& retry, int status);
// The retry condition of a gRPC status (trailers-only response), or 0.
uint32_t retry_condition_for_grpc(int grpc_status);

struct AttemptFacts {
  uint32_t condition = 0;         // what went wrong (kRetryConnectFailure, kRetryReset, ...)
  bool nested = false;            // the request came from another pilotfish
  int attempts = 0;               // made so far, this one included
  bool sent = false;              // bytes of the request reached a connection
  bool request_complete = false;  // the client's request is all in
  bool replayable = false;        // the body (if any) was kept and the method may be repeated
  bool past_deadline = false;     // the cluster timeout over every attempt has passed
};

// Whether the policy lets the request be tried again after this attempt.
bool retry_permitted(const RetryPolicy& retry, const AttemptFacts& f);

// Full jitter: the wait before retry n is uniform in [0, this) where this is
// min(backoff.max, backoff.base * 2^(n-1)), n being the attempts made so far.
uint64_t backoff_bound_ms(const RetryPolicy& retry, int attempts);

}  // namespace pilotfish
