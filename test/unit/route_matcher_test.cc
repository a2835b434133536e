#include "pilotfish/route_matcher.h"

#include <gtest/gtest.h>

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
