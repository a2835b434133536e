// A request's way to a cluster, without bytes: endpoint choice and probes, retry decisions with
// their budget and max_retries slot, the keep-alive race resend, deadlines, and everything a
// request holds going back when it ends.
#include "upstream/upstream_request.h"

#include <gtest/gtest.h>
#include <uv.h>

#include <memory>
#include <optional>

#include "pilotfish/socket_address.h"
#include "unit/loop_host.h"
#include "upstream/retry_decision.h"

namespace pilotfish {
namespace {

class UpstreamRequestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    uv_loop_init(&loop_);
    host_ = std::make_unique<LoopHost>(&loop_);
    cluster_.name = "backend";
    cluster_.retry.retries = 2;
    cluster_.retry.on = kRetryConnectFailure | kRetryReset | kRetry5xx;
    cluster_.retry.budget_min_per_second = 1000;
    cluster_.circuit_breaker.max_retries = 1;
    cluster_.circuit_breaker.max_requests = 2;
    cluster_.outlier_detection.consecutive_failures = 1;
    cluster_.outlier_detection.max_ejection_percent = 100;
    cs_.name = "backend";
    cs_.stats = std::make_shared<ClusterStats>();
    cs_.shared = std::make_shared<ClusterShared>(1);
    cs_.balancer = std::make_unique<Balancer>(LbPolicy::round_robin, 2, &random_);
    for (const char* text : {"127.0.0.1:1", "127.0.0.1:2"}) {
      std::string error;
      SocketAddress a = *parse_socket_address(text, &error);
      cluster_.endpoints.push_back(a);
      cs_.endpoints.push_back(a);
      cs_.pools.push_back(std::make_shared<EndpointPool>(*host_, a, cluster_, cs_.stats, cs_.shared));
      cs_.health.push_back(std::make_shared<EndpointHealth>());
    }
  }
  void TearDown() override {
    cs_.pools.clear();
    host_.reset();
    uv_run(&loop_, UV_RUN_DEFAULT);
    EXPECT_EQ(uv_loop_close(&loop_), 0);
  }

  uv_loop_t loop_;
  std::unique_ptr<LoopHost> host_;
  FastRandom random_;
  Cluster cluster_;
  ClusterState cs_;
};

TEST_F(UpstreamRequestTest, ARetryAvoidsTheEndpointTriedLast) {
  UpstreamRequest r;
  ASSERT_TRUE(r.choose_endpoint(cs_, 1000));
  int first = r.endpoint;
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(r.choose_endpoint(cs_, 1000));
    EXPECT_NE(r.endpoint, first);
    first = r.endpoint;
  }
}

TEST_F(UpstreamRequestTest, AnEjectedEndpointTakesOneProbeAndNoOtherRequestUntilItsVerdict) {
  {
    UpstreamRequest failing;
    failing.endpoint = 0;
    EXPECT_TRUE(failing.verdict(cs_, cluster_, /*ok=*/false, 1000));  // one failure ejects here
  }
  EXPECT_EQ(cs_.stats->outlier_ejections.load(), 1u);
  // While ejected, only endpoint 1 is chosen.
  for (int i = 0; i < 4; ++i) {
    UpstreamRequest r;
    ASSERT_TRUE(r.choose_endpoint(cs_, 1000));
    EXPECT_EQ(r.endpoint, 1);
  }
  // Its time is up: the first request to choose it is its probe; a second request cannot take it.
  uint64_t later = 1000 + static_cast<uint64_t>(cluster_.outlier_detection.max_ejection_time.count()) + 1;
  std::optional<UpstreamRequest> probe;
  for (int i = 0; i < 4 && !probe; ++i) {
    UpstreamRequest r;
    ASSERT_TRUE(r.choose_endpoint(cs_, later));
    if (r.endpoint == 0) probe.emplace(std::move(r));
  }
  ASSERT_TRUE(probe);
  EXPECT_TRUE(probe->probe.held());
  for (int i = 0; i < 4; ++i) {
    UpstreamRequest r;
    ASSERT_TRUE(r.choose_endpoint(cs_, later));
    EXPECT_EQ(r.endpoint, 1);
  }
  // The probe's request ends without a verdict: the endpoint may be probed again.
  probe.reset();
  EXPECT_TRUE(cs_.health[0]->needs_probe());
}

TEST_F(UpstreamRequestTest, NoEndpointWhenAllAreEjected) {
  for (int e : {0, 1}) {
    UpstreamRequest r;
    r.endpoint = e;
    r.verdict(cs_, cluster_, false, 1000);
  }
  UpstreamRequest r;
  EXPECT_FALSE(r.choose_endpoint(cs_, 1001));
  EXPECT_EQ(r.endpoint, -1);
}

