#include "pilotfish/balancer.h"

#include <gtest/gtest.h>

#include <map>

using namespace pilotfish;

TEST(Balancer, RoundRobinVisitsEveryEndpointInTurn) {
  FastRandom rnd;
  Balancer b(LbPolicy::round_robin, 3, &rnd);
  int first = b.pick([](size_t) { return true; });
  for (int i = 1; i < 9; ++i) EXPECT_EQ(b.pick([](size_t) { return true; }), (first + i) % 3);
}

TEST(Balancer, SkipsUnusableAndAvoidsExcluded) {
  FastRandom rnd;
  for (auto policy : {LbPolicy::round_robin, LbPolicy::random, LbPolicy::least_request}) {
    Balancer b(policy, 4, &rnd);
    for (int i = 0; i < 200; ++i) {
      int p = b.pick([](size_t e) { return e == 1 || e == 3; }, 3);
      EXPECT_EQ(p, 1);
    }
    EXPECT_EQ(b.pick([](size_t e) { return e == 3; }, 3), 3);  // the excluded one, if it is all there is
    EXPECT_EQ(b.pick([](size_t) { return false; }), -1);
  }
}

TEST(Balancer, RandomSpreadsOverAll) {
  FastRandom rnd;
  Balancer b(LbPolicy::random, 4, &rnd);
  std::map<int, int> seen;
  for (int i = 0; i < 4000; ++i) ++seen[b.pick([](size_t) { return true; })];
  ASSERT_EQ(seen.size(), 4u);
  for (auto& [k, v] : seen) EXPECT_GT(v, 800) << k;
}

TEST(Balancer, LeastRequestPrefersTheIdleEndpoint) {
  FastRandom rnd;
  Balancer b(LbPolicy::least_request, 2, &rnd);
  for (int i = 0; i < 10; ++i) b.on_request_start(0);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(b.pick([](size_t) { return true; }), 1);
  for (int i = 0; i < 10; ++i) b.on_request_end(0);
  b.on_request_start(1);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(b.pick([](size_t) { return true; }), 0);
}
