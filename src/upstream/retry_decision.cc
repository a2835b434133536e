#include "upstream/retry_decision.h"

#include <algorithm>

namespace pilotfish {

uint32_t retry_conditions_for_status(const RetryPolicy& retry, int status) {
  uint32_t condition = 0;
  if (status >= 500) condition |= kRetry5xx;
  if (status == 502 || status == 503 || status == 504) condition |= kRetryGatewayError;
  for (int code : retry.status_codes)
    if (code == status) condition |= kRetryRetriableStatusCodes;
  return condition;
}

uint32_t retry_condition_for_grpc(int grpc_status) {
  switch (grpc_status) {
    case 1: return kRetryGrpcCancelled;
    case 4: return kRetryGrpcDeadlineExceeded;
    case 8: return kRetryGrpcResourceExhausted;
    case 13: return kRetryGrpcInternal;
    case 14: return kRetryGrpcUnavailable;
    default: return 0;
  }
}

bool retry_permitted(const RetryPolicy& retry, const AttemptFacts& f) {
  if (!(retry.on & f.condition)) return false;
  // A request from another pilotfish was retried there already; a connect failure sent
  // nothing anywhere, so it is still tried elsewhere.
  if (f.nested && !retry.nested && f.condition != kRetryConnectFailure) return false;
  if (static_cast<uint32_t>(f.attempts) > retry.retries) return false;
  // Sent bytes can be sent again only when they were kept and the method allows it; a
  // connect failure sent nothing.
  bool sent = f.sent || f.condition != kRetryConnectFailure;
  if (sent && (!f.request_complete || !f.replayable)) return false;
  return !f.past_deadline;
}

uint64_t backoff_bound_ms(const RetryPolicy& retry, int attempts) {
  uint64_t max = static_cast<uint64_t>(retry.backoff_max.count());
  uint64_t cap = static_cast<uint64_t>(retry.backoff_base.count());
  for (int i = 1; i < attempts && cap < max; ++i) cap *= 2;
  return std::min(cap, max);
}

}  // namespace pilotfish
