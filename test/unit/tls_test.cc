#include <gtest/gtest.h>

#include "tls/tls.h"

namespace pilotfish {
namespace {

TEST(IdentityAllowed, EmptyListAdmitsAnyVerifiedPeer) {
  EXPECT_TRUE(identity_allowed({}, "spiffe://shop.local/ns/shop/sa/gateway"));
}

TEST(IdentityAllowed, ExactEntriesMatchExactly) {
  std::vector<std::string> allow = {"spiffe://shop.local/ns/shop/sa/gateway"};
  EXPECT_TRUE(identity_allowed(allow, "spiffe://shop.local/ns/shop/sa/gateway"));
  EXPECT_FALSE(identity_allowed(allow, "spiffe://shop.local/ns/shop/sa/gateway2"));
  EXPECT_FALSE(identity_allowed(allow, "spiffe://shop.local/ns/shop/sa/gatewa"));
  EXPECT_FALSE(identity_allowed(allow, "spiffe://other.local/ns/shop/sa/gateway"));
  EXPECT_FALSE(identity_allowed(allow, ""));
}

TEST(IdentityAllowed, TrailingStarMatchesAnyRest) {
  std::vector<std::string> allow = {"spiffe://shop.local/ns/shop/sa/orders-*"};
  EXPECT_TRUE(identity_allowed(allow, "spiffe://shop.local/ns/shop/sa/orders-v2"));
  EXPECT_TRUE(identity_allowed(allow, "spiffe://shop.local/ns/shop/sa/orders-"));
  EXPECT_FALSE(identity_allowed(allow, "spiffe://shop.local/ns/shop/sa/orders"));
  EXPECT_FALSE(identity_allowed(allow, "spiffe://shop.local/ns/shop/sa/payments"));
}

TEST(IdentityAllowed, AnyEntryOfSeveral) {
  std::vector<std::string> allow = {"spiffe://a.local/x", "spiffe://b.local/*"};
  EXPECT_TRUE(identity_allowed(allow, "spiffe://a.local/x"));
  EXPECT_TRUE(identity_allowed(allow, "spiffe://b.local/anything/at/all"));
  EXPECT_FALSE(identity_allowed(allow, "spiffe://c.local/x"));
}

}  // namespace
}  // namespace pilotfish
