// The policy change summary behind `pilotfish check --against`: what counts as a change to a
// listener, a route, a cluster and a top-level setting, how routes are named, and both renderings.
// Policies are built by the real loader, as `check` does, so defaults are filled in as in use.

#include "policy/policy_diff.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "pilotfish/policy_loader.h"

namespace pilotfish {
namespace {

using Strings = std::vector<std::string>;

constexpr const char* kBase =
    "version: 1\n"
    "service: shop\n"
    "listeners:\n"
    "  - name: inbound\n"
    "    address: 127.0.0.1:15006\n"
    "    routes:\n"
    "      - cluster: app\n"
    "  - name: outbound\n"
    "    address: 127.0.0.1:15001\n"
    "    routes:\n"
    "      - match: {host: users}\n"
    "        cluster: users\n"
    "      - match: {host: recommendations}\n"
    "        cluster: recommendations\n"
    "clusters:\n"
    "  - name: app\n"
    "    endpoints: [127.0.0.1:8080]\n"
    "  - name: users\n"
    "    endpoints: [127.0.0.1:8081]\n"
    "  - name: recommendations\n"
    "    endpoints: [127.0.0.1:8082]\n";

std::string replaced(std::string text, const std::string& from, const std::string& to) {
  size_t at = text.find(from);
  EXPECT_NE(at, std::string::npos) << "test bug: '" << from << "' not in the policy";
  if (at != std::string::npos) text.replace(at, from.size(), to);
  return text;
}

// A copy, so that nothing dangles once the load result is gone.
Policy load(const std::string& yaml) {
  auto result = load_policy_text(yaml, "test.yaml", "");
  std::string errors;
  for (const auto& e : result.errors) errors += "\n  " + e.to_string();
  EXPECT_TRUE(result.ok()) << "the test policy does not load:" << errors;
  return result.policy ? *result.policy : Policy{};
}

PolicyDiff diff(const std::string& before, const std::string& after) {
  return diff_policies(load(before), load(after));
}

TEST(PolicyDiff, IdenticalPoliciesHaveNoChanges) {
  PolicyDiff d = diff(kBase, kBase);
  EXPECT_TRUE(d.empty());
  EXPECT_TRUE(d.listeners.empty());
  EXPECT_TRUE(d.routes.empty());
  EXPECT_TRUE(d.clusters.empty());
  EXPECT_TRUE(d.settings.empty());
  EXPECT_EQ(diff_to_text(d), "no changes");
  EXPECT_EQ(diff_to_json(d), R"({"listeners":{"added":[],"removed":[],"modified":[]},)"
                             R"("routes":{"added":[],"removed":[],"modified":[]},)"
                             R"("clusters":{"added":[],"removed":[],"modified":[]},"settings":[]})");
}

TEST(PolicyDiff, DefaultsWrittenOutAndCommentsAreNoChange) {
  // The loaded policies are compared, not the text: spelling a default out changes nothing.
  std::string after = replaced(kBase, "    address: 127.0.0.1:15006\n",
                               "    address: 127.0.0.1:15006   # the app's port\n"
                               "    header_timeout: 10s\n"
                               "    protocol: http\n");
  after = replaced(after, "service: shop\n", "service: shop\nlog_level: info\ndrain_timeout: 30s\n");
  after =
      replaced(after, "    endpoints: [127.0.0.1:8080]\n", "    endpoints: [127.0.0.1:8080]\n    lb: round_robin\n");
  EXPECT_TRUE(diff(kBase, after).empty()) << diff_to_text(diff(kBase, after));
}

TEST(PolicyDiff, ListenerAddedAndRemoved) {
  std::string after = replaced(kBase,
                               "  - name: inbound\n"
                               "    address: 127.0.0.1:15006\n",
                               "  - name: metrics-in\n"
                               "    address: 127.0.0.1:15090\n");
  PolicyDiff d = diff(kBase, after);
  EXPECT_EQ(d.listeners.added, Strings{"metrics-in"});
  EXPECT_EQ(d.listeners.removed, Strings{"inbound"});
  EXPECT_TRUE(d.listeners.modified.empty());
  // The routes of a listener that came or went are not listed one by one.
  EXPECT_TRUE(d.routes.empty()) << diff_to_text(d);
  EXPECT_TRUE(d.clusters.empty());
  EXPECT_TRUE(d.settings.empty());
}

TEST(PolicyDiff, ListenerModifiedByAddress) {
  PolicyDiff d = diff(kBase, replaced(kBase, "127.0.0.1:15001", "127.0.0.1:15002"));
  EXPECT_TRUE(d.listeners.added.empty());
  EXPECT_TRUE(d.listeners.removed.empty());
  EXPECT_EQ(d.listeners.modified, Strings{"outbound"});
  EXPECT_TRUE(d.routes.empty());
}

TEST(PolicyDiff, ListenerPortZeroIsComparedAsWritten) {
  // Two policies both asking for port 0 ask for the same thing, whatever the kernel picks later.
  std::string before = replaced(kBase, "127.0.0.1:15001", "127.0.0.1:0");
  EXPECT_TRUE(diff(before, before).empty());
  EXPECT_EQ(diff(kBase, before).listeners.modified, Strings{"outbound"});
}

TEST(PolicyDiff, ListenerModifiedByTimeoutOrLimit) {
  PolicyDiff d = diff(
      kBase, replaced(kBase, "    address: 127.0.0.1:15006\n", "    address: 127.0.0.1:15006\n    idle_timeout: 5s\n"));
  EXPECT_EQ(d.listeners.modified, Strings{"inbound"});
  d = diff(kBase, replaced(kBase, "    address: 127.0.0.1:15001\n",
                           "    address: 127.0.0.1:15001\n    max_body_bytes: 1024\n"));
  EXPECT_EQ(d.listeners.modified, Strings{"outbound"});
}

TEST(PolicyDiff, RateLimitsAreChanges) {
  // Once missed: only a rate_limit changed, and the diff said "no changes".
  std::string limited = replaced(kBase, "    address: 127.0.0.1:15006\n",
                                 "    address: 127.0.0.1:15006\n    rate_limit: {rate: 5}\n");
  PolicyDiff d = diff(limited, replaced(limited, "rate: 5", "rate: 1"));
  EXPECT_EQ(d.listeners.modified, Strings{"inbound"}) << diff_to_text(d);
  std::string route = replaced(kBase, "        cluster: users\n", "        cluster: users\n        rate_limit: {rate: 5}\n");
  d = diff(route, replaced(route, "rate: 5", "rate: 1"));
  EXPECT_EQ(d.routes.modified, Strings{"outbound: host=users -> users"}) << diff_to_text(d);
  EXPECT_TRUE(d.listeners.empty());
}

TEST(PolicyDiff, LargeNumbersKeepEveryDigit) {
  // Written as doubles, these two limits were the same number, and the change was missed.
  std::string big = replaced(kBase, "    address: 127.0.0.1:15006\n",
                             "    address: 127.0.0.1:15006\n    max_body_bytes: 18446744073709551615\n");
  PolicyDiff d = diff(big, replaced(big, "18446744073709551615", "18446744073709551614"));
  EXPECT_EQ(d.listeners.modified, Strings{"inbound"}) << diff_to_text(d);
}

TEST(PolicyDiff, RouteChangesDoNotModifyTheirListener) {
  PolicyDiff d = diff(kBase, replaced(kBase, "        cluster: users\n", "        cluster: app\n"));
  EXPECT_TRUE(d.listeners.empty()) << diff_to_text(d);
  EXPECT_EQ(d.routes.modified, Strings{"outbound: host=users -> app"});
}

TEST(PolicyDiff, RouteAddedRemovedAndModified) {
  std::string after = replaced(kBase,
                               "      - match: {host: users}\n"
                               "        cluster: users\n"
                               "      - match: {host: recommendations}\n"
                               "        cluster: recommendations\n",
                               "      - match: {path_prefix: /v2/}\n"
                               "        cluster: users\n"
                               "      - match: {host: recommendations}\n"
                               "        cluster: app\n");
  PolicyDiff d = diff(kBase, after);
  EXPECT_EQ(d.routes.added, Strings{"outbound: path_prefix=/v2/ -> users"});
  EXPECT_EQ(d.routes.removed, Strings{"outbound: host=users -> users"});
  EXPECT_EQ(d.routes.modified, Strings{"outbound: host=recommendations -> app"});
  EXPECT_TRUE(d.listeners.empty());
  EXPECT_TRUE(d.clusters.empty());
}

TEST(PolicyDiff, RoutesThatSwapPlacesAreModified) {
  // The first match wins: the same routes in another order can route differently.
  std::string swapped = replaced(kBase,
                                 "      - match: {host: users}\n"
                                 "        cluster: users\n"
                                 "      - match: {host: recommendations}\n"
                                 "        cluster: recommendations\n",
                                 "      - match: {host: recommendations}\n"
                                 "        cluster: recommendations\n"
                                 "      - match: {host: users}\n"
                                 "        cluster: users\n");
  PolicyDiff d = diff(kBase, swapped);
  EXPECT_EQ(d.routes.modified, (Strings{"outbound: host=recommendations -> recommendations", "outbound: host=users -> users"}));
  EXPECT_TRUE(d.routes.added.empty());
  EXPECT_TRUE(d.routes.removed.empty());
}

TEST(PolicyDiff, RouteWithoutMatchIsStar) {
  PolicyDiff d = diff(kBase, replaced(kBase, "      - cluster: app\n", "      - cluster: users\n"));
  EXPECT_EQ(d.routes.modified, Strings{"inbound: * -> users"});

  std::string with_catch_all =
      std::string(kBase).insert(std::string(kBase).find("clusters:\n"), "      - cluster: app\n");
  d = diff(kBase, with_catch_all);
  EXPECT_EQ(d.routes.added, Strings{"outbound: * -> app"});
  d = diff(with_catch_all, kBase);
  EXPECT_EQ(d.routes.removed, Strings{"outbound: * -> app"});
}

TEST(PolicyDiff, MatchFieldsInFixedOrderWithHeadersSorted) {
  // Written in another order than the key lists them; headers sorted by name, because every one
  // must match and their order in the file means nothing.
  std::string after = replaced(kBase, "      - match: {host: users}\n",
                               "      - match:\n"
                               "          headers: {x-tenant: blue, x-canary: \"1\"}\n"
                               "          method: GET\n"
                               "          path_prefix: /v2/\n"
                               "          host: users\n"
                               "        cluster: users\n"
                               "      - match: {host: users}\n");
  PolicyDiff d = diff(kBase, after);
  EXPECT_EQ(
      d.routes.added,
      Strings{"outbound: host=users path_prefix=/v2/ method=GET header:x-canary=1 header:x-tenant=blue -> users"});
  EXPECT_TRUE(d.routes.removed.empty());
  EXPECT_TRUE(d.routes.modified.empty());

  std::string reordered = replaced(after, "{x-tenant: blue, x-canary: \"1\"}", "{x-canary: \"1\", x-tenant: blue}");
  EXPECT_TRUE(diff(after, reordered).empty()) << diff_to_text(diff(after, reordered));
}

TEST(PolicyDiff, DuplicateMatchesGetANumber) {
  const std::string twice = replaced(kBase, "        cluster: recommendations\n",
                                     "        cluster: recommendations\n"
                                     "      - match: {host: users}\n"
                                     "        cluster: app\n");
  PolicyDiff d = diff(kBase, twice);
  EXPECT_EQ(d.routes.added, Strings{"outbound: host=users #2 -> app"});
  EXPECT_TRUE(d.routes.modified.empty()) << diff_to_text(d);

  // The second occurrence's cluster changing is a change to "#2", not to the first route.
  d = diff(twice, replaced(twice, "        cluster: app\n", "        cluster: recommendations\n"));
  EXPECT_TRUE(d.routes.added.empty());
  EXPECT_TRUE(d.routes.removed.empty());
  EXPECT_EQ(d.routes.modified, Strings{"outbound: host=users #2 -> recommendations"});

  d = diff(twice, kBase);
  EXPECT_EQ(d.routes.removed, Strings{"outbound: host=users #2 -> app"});
}

TEST(PolicyDiff, ClusterAddedAndRemoved) {
  std::string after = replaced(kBase,
                               "  - name: recommendations\n"
                               "    endpoints: [127.0.0.1:8082]\n",
                               "  - name: users-v2\n"
                               "    endpoints: [127.0.0.1:8083]\n");
  after = replaced(after, "        cluster: recommendations\n", "        cluster: users-v2\n");
  PolicyDiff d = diff(kBase, after);
  EXPECT_EQ(d.clusters.added, Strings{"users-v2"});
  EXPECT_EQ(d.clusters.removed, Strings{"recommendations"});
  EXPECT_TRUE(d.clusters.modified.empty());
  EXPECT_EQ(d.routes.modified, Strings{"outbound: host=recommendations -> users-v2"});
}

TEST(PolicyDiff, ClusterModifiedByEndpointsOrRetry) {
  PolicyDiff d = diff(kBase, replaced(kBase, "[127.0.0.1:8081]", "[127.0.0.1:8081, 127.0.0.1:9081]"));
  EXPECT_EQ(d.clusters.modified, Strings{"users"});
  EXPECT_TRUE(d.clusters.added.empty());
  EXPECT_TRUE(d.clusters.removed.empty());

  d = diff(kBase, replaced(kBase, "    endpoints: [127.0.0.1:8082]\n",
                           "    endpoints: [127.0.0.1:8082]\n    retry: {retries: 3}\n"));
  EXPECT_EQ(d.clusters.modified, Strings{"recommendations"});

  d = diff(kBase, replaced(kBase, "    endpoints: [127.0.0.1:8080]\n",
                           "    endpoints: [127.0.0.1:8080]\n    retry: {on: [connect-failure, reset]}\n"));
  EXPECT_EQ(d.clusters.modified, Strings{"app"});
  EXPECT_TRUE(d.listeners.empty());
  EXPECT_TRUE(d.routes.empty());
}

TEST(PolicyDiff, SettingsInFixedOrder) {
  PolicyDiff d =
      diff(kBase, replaced(kBase, "service: shop\n", "service: shop\ndrain_timeout: 5s\nlog_level: debug\n"));
  EXPECT_EQ(d.settings, (Strings{"log_level", "drain_timeout"}));
  EXPECT_TRUE(d.listeners.empty());
  EXPECT_TRUE(d.routes.empty());
  EXPECT_TRUE(d.clusters.empty());

  d = diff(kBase, replaced(kBase, "service: shop\n", "service: cart\nworkers: 2\naccess_log: off\n"));
  EXPECT_EQ(d.settings, (Strings{"service", "workers", "access_log"}));
}

TEST(PolicyDiff, OrderFollowsTheNewPolicyAndRemovedTheOldOne) {
  std::string before = std::string(kBase) +
                       "  - name: zeta\n    endpoints: [127.0.0.1:9001]\n"
                       "  - name: alpha\n    endpoints: [127.0.0.1:9002]\n";
  std::string after = replaced(kBase, "  - name: app\n",
                               "  - name: new-b\n    endpoints: [127.0.0.1:9003]\n"
                               "  - name: app\n") +
                      "  - name: new-a\n    endpoints: [127.0.0.1:9004]\n";
  PolicyDiff d = diff(before, after);
  EXPECT_EQ(d.clusters.added, (Strings{"new-b", "new-a"}));
  EXPECT_EQ(d.clusters.removed, (Strings{"zeta", "alpha"}));
}

TEST(PolicyDiff, JsonExact) {
  std::string after = replaced(kBase, "127.0.0.1:15006", "127.0.0.1:15007");
  after = replaced(after, "        cluster: users\n", "        cluster: app\n");
  after = replaced(after, "service: shop\n", "service: shop\nlog_level: warn\n");
  EXPECT_EQ(diff_to_json(diff(kBase, after)),
            R"({"listeners":{"added":[],"removed":[],"modified":["inbound"]},)"
            R"("routes":{"added":[],"removed":[],"modified":["outbound: host=users -> app"]},)"
            R"("clusters":{"added":[],"removed":[],"modified":[]},"settings":["log_level"]})");
}

TEST(PolicyDiff, JsonEscapesStrings) {
  PolicyDiff d;
  d.routes.added = {"web: header:x-q=\"a\\b\" -> c"};
  EXPECT_EQ(diff_to_json(d), R"({"listeners":{"added":[],"removed":[],"modified":[]},)"
                             R"("routes":{"added":["web: header:x-q=\"a\\b\" -> c"],"removed":[],"modified":[]},)"
                             R"("clusters":{"added":[],"removed":[],"modified":[]},"settings":[]})");
}