TEST_F(UpstreamRequestTest, RetriesStopAtThePolicyAndAtMaxRetriesAndTheSlotGoesBackWithTheRequest) {
  auto a = std::make_unique<UpstreamRequest>();
  a->attempts = 1;
  EXPECT_FALSE(a->may_retry(cs_, cluster_, kRetryGatewayError, true, 1000, 0));  // not a condition of the policy
  EXPECT_TRUE(a->may_retry(cs_, cluster_, kRetryConnectFailure, true, 1000, 0));
  EXPECT_EQ(cs_.shared->retries.load(), 1);
  a->attempts = 3;  // retries: 2 used up
  EXPECT_FALSE(a->may_retry(cs_, cluster_, kRetryConnectFailure, true, 1000, 0));

  UpstreamRequest b;  // max_retries is 1, and `a` holds it
  b.attempts = 1;
  EXPECT_FALSE(b.may_retry(cs_, cluster_, kRetryReset, true, 1000, 0));
  EXPECT_TRUE(b.retry_overflow);
  a.reset();
  EXPECT_EQ(cs_.shared->retries.load(), 0);
  UpstreamRequest c;
  c.attempts = 1;
  EXPECT_TRUE(c.may_retry(cs_, cluster_, kRetryReset, true, 1000, 0));
  c.answer_chosen();  // the answer goes to the client: the retry slot is free again
  EXPECT_EQ(cs_.shared->retries.load(), 0);
  EXPECT_EQ(cs_.stats->retries.load(), 2u);
}

TEST_F(UpstreamRequestTest, ARequestWithABodyNotKeptIsNotSentTwice) {
  UpstreamRequest r;
  r.attempts = 1;
  r.sent = true;
  r.replayable = false;
  EXPECT_FALSE(r.may_retry(cs_, cluster_, kRetryReset, true, 1000, 0));
  r.connection_reused = true;
  EXPECT_FALSE(r.may_resend_after_race(true, true));
}

TEST_F(UpstreamRequestTest, TheKeepAliveRaceResendHappensOnceAndOnlyBeforeAnyResponseByte) {
  UpstreamRequest r;
  r.attempts = 1;
  r.connection_reused = true;
  EXPECT_FALSE(r.may_resend_after_race(/*idempotent=*/false, true));
  EXPECT_FALSE(r.may_resend_after_race(true, /*request_complete=*/false));
  EXPECT_TRUE(r.may_resend_after_race(true, true));
  EXPECT_EQ(r.attempts, 0);  // the resend takes the lost attempt's place
  EXPECT_FALSE(r.may_resend_after_race(true, true));  // once
  UpstreamRequest s;
  s.connection_reused = true;
  s.response_bytes_seen = true;
  EXPECT_FALSE(s.may_resend_after_race(true, true));
  UpstreamRequest fresh;  // a new connection that failed is not the race
  EXPECT_FALSE(fresh.may_resend_after_race(true, true));
}

TEST_F(UpstreamRequestTest, DeadlinesAndTheRequestSlot) {
  cluster_.timeout = Duration{5000};
  cluster_.retry.per_try_timeout = Duration{700};
  UpstreamRequest r;
  ASSERT_TRUE(r.take_request_slot(cs_, cluster_));
  r.start_deadlines(cluster_, 1000);  // no connection yet: no attempt to time
  EXPECT_EQ(r.deadline_ms, 6000u);
  EXPECT_EQ(r.try_deadline_ms, 0u);
  r.start_try_deadline(cluster_, 1200);
  r.backoff_until_ms = 1500;
  EXPECT_EQ(r.next_deadline_ms(), 1500u);
  r.backoff_until_ms = 0;
  EXPECT_EQ(r.next_deadline_ms(), 1900u);
  // Past the cluster deadline nothing is retried.
  r.attempts = 1;
  EXPECT_FALSE(r.may_retry(cs_, cluster_, kRetryReset, true, 6000, 0));
  r.answer_chosen();
  EXPECT_EQ(r.next_deadline_ms(), 0u);

  UpstreamRequest second;
  ASSERT_TRUE(second.take_request_slot(cs_, cluster_));
  UpstreamRequest third;  // max_requests is 2
  EXPECT_FALSE(third.take_request_slot(cs_, cluster_));
  r.release_holds();
  EXPECT_TRUE(third.take_request_slot(cs_, cluster_));
}

TEST_F(UpstreamRequestTest, BackoffIsWithinTheBound) {
  cluster_.retry.backoff_base = Duration{10};
  cluster_.retry.backoff_max = Duration{40};
  UpstreamRequest r;
  for (int attempts = 1; attempts <= 5; ++attempts) {
    r.attempts = attempts;
    uint64_t bound = backoff_bound_ms(cluster_.retry, attempts);
    for (int i = 0; i < 50; ++i) EXPECT_LT(r.backoff_ms(cluster_, random_), bound);
  }
}

