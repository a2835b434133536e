#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include "gateway/admission.h"
#include "gateway/jwt.h"
#include "gateway/rate_limit.h"
#include "pilotfish/policy_loader.h"

namespace pilotfish {
namespace {

TEST(RateLimiter, BurstThenRefillAtTheRate) {
  RateLimiter l(2.0, 3);  // 2 per second, burst 3
  uint32_t retry = 0;
  uint64_t t = 1000;
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(l.take("a", t, &retry));
  EXPECT_FALSE(l.take("a", t, &retry));
  EXPECT_EQ(retry, 1u);
  EXPECT_TRUE(l.take("b", t, &retry));  // its own bucket
  EXPECT_FALSE(l.take("a", t + 400, &retry));
  EXPECT_TRUE(l.take("a", t + 500, &retry));  // 0.5 s at 2/s: one token
  EXPECT_FALSE(l.take("a", t + 500, &retry));
  EXPECT_TRUE(l.take("a", t + 10'000, &retry));  // refilled, but never above the burst
  EXPECT_TRUE(l.take("a", t + 10'000, &retry));
  EXPECT_TRUE(l.take("a", t + 10'000, &retry));
  EXPECT_FALSE(l.take("a", t + 10'000, &retry));
}

TEST(RateLimiter, ABucketIdleForAnyLengthOfTimeIsFullAgain) {
  constexpr uint64_t kDay = 86'400'000;
  // 25 and 49 days were the broken ones: a 32-bit millisecond stamp read them as negative time.
  for (uint64_t idle : {uint64_t{60'000}, 25 * kDay, 49 * kDay, 50 * kDay, 100 * kDay, 4 * 365 * kDay,
                        (uint64_t{1} << 32) - 1, uint64_t{1} << 32, (uint64_t{1} << 32) + 5, (uint64_t{1} << 31) + 7}) {
    for (uint64_t start : {uint64_t{1000}, (uint64_t{1} << 32) - 500, 40 * kDay}) {
      RateLimiter l(1.0, 3);
      uint32_t retry = 0;
      for (int i = 0; i < 3; ++i) ASSERT_TRUE(l.take("k", start, &retry));
      ASSERT_FALSE(l.take("k", start, &retry));
      int allowed = 0;
      for (int i = 0; i < 5; ++i) allowed += l.take("k", start + idle, &retry) ? 1 : 0;
      EXPECT_EQ(allowed, 3) << "idle " << idle << " ms from " << start;
    }
  }
}

TEST(RateLimiter, LargeBurstsAreNeverLooser) {
  RateLimiter l(1.0, 4'000'000);  // the largest burst: a coarser unit, rounded against the client
  uint32_t retry = 0;
  uint64_t allowed = 0;
  while (allowed < 5'000'000 && l.take("k", 1000, &retry)) ++allowed;
  EXPECT_LE(allowed, 4'000'000u);
  EXPECT_GT(allowed, 3'000'000u);
}

TEST(RateLimiter, AClockSlightlyBehindAnotherDoesNotRefill) {
  // Two workers' clocks a few milliseconds apart: "earlier" is no time elapsed, not 49 days.
  RateLimiter l(1.0, 3);
  uint32_t retry = 0;
  int allowed = 0;
  for (int i = 0; i < 20; ++i) allowed += l.take("k", i % 2 ? 1002 : 1000, &retry) ? 1 : 0;
  EXPECT_EQ(allowed, 3);
}

TEST(RateLimiter, SlowRatesAccumulateUnderFrequentRequests) {
  RateLimiter l(0.5, 1);  // one token every 2 s
  uint32_t retry = 0;
  EXPECT_TRUE(l.take("k", 1000, &retry));
  int allowed = 0;
  for (uint64_t ms = 1001; ms <= 5000; ms += 1) allowed += l.take("k", ms, &retry) ? 1 : 0;
  EXPECT_EQ(allowed, 2);  // at 3 s and 5 s, although a request came every millisecond
}

TEST(RateLimiter, SharedByThreadsWithoutLosingCount) {
  RateLimiter l(0.001, 1000);
  std::atomic<int> allowed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      uint32_t retry;
      for (int i = 0; i < 1000; ++i) allowed += l.take("same", 5000, &retry) ? 1 : 0;
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(allowed.load(), 1000);  // exactly the burst, over 4 threads and 4000 attempts
}

TEST(Jwt, Base64url) {
  bool ok = false;
  EXPECT_EQ(base64url_decode("aGVsbG8", &ok), "hello");
  EXPECT_TRUE(ok);
  EXPECT_EQ(base64url_decode("_-8", &ok), "\xff\xef");
  EXPECT_TRUE(ok);
  base64url_decode("a+b/", &ok);  // standard base64, not base64url
  EXPECT_FALSE(ok);
  base64url_decode("a", &ok);
  EXPECT_FALSE(ok);
}

TEST(GatewayPolicy, AuthAndRateLimitKeys) {
  auto r = load_policy_text(R"(version: 1
listeners:
  - name: edge
    address: 127.0.0.1:8000
    auth: {jwks: jwks.json, issuer: https://auth, audience: [a, b], subject_header: X-User, clock_skew: 10s}
    rate_limit: {rate: 2.5, key: "header:X-Api-Key"}
    routes:
      - match: {path_prefix: /health}
        cluster: c
        auth: false
        rate_limit: false
      - cluster: c
        rate_limit: {rate: 100, burst: 10, key: peer_identity}
clusters: [{name: c, endpoints: [127.0.0.1:9000]}]
)", "policy.yaml", "/etc/pf");
  ASSERT_TRUE(r.ok()) << r.errors[0].to_string();
  const Listener& l = r.policy->listeners[0];
  ASSERT_TRUE(l.auth);
  EXPECT_EQ(l.auth->jwks, "/etc/pf/jwks.json");
  EXPECT_EQ(l.auth->audiences, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(l.auth->subject_header, "x-user");
  EXPECT_EQ(l.auth->clock_skew.count(), 10'000);
  ASSERT_TRUE(l.rate_limit);
  EXPECT_EQ(l.rate_limit->rate, 2.5);
  EXPECT_EQ(l.rate_limit->burst, 3u);  // default: the rate, rounded up
  EXPECT_EQ(l.rate_limit->key, RateLimitPolicy::Key::header);
  EXPECT_EQ(l.rate_limit->header, "x-api-key");
  EXPECT_TRUE(l.routes[0].auth_off);
  EXPECT_TRUE(l.routes[0].rate_limit_off);
  EXPECT_EQ(l.routes[1].rate_limit->key, RateLimitPolicy::Key::peer_identity);

  auto bad = load_policy_text(R"(version: 1
listeners:
  - name: edge
    address: 127.0.0.1:8000
    auth: {issuer: x}
    rate_limit: {rate: 0, key: cookie}
    routes: [{cluster: c}]
clusters: [{name: c, endpoints: [127.0.0.1:9000]}]
)", "policy.yaml", ".");
  ASSERT_FALSE(bad.ok());
  std::string all;
  for (const auto& e : bad.errors) all += e.to_string() + "\n";
  EXPECT_NE(all.find("listeners[0].auth.jwks: missing"), std::string::npos) << all;
  EXPECT_NE(all.find("listeners[0].rate_limit.rate"), std::string::npos) << all;
  EXPECT_NE(all.find("is not client_address, peer_identity or header:NAME"), std::string::npos) << all;
}

}  // namespace
}  // namespace pilotfish

namespace pilotfish {

namespace {
AuthzRule rule(std::vector<std::string> principals, std::vector<std::string> methods, std::vector<AuthzPath> paths,
               std::vector<std::pair<std::string, std::vector<std::string>>> claims = {}) {
  return AuthzRule{std::move(principals), std::move(methods), std::move(paths), std::move(claims)};
}
bool ok(const Authorization& a, const std::string& peer, std::string_view method, std::string_view path,
        const Admission& token = Admission{}) {
  return authorized(a, AuthzRequest{peer, method, path, token});
}
}  // namespace

TEST(Authorization, DenyFirstThenAllowEveryGivenFieldMustMatch) {
  Authorization a;
  a.deny.push_back(rule({}, {"DELETE"}, {{"/orders/", true}}));
  a.allow.push_back(rule({"spiffe://shop/ns/shop/sa/*"}, {}, {}));
  a.allow.push_back(rule({}, {"GET"}, {{"/health", false}}));
  EXPECT_TRUE(ok(a, "spiffe://shop/ns/shop/sa/payments", "POST", "/orders/1"));
  EXPECT_FALSE(ok(a, "spiffe://shop/ns/shop/sa/payments", "DELETE", "/orders/1"));  // deny first
  EXPECT_FALSE(ok(a, "spiffe://shop/ns/shop/sa/payments", "delete", "/orders/1"));  // whatever the case
  EXPECT_TRUE(ok(a, "", "GET", "/health"));
  EXPECT_FALSE(ok(a, "", "GET", "/health/x"));  // exact
  EXPECT_FALSE(ok(a, "", "POST", "/health"));
  EXPECT_FALSE(ok(a, "spiffe://other/ns/x/sa/y", "GET", "/orders/1"));
  Authorization deny_only;
  deny_only.deny.push_back(rule({}, {}, {{"/admin", true}}));
  EXPECT_TRUE(ok(deny_only, "", "GET", "/a"));  // no allow rules: what is not denied goes
  EXPECT_FALSE(ok(deny_only, "", "GET", "/admin/x"));
}

TEST(Authorization, SemicolonParametersAreSeenBothWays) {
  Authorization deny;
  deny.deny.push_back(rule({}, {}, {{"/internal/", true}}));
  EXPECT_FALSE(ok(deny, "", "GET", "/internal;jsessionid=1/x"));
  EXPECT_FALSE(ok(deny, "", "GET", "/internal;/x"));
  EXPECT_TRUE(ok(deny, "", "GET", "/internalx;a/x"));
  Authorization allow;
  allow.allow.push_back(rule({}, {}, {{"/public/", true}}));
  EXPECT_TRUE(ok(allow, "", "GET", "/public/a;v=1"));
  EXPECT_FALSE(ok(allow, "", "GET", "/public;x/a"));  // "/public;x/a" is another resource to other servers
}

TEST(Authorization, ClaimsNeedAVerifiedToken) {
  Authorization a;
  a.allow.push_back(rule({}, {}, {}, {{"scope", {"admin"}}, {"aud", {"shop"}}}));
  Admission token;
  token.token_verified = true;
  token.scopes = {"read", "admin"};
  token.audiences = {"shop", "other"};
  EXPECT_TRUE(ok(a, "", "GET", "/", token));
  token.audiences = {"other"};
  EXPECT_FALSE(ok(a, "", "GET", "/", token));  // every claim given must match
  token.audiences = {"shop"};
  token.token_verified = false;
  EXPECT_FALSE(ok(a, "", "GET", "/", token));
  Authorization by_sub;
  by_sub.allow.push_back(rule({}, {}, {}, {{"sub", {"root"}}}));
  Admission root;
  root.token_verified = true;
  root.has_subject = true;
  root.subject = "root";
  EXPECT_TRUE(ok(by_sub, "", "GET", "/", root));
  root.has_subject = false;
  EXPECT_FALSE(ok(by_sub, "", "GET", "/", root));
}

}  // namespace pilotfish