TEST(PolicyDiff, TextExact) {
  std::string after = replaced(kBase, "  - name: inbound\n", "  - name: metrics-in\n");
  after = replaced(after,
                   "      - match: {host: users}\n"
                   "        cluster: users\n"
                   "      - match: {host: recommendations}\n"
                   "        cluster: recommendations\n",
                   "      - match: {path_prefix: /v2/}\n"
                   "        cluster: users-v2\n"
                   "      - match: {host: users}\n"
                   "        cluster: users\n"
                   "      - match: {host: recommendations}\n"
                   "        cluster: app\n");
  after += "  - name: users-v2\n    endpoints: [127.0.0.1:8083]\n";
  after = replaced(after, "[127.0.0.1:8082]", "[127.0.0.1:8084]");
  after = replaced(after, "service: shop\n", "service: shop\ndrain_timeout: 10s\nlog_level: error\n");
  EXPECT_EQ(diff_to_text(diff(kBase, after)),
            "listeners: +metrics-in, -inbound\n"
            "routes: +outbound: path_prefix=/v2/ -> users-v2, ~outbound: host=recommendations -> app\n"
            "clusters: +users-v2, ~recommendations\n"
            "settings: log_level, drain_timeout");
}

TEST(PolicyDiff, TextLeavesOutCategoriesWithoutChanges) {
  PolicyDiff d;
  d.clusters.removed = {"old"};
  EXPECT_EQ(diff_to_text(d), "clusters: -old");
  d = PolicyDiff{};
  d.settings = {"workers"};
  EXPECT_EQ(diff_to_text(d), "settings: workers");
}

}  // namespace
}  // namespace pilotfish