TEST_F(UpstreamRequestTest, AfterAFailedConnectALocalFailureIsOverloadedAndTheEndpointNotBlamed) {
  UpstreamRequest r;
  ASSERT_TRUE(r.choose_endpoint(cs_, 1000));
  r.attempts = 1;
  AttemptScope at{cs_, cluster_, 1000, 0, true};
  NextStep next = r.after_connect_failure(at, UV_EMFILE);
  EXPECT_EQ(next.kind, NextStep::answer);
  EXPECT_EQ(next.status, 503);
  EXPECT_STREQ(next.error, "overloaded");
  EXPECT_EQ(cs_.health[static_cast<size_t>(r.endpoint)]->consecutive_failures.load(), 0u);
  EXPECT_EQ(cs_.stats->retries.load(), 0u);

  UpstreamRequest t;
  ASSERT_TRUE(t.choose_endpoint(cs_, 1000));
  t.attempts = 1;
  EXPECT_EQ(t.after_connect_failure(at, UV_ECONNREFUSED).kind, NextStep::retry);
  t.attempts = 3;  // no retry left
  next = t.after_connect_failure(at, UV_ETIMEDOUT);
  EXPECT_EQ(next.kind, NextStep::answer);
  EXPECT_STREQ(next.error, "connect_timeout");
  EXPECT_EQ(cs_.stats->upstream_connect_failure.load(), 3u);
}

TEST_F(UpstreamRequestTest, AResetBeforeAnyResponseIsResentOnceOnTheRaceThenRetriedThen502) {
  UpstreamRequest r;
  ASSERT_TRUE(r.choose_endpoint(cs_, 1000));
  r.attempts = 1;
  r.connection_reused = true;
  AttemptScope at{cs_, cluster_, 1000, 0, true};
  EXPECT_EQ(r.after_reset(at, false, /*idempotent=*/true).kind, NextStep::resend);
  r.attempts = 1;
  EXPECT_EQ(r.after_reset(at, false, true).kind, NextStep::retry);  // the race only once
  r.attempts = 3;
  NextStep next = r.after_reset(at, false, true);
  EXPECT_EQ(next.status, 502);
  EXPECT_STREQ(next.error, "upstream_reset");
  UpstreamRequest tls;
  tls.endpoint = 0;
  tls.attempts = 3;
  next = tls.after_reset(at, /*tls_refused=*/true, true);
  EXPECT_STREQ(next.error, "upstream_tls_failure");
}

TEST_F(UpstreamRequestTest, AFinalResponseIsPassedOnOrRetriedOrOverloaded) {
  AttemptScope at{cs_, cluster_, 1000, 0, true};
  UpstreamRequest a;
  a.endpoint = 0;
  a.attempts = 1;
  EXPECT_EQ(a.after_response(at, 503).kind, NextStep::retry);  // 5xx is a condition here
  EXPECT_TRUE(a.retry_slot.held());
  a.attempts = 2;
  EXPECT_EQ(a.after_response(at, 200).kind, NextStep::pass);
  EXPECT_FALSE(a.retry_slot.held());  // the answer was chosen
  EXPECT_EQ(a.next_deadline_ms(), 0u);

  UpstreamRequest holder;  // takes the one max_retries slot
  holder.endpoint = 1;
  holder.attempts = 1;
  ASSERT_EQ(holder.after_response(at, 502).kind, NextStep::retry);
  UpstreamRequest b;
  b.endpoint = 1;
  b.attempts = 1;
  NextStep next = b.after_response(at, 500);
  EXPECT_EQ(next.kind, NextStep::answer);
  EXPECT_EQ(next.status, 503);
  EXPECT_STREQ(next.error, "overloaded");
  EXPECT_EQ(b.after_response(at, 404).kind, NextStep::pass);  // not a retry condition
}

TEST_F(UpstreamRequestTest, APerTryTimeoutIsRetriedThenAnswered504AndTheClusterDeadline504) {
  AttemptScope at{cs_, cluster_, 1000, 0, true};
  UpstreamRequest r;
  r.endpoint = 0;
  r.attempts = 1;
  r.try_deadline_ms = 900;
  EXPECT_EQ(r.after_try_timeout(at).kind, NextStep::retry);
  EXPECT_EQ(r.try_deadline_ms, 0u);
  r.attempts = 3;
  NextStep next = r.after_try_timeout(at);
  EXPECT_EQ(next.status, 504);
  EXPECT_EQ(cs_.stats->upstream_timeout.load(), 2u);
  uint32_t failures = cs_.health[1]->consecutive_failures.load();
  UpstreamRequest d;
  d.endpoint = 1;
  next = d.after_deadline(at, /*endpoint_had_it=*/false);
  EXPECT_EQ(next.status, 504);
  EXPECT_STREQ(next.error, "timeout");
  EXPECT_EQ(cs_.health[1]->consecutive_failures.load(), failures);  // not blamed
}

}  // namespace
}  // namespace pilotfish
