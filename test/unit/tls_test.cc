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

TEST(SpiffeId, FollowsTheSpecAlphabets) {
  EXPECT_TRUE(spiffe_id_valid("spiffe://shop.local/ns/shop/sa/gateway"));
  EXPECT_TRUE(spiffe_id_valid("spiffe://shop.local"));
  EXPECT_TRUE(spiffe_id_valid("spiffe://shop-1.local_x/A.b-c_d"));
  EXPECT_FALSE(spiffe_id_valid("spiffe://"));
  EXPECT_FALSE(spiffe_id_valid("https://shop.local/x"));
  EXPECT_FALSE(spiffe_id_valid("spiffe://Shop.local/x"));              // trust domains are lower case
  EXPECT_FALSE(spiffe_id_valid("spiffe://shop.local:443/x"));          // no port
  EXPECT_FALSE(spiffe_id_valid("spiffe://user@shop.local/x"));         // no user info
  EXPECT_FALSE(spiffe_id_valid("spiffe://shop.local/x?y"));            // no query
  EXPECT_FALSE(spiffe_id_valid("spiffe://shop.local/x#y"));            // no fragment
  EXPECT_FALSE(spiffe_id_valid("spiffe://shop.local/a//b"));           // no empty segment
  EXPECT_FALSE(spiffe_id_valid("spiffe://shop.local/a/"));             // no trailing slash
  EXPECT_FALSE(spiffe_id_valid("spiffe://shop.local/a/../b"));         // no dot segments
  EXPECT_FALSE(spiffe_id_valid("spiffe://shop.local/a%20b"));          // no escapes
  EXPECT_FALSE(spiffe_id_valid("spiffe://shop.local/a\r\nx-user: admin"));  // no header injection
  EXPECT_FALSE(spiffe_id_valid("spiffe://shop.local/a;URI=spiffe://shop.local/admin"));
}

}  // namespace
}  // namespace pilotfish
