#include "pilotfish/route_matcher.h"

#include <gtest/gtest.h>

#include <map>

#include "pilotfish/balancer.h"

using namespace pilotfish;

namespace {
Listener make_listener() {
  Listener l;
  Route r1;
  r1.match.host = "recommendations";
  r1.cluster = "recommendations";
  r1.cluster_index = 0;
  Route r2;
  r2.match.path_prefix = "/users/";
  r2.match.method = "GET";
  r2.match.headers.push_back({"x-canary", "1"});
  r2.cluster = "users-canary";
  r2.cluster_index = 1;
  Route r3;
  r3.match.path_prefix = "/users/";
  r3.cluster = "users";
  r3.cluster_index = 2;
  l.routes = {r1, r2, r3};
  return l;
}
const char* route_for(const Listener& l, std::string_view host, std::string_view path, std::string_view method,
                      const HeaderList& h) {
  const Route* r = match_route(l, RequestView{host, path, method, &h});
  return r ? r->cluster.c_str() : "none";
}
}  // namespace

TEST(RouteMatcher, FirstMatchWins) {
  Listener l = make_listener();
  HeaderList none;
  HeaderList canary;
  canary.add("X-Canary", "1");
  HeaderList not_canary;
  not_canary.add("x-canary", "2");
  EXPECT_STREQ(route_for(l, "recommendations", "/users/1", "GET", canary), "recommendations");
  EXPECT_STREQ(route_for(l, "shop", "/users/1", "GET", canary), "users-canary");
  EXPECT_STREQ(route_for(l, "shop", "/users/1", "POST", canary), "users");
  EXPECT_STREQ(route_for(l, "shop", "/users/1", "GET", not_canary), "users");
  EXPECT_STREQ(route_for(l, "shop", "/users/1", "GET", none), "users");
  EXPECT_STREQ(route_for(l, "shop", "/users", "GET", none), "none");
  EXPECT_STREQ(route_for(l, "shop", "/", "GET", none), "none");
}

TEST(RouteMatcher, RouteWithoutMatchTakesEverything) {
  Listener l;
  Route r;
  r.cluster = "all";
  l.routes = {r};
  HeaderList h;
  EXPECT_STREQ(route_for(l, "", "/anything", "DELETE", h), "all");
}

namespace {
Route split(std::vector<std::pair<size_t, uint32_t>> shares) {
  Route r;
  for (auto [index, weight] : shares) {
    r.clusters.push_back({"c" + std::to_string(index), weight, index});
    r.split_total += weight;
  }
  return r;
}
size_t pick(const Route& r, std::string_view key, uint64_t draw) { return r.clusters[pick_split(r, key, draw)].index; }
}  // namespace

TEST(SplitCluster, DrawsFollowTheWeights) {
  Route r = split({{4, 95}, {7, 5}, {9, 0}});
  FastRandom random;
  std::map<size_t, int> seen;
  for (int i = 0; i < 100000; ++i) ++seen[pick(r, "", random.next())];
  EXPECT_EQ(seen.count(9), 0u);  // weight 0: nothing
  // 5% of 100,000 is 5,000; four standard deviations of the binomial are about 275.
  EXPECT_NEAR(seen[7], 5000, 300);
  EXPECT_EQ(seen[4] + seen[7], 100000);
}

TEST(SplitCluster, AKeyKeepsItsClusterAndKeysSpreadByWeight) {
  Route r = split({{0, 50}, {1, 50}});
  std::map<size_t, int> seen;
  for (int i = 0; i < 10000; ++i) {
    std::string key = "user-" + std::to_string(i);
    size_t first = pick(r, key, 0);
    for (uint64_t draw : {1ull, 12345ull, ~0ull}) EXPECT_EQ(pick(r, key, draw), first);  // the draw is ignored
    ++seen[first];
  }
  EXPECT_NEAR(seen[0], 5000, 250);
  // A key on the cluster whose share grows stays there: only keys move towards the growing one.
  Route grown = split({{0, 50}, {1, 60}});
  for (int i = 0; i < 2000; ++i) {
    std::string key = "user-" + std::to_string(i);
    if (pick(r, key, 0) == 1) EXPECT_EQ(pick(grown, key, 0), 1u) << key;
  }
}
