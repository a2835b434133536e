// The shared resilience primitives: the retry budget's window, outlier ejection with its cap and
// growing durations, the half-open probe that exactly one caller may claim, and the breaker
// counters.

#include "upstream/resilience.h"

#include "pilotfish/socket_address.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

namespace pilotfish {
namespace {

OutlierDetection detection(uint32_t failures, int base_ms, int max_ms, uint32_t percent) {
  OutlierDetection od;
  od.consecutive_failures = failures;
  od.base_ejection_time = Duration{base_ms};
  od.max_ejection_time = Duration{max_ms};
  od.max_ejection_percent = percent;
  return od;
}

TEST(RetryBudget, RatioOfRequestsPlusAFloorOverTenSeconds) {
  RetryBudget budget(2);
  uint64_t t = 100'000;
  // No requests yet: the floor alone, min_per_second x 10 = 10 retries.
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(budget.allows_retry(t, 0.2, 1)) << i;
    budget.record_retry(i % 2, t);
  }
  EXPECT_FALSE(budget.allows_retry(t, 0.2, 1));
  // 100 requests over both workers raise it by 20.
  for (int i = 0; i < 100; ++i) budget.record_request(i % 2, t + 500);
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(budget.allows_retry(t + 500, 0.2, 1)) << i;
    budget.record_retry(0, t + 500);
  }
  EXPECT_FALSE(budget.allows_retry(t + 500, 0.2, 1));
  // Ten seconds later all of it has left the window.
  EXPECT_TRUE(budget.allows_retry(t + 10'600, 0.2, 0.1));
  EXPECT_FALSE(budget.allows_retry(t + 10'600, 0.2, 0));
}

TEST(RetryBudget, OldBucketsAreReusedNotAdded) {
  RetryBudget budget(1);
  for (uint64_t s = 0; s < 30; ++s) budget.record_request(0, 1'000'000 + s * 1000);  // one a second
  // Only the last 10 seconds count: 10 requests, ratio 0.5 -> 5 retries.
  uint64_t now = 1'000'000 + 29 * 1000;
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(budget.allows_retry(now, 0.5, 0)) << i;
    budget.record_retry(0, now);
  }
  EXPECT_FALSE(budget.allows_retry(now, 0.5, 0));
}

TEST(OutlierEjection, ConsecutiveFailuresEjectForGrowingTimes) {
  ClusterShared cluster(1);
  EndpointHealth h;
  auto od = detection(3, 1000, 2500, 100);
  EXPECT_FALSE(record_endpoint_failure(h, cluster, od, 2, 0));
  record_endpoint_success(h, cluster);  // a success in between starts the count again
  EXPECT_FALSE(record_endpoint_failure(h, cluster, od, 2, 0));
  EXPECT_FALSE(record_endpoint_failure(h, cluster, od, 2, 0));
  EXPECT_TRUE(record_endpoint_failure(h, cluster, od, 2, 0));
  EXPECT_EQ(h.state.load(), EndpointHealth::ejected);
  EXPECT_EQ(cluster.ejected.load(), 1);
  EXPECT_FALSE(h.may_try(999));
  EXPECT_TRUE(h.may_try(1000));
  // Half-open: one claim wins; the probe fails: ejected again, for 2 x base.
  ASSERT_TRUE(h.claim_probe());
  EXPECT_FALSE(h.claim_probe());
  EXPECT_FALSE(h.may_try(1000));
  EXPECT_TRUE(record_endpoint_failure(h, cluster, od, 2, 1000));
  EXPECT_EQ(h.ejections.load(), 2u);
  EXPECT_FALSE(h.may_try(2999));
  EXPECT_TRUE(h.may_try(3000));
  // Third time: capped at max_ejection_time.
  ASSERT_TRUE(h.claim_probe());
  EXPECT_TRUE(record_endpoint_failure(h, cluster, od, 2, 3000));
  EXPECT_FALSE(h.may_try(5499));
  EXPECT_TRUE(h.may_try(5500));
  EXPECT_EQ(cluster.ejected.load(), 1);  // still the one endpoint
  // A probe that succeeds restores it.
  ASSERT_TRUE(h.claim_probe());
  record_endpoint_success(h, cluster);
  EXPECT_EQ(h.state.load(), EndpointHealth::ok);
  EXPECT_EQ(cluster.ejected.load(), 0);
  EXPECT_TRUE(h.may_try(0));
}

TEST(OutlierEjection, NeverMoreThanThePercentButAlwaysOne) {
  ClusterShared cluster(1);
  auto od = detection(1, 1000, 10000, 50);
  EndpointHealth a, b, c;
  EXPECT_TRUE(record_endpoint_failure(a, cluster, od, 4, 0));
  EXPECT_TRUE(record_endpoint_failure(b, cluster, od, 4, 0));
  EXPECT_FALSE(record_endpoint_failure(c, cluster, od, 4, 0));  // 2 of 4 is the 50%
  EXPECT_EQ(c.state.load(), EndpointHealth::ok);
  EXPECT_EQ(cluster.ejected.load(), 2);

  ClusterShared single(1);
  EndpointHealth only;
  EXPECT_TRUE(record_endpoint_failure(only, single, detection(1, 1000, 10000, 0), 1, 0));
}

TEST(OutlierEjection, AnAbandonedProbeIsHandedOn) {
  ClusterShared cluster(1);
  EndpointHealth h;
  ASSERT_TRUE(record_endpoint_failure(h, cluster, detection(1, 1000, 10000, 100), 1, 0));
  ASSERT_TRUE(h.claim_probe());
  h.release_probe(1500);
  EXPECT_TRUE(h.may_try(1500));
  EXPECT_TRUE(h.claim_probe());
}

TEST(OutlierEjection, ExactlyOneOfManyThreadsClaimsTheProbe) {
  ClusterShared cluster(2);
  EndpointHealth h;
  ASSERT_TRUE(record_endpoint_failure(h, cluster, detection(1, 0, 0, 100), 1, 0));
  std::atomic<int> winners{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i)
    threads.emplace_back([&] {
      for (int k = 0; k < 1000; ++k)
        if (h.may_try(0) && h.claim_probe()) winners.fetch_add(1);
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(winners.load(), 1);
}

TEST(CircuitBreaker, TryTakeStopsAtTheLimitAcrossThreads) {
  std::atomic<int64_t> counter{0};
  std::atomic<int> taken{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i)
    threads.emplace_back([&] {
      for (int k = 0; k < 100; ++k)
        if (ClusterShared::try_take(counter, 50)) taken.fetch_add(1);
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(taken.load(), 50);
  EXPECT_EQ(counter.load(), 50);
  ClusterShared::give_back(counter);
  EXPECT_TRUE(ClusterShared::try_take(counter, 50));
  EXPECT_FALSE(ClusterShared::try_take(counter, 50));
}


TEST(ResilienceRegistry, AnEjectedEndpointThatLeavesThePolicyNoLongerCounts) {
  ResilienceRegistry registry(1);
  Policy policy;
  Cluster c;
  c.name = "app";
  std::string err;
  c.endpoints = {*parse_socket_address("127.0.0.1:1", &err), *parse_socket_address("127.0.0.1:2", &err)};
  policy.clusters.push_back(c);
  auto shared = registry.cluster("app");
  auto gone = registry.endpoint("app", "127.0.0.1:2");
  auto od = detection(1, 1000, 10000, 50);
  ASSERT_TRUE(record_endpoint_failure(*gone, *shared, od, 2, 0));
  EXPECT_EQ(shared->ejected.load(), 1);
  // The reload drops 127.0.0.1:2: the cluster may eject another endpoint again.
  policy.clusters[0].endpoints.pop_back();
  registry.keep_only(policy);
  EXPECT_EQ(shared->ejected.load(), 0);
  EXPECT_EQ(registry.find_endpoint("app", "127.0.0.1:2"), nullptr);
  // A request of the old snapshot that fails there afterwards changes nothing.
  EXPECT_FALSE(record_endpoint_failure(*gone, *shared, od, 2, 0));
  EXPECT_EQ(shared->ejected.load(), 0);
  auto kept = registry.endpoint("app", "127.0.0.1:1");
  EXPECT_TRUE(record_endpoint_failure(*kept, *shared, od, 1, 0));
}

}  // namespace
}  // namespace pilotfish
