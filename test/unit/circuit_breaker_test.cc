// The holds a request takes on shared state give back exactly what they took, however the
// request ends: released, reassigned, moved or destroyed.
#include "upstream/circuit_breaker.h"

#include <gtest/gtest.h>

#include <optional>
#include <vector>

namespace pilotfish {
namespace {

TEST(BreakerSlot, TakesUpToTheLimitAndGivesBackOnDestruction) {
  auto shared = std::make_shared<ClusterShared>(1);
  {
    std::vector<BreakerSlot> slots(3);
    EXPECT_TRUE(slots[0].take(shared, &ClusterShared::requests, 2));
    EXPECT_TRUE(slots[1].take(shared, &ClusterShared::requests, 2));
    EXPECT_FALSE(slots[2].take(shared, &ClusterShared::requests, 2));  // full
    EXPECT_FALSE(slots[2].held());
    EXPECT_EQ(shared->requests.load(), 2);
    slots[0].release();
    slots[0].release();  // a second release gives back nothing more
    EXPECT_EQ(shared->requests.load(), 1);
    EXPECT_TRUE(slots[2].take(shared, &ClusterShared::requests, 2));
    EXPECT_EQ(shared->requests.load(), 2);
  }
  EXPECT_EQ(shared->requests.load(), 0);
  EXPECT_EQ(shared->retries.load(), 0);
}

TEST(BreakerSlot, TakingAgainOrBeingReplacedGivesTheOldSlotBack) {
  auto shared = std::make_shared<ClusterShared>(1);
  BreakerSlot slot;
  ASSERT_TRUE(slot.take(shared, &ClusterShared::retries, 5));
  ASSERT_TRUE(slot.take(shared, &ClusterShared::retries, 5));
  EXPECT_EQ(shared->retries.load(), 1);
  slot = BreakerSlot();  // a fresh request state in its place
  EXPECT_EQ(shared->retries.load(), 0);
  BreakerSlot a;
  ASSERT_TRUE(a.take(shared, &ClusterShared::retries, 5));
  BreakerSlot b(std::move(a));
  EXPECT_FALSE(a.held());
  EXPECT_TRUE(b.held());
  EXPECT_EQ(shared->retries.load(), 1);
  b = std::move(b);  // self-move keeps it
  EXPECT_EQ(shared->retries.load(), 1);
}

TEST(BreakerSlot, KeepsItsClusterAliveAfterTheClusterLeftThePolicy) {
  std::optional<BreakerSlot> slot(std::in_place);
  std::weak_ptr<ClusterShared> weak;
  {
    auto shared = std::make_shared<ClusterShared>(1);
    weak = shared;
    ASSERT_TRUE(slot->take(shared, &ClusterShared::requests, 1));
  }
  ASSERT_FALSE(weak.expired());
  EXPECT_EQ(weak.lock()->requests.load(), 1);
  slot.reset();
  EXPECT_TRUE(weak.expired());
}

TEST(ProbeClaim, OneProbeAtATimeReleasedOrSettled) {
  auto health = std::make_shared<EndpointHealth>();
  health->state = EndpointHealth::ejected;
  ProbeClaim first, second;
  EXPECT_TRUE(first.claim(health));
  EXPECT_FALSE(second.claim(health));  // another request has the probe
  EXPECT_EQ(health->state.load(), EndpointHealth::probing);
  {
    ProbeClaim moved(std::move(first));
    EXPECT_FALSE(first.held());
  }  // the request ended without a verdict: the next one probes
  EXPECT_EQ(health->state.load(), EndpointHealth::ejected);
  ASSERT_TRUE(second.claim(health));
  health->state = EndpointHealth::ok;  // what recording a success does
  second.settle();
  EXPECT_FALSE(second.held());
  second.release();
  EXPECT_EQ(health->state.load(), EndpointHealth::ok);  // a settled probe is not released
}

TEST(BalancedRequest, CountsOneActiveRequestAtTheEndpointItStartedAt) {
  FastRandom random;
  auto balancer = std::make_unique<Balancer>(LbPolicy::least_request, 3, &random);
  {
    BalancedRequest r;
    r.start(balancer.get(), 2);
    EXPECT_EQ(balancer->active(2), 1u);
    r.start(balancer.get(), 1);  // a retry elsewhere: the first endpoint's count ends
    EXPECT_EQ(balancer->active(2), 0u);
    EXPECT_EQ(balancer->active(1), 1u);
    BalancedRequest other = std::move(r);
    EXPECT_FALSE(r.active());
    EXPECT_EQ(balancer->active(1), 1u);
  }
  EXPECT_EQ(balancer->active(0) + balancer->active(1) + balancer->active(2), 0u);
}

}  // namespace
}  // namespace pilotfish
