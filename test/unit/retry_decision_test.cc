// Retry decisions (upstream/retry_decision.h): which answers meet which conditions, when the
// policy allows another attempt, and the backoff's bound.
#include "upstream/retry_decision.h"

#include <gtest/gtest.h>

namespace pilotfish {
namespace {

RetryPolicy policy(uint32_t on, uint32_t retries = 2) {
  RetryPolicy r;
  r.on = on;
  r.retries = retries;
  return r;
}

// A complete, replayable request that was sent once.
AttemptFacts sent_once(uint32_t condition) {
  AttemptFacts f;
  f.condition = condition;
  f.attempts = 1;
  f.sent = true;
  f.request_complete = true;
  f.replayable = true;
  return f;
}

TEST(RetryDecision, StatusConditions) {
  RetryPolicy r;
  r.status_codes = {409, 503};
  EXPECT_EQ(retry_conditions_for_status(r, 200), 0u);
  EXPECT_EQ(retry_conditions_for_status(r, 409), kRetryRetriableStatusCodes);
  EXPECT_EQ(retry_conditions_for_status(r, 500), kRetry5xx);
  EXPECT_EQ(retry_conditions_for_status(r, 503), kRetry5xx | kRetryGatewayError | kRetryRetriableStatusCodes);
  EXPECT_EQ(retry_conditions_for_status(r, 504), kRetry5xx | kRetryGatewayError);
}

TEST(RetryDecision, OnlyTheConditionsThePolicyNames) {
  EXPECT_TRUE(retry_permitted(policy(kRetry5xx), sent_once(kRetry5xx)));
  EXPECT_FALSE(retry_permitted(policy(kRetryReset), sent_once(kRetry5xx)));
  EXPECT_TRUE(retry_permitted(policy(kRetryReset | kRetryGatewayError), sent_once(kRetryGatewayError)));
}

TEST(RetryDecision, AtMostRetriesMoreAttempts) {
  AttemptFacts f = sent_once(kRetryReset);
  f.attempts = 2;
  EXPECT_TRUE(retry_permitted(policy(kRetryReset, 2), f));
  f.attempts = 3;
  EXPECT_FALSE(retry_permitted(policy(kRetryReset, 2), f));
  EXPECT_FALSE(retry_permitted(policy(kRetryReset, 0), sent_once(kRetryReset)));
}

TEST(RetryDecision, SentBytesGoAgainOnlyWhenKeptAndComplete) {
  AttemptFacts f = sent_once(kRetryReset);
  f.replayable = false;  // a POST, or a body too big to keep
  EXPECT_FALSE(retry_permitted(policy(kRetryReset), f));
  f = sent_once(kRetryReset);
  f.request_complete = false;  // the client is still sending
  EXPECT_FALSE(retry_permitted(policy(kRetryReset), f));
  // A failed connect sent nothing: a POST still sending its body may go elsewhere.
  AttemptFacts connect;
  connect.condition = kRetryConnectFailure;
  connect.attempts = 1;
  EXPECT_TRUE(retry_permitted(policy(kRetryConnectFailure), connect));
  connect.sent = true;  // a TLS refusal after the request went out is sent bytes again
  EXPECT_FALSE(retry_permitted(policy(kRetryConnectFailure), connect));
}

TEST(RetryDecision, NestedRequestsAreRetriedByTheirFirstHopUnlessTheClusterSaysSo) {
  AttemptFacts f = sent_once(kRetry5xx);
  f.nested = true;
  EXPECT_FALSE(retry_permitted(policy(kRetry5xx), f));
  RetryPolicy nested = policy(kRetry5xx | kRetryConnectFailure);
  nested.nested = true;
  EXPECT_TRUE(retry_permitted(nested, f));
  AttemptFacts connect;
  connect.condition = kRetryConnectFailure;
  connect.nested = true;
  connect.attempts = 1;
  EXPECT_TRUE(retry_permitted(policy(kRetryConnectFailure), connect));  // nothing was sent anywhere
}

TEST(RetryDecision, NothingAfterTheClusterDeadline) {
  AttemptFacts f = sent_once(kRetry5xx);
  f.past_deadline = true;
  EXPECT_FALSE(retry_permitted(policy(kRetry5xx), f));
}

TEST(RetryDecision, BackoffBoundDoublesUpToItsMaximum) {
  RetryPolicy r;
  r.backoff_base = Duration(25);
  r.backoff_max = Duration(250);
  EXPECT_EQ(backoff_bound_ms(r, 1), 25u);
  EXPECT_EQ(backoff_bound_ms(r, 2), 50u);
  EXPECT_EQ(backoff_bound_ms(r, 4), 200u);
  EXPECT_EQ(backoff_bound_ms(r, 5), 250u);
  EXPECT_EQ(backoff_bound_ms(r, 60), 250u);
  r.backoff_base = Duration(0);
  EXPECT_EQ(backoff_bound_ms(r, 3), 0u);
}

}  // namespace
}  // namespace pilotfish
