// The golden signals of /stats (server/golden_signals.h): windows from the once-a-second samples
// and percentiles from the histogram's buckets.
#include "server/golden_signals.h"

#include <gtest/gtest.h>

namespace pilotfish {
namespace {

using Routes = std::map<MetricsRegistry::RouteKey, MetricsRegistry::RouteSample>;

MetricsRegistry::RouteSample counts(uint64_t count, uint64_t errors, size_t bucket) {
  MetricsRegistry::RouteSample s;
  s.count = count;
  s.errors = errors;
  s.buckets[bucket] = count;
  return s;
}

TEST(GoldenSignals, PercentilesInterpolateWithinABucket) {
  std::array<uint64_t, kLatencyBuckets.size()> b{};
  EXPECT_EQ(bucket_quantile(0.5, b, 0), -1);
  b[2] = 100;  // (0.5 ms, 1 ms]
  EXPECT_DOUBLE_EQ(bucket_quantile(0.5, b, 100), 0.75);
  EXPECT_DOUBLE_EQ(bucket_quantile(1.0, b, 100), 1.0);
  b[2] = 90;   // 10 answers past the last bound (+Inf): the top finite bound
  EXPECT_DOUBLE_EQ(bucket_quantile(0.99, b, 100), kLatencyBuckets.back() * 1000);
}

TEST(GoldenSignals, TenSecondsAndAMinute) {
  GoldenSignals g;
  MetricsRegistry::RouteKey api{"ingress", "api", "app"};
  MetricsRegistry::RouteKey web{"ingress", "web", "app"};
  g.add_sample(1'000, Routes{});
  g.add_sample(31'000, Routes{{api, counts(100, 0, 2)}});
  g.add_sample(51'000, Routes{{api, counts(300, 50, 2)}, {web, counts(10, 0, 0)}});
  g.add_sample(56'000, Routes{{api, counts(400, 50, 2)}, {web, counts(1000, 10, 0)}});
  auto rows = g.rows();
  ASSERT_EQ(rows.size(), 2u);
  // web is busier over the minute (1000 against 400): first.
  EXPECT_EQ(std::get<1>(rows[0].key), "web");
  const auto& a = rows[1];
  // 10 s: from the newest sample at least 10 s older (31 s): 300 requests in 25 s, none failed.
  EXPECT_EQ(a.last_10s.requests, 300u);
  EXPECT_DOUBLE_EQ(a.last_10s.seconds, 25);
  EXPECT_DOUBLE_EQ(a.last_10s.rate, 12);
  EXPECT_DOUBLE_EQ(a.last_10s.success_rate, 250.0 / 300);
  // 1 min: from the oldest there is (1 s): 400 in 55 s.
  EXPECT_EQ(a.last_1m.requests, 400u);
  EXPECT_DOUBLE_EQ(a.last_1m.seconds, 55);
  EXPECT_DOUBLE_EQ(a.last_1m.p50_ms, 0.75);
  // A route new since the base sample counts from zero.
  EXPECT_EQ(rows[0].last_10s.requests, 1000u);
  std::string json = g.json();
  EXPECT_NE(json.find("\"route\":\"web\""), std::string::npos);
  EXPECT_NE(g.table().find("ingress"), std::string::npos);
}

TEST(GoldenSignals, ACounterThatStartedAgainCountsFromZero) {
  // A route removed by a reload and added back: its counters start from zero.
  GoldenSignals g;
  MetricsRegistry::RouteKey api{"ingress", "api", "app"};
  g.add_sample(0, Routes{{api, counts(1000, 0, 3)}});
  MetricsRegistry::RouteSample after = counts(1000, 0, 0);
  after.buckets[14] = 100;  // 1000 fast ones and 100 slow: more than before in all, fewer in bucket 3
  after.count = 1100;
  g.add_sample(5000, Routes{{api, after}});
  auto w = g.rows()[0].last_10s;
  EXPECT_EQ(w.requests, 1100u);
  EXPECT_LT(w.p50_ms, 1);  // not the 100 slow ones alone
}

TEST(GoldenSignals, AMinuteIsKeptAndNoMore) {
  GoldenSignals g;
  MetricsRegistry::RouteKey api{"ingress", "api", "app"};
  for (uint64_t s = 0; s <= 200; ++s) g.add_sample(s * 1000, Routes{{api, counts(s * 10, 0, 0)}});
  auto rows = g.rows();
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_DOUBLE_EQ(rows[0].last_1m.seconds, 60);
  EXPECT_EQ(rows[0].last_1m.requests, 600u);
  EXPECT_DOUBLE_EQ(rows[0].last_10s.rate, 10);
  // No request in a window: no success rate, no percentiles (null in the JSON).
  GoldenSignals idle;
  idle.add_sample(0, Routes{{api, counts(5, 0, 0)}});
  idle.add_sample(1000, Routes{{api, counts(5, 0, 0)}});
  EXPECT_EQ(idle.rows()[0].last_10s.success_rate, -1);
  EXPECT_NE(idle.json().find("\"success_rate\":null"), std::string::npos);
}

}  // namespace
}  // namespace pilotfish
