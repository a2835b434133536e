#pragma once
// First-match routing of a request to a cluster, over a listener's routes.

#include <cstdint>
#include <string>
#include <string_view>

#include "pilotfish/header_list.h"
#include "pilotfish/policy.h"

namespace pilotfish {

struct RequestView {
  std::string_view host;    // lower case, without port
  std::string_view path;    // normalised
  std::string_view method;  // upper case
  const HeaderList* headers = nullptr;
};

// Returns the first route that matches, or nullptr (404).
const Route* match_route(const Listener& listener, const RequestView& request);

// A route's weighted split: the position (in route.clusters) of the cluster a request goes to.
// With a `key` (the hash_on header's value, or the peer's identity), the same key always picks
// the same cluster while the weights stay; without one, `draw` (uniform over 64 bits) decides.
size_t pick_split(const Route& route, std::string_view key, uint64_t draw);

// What a route matches, as one line: "host=H path_prefix=P method=M header:NAME=VALUE" (headers
// sorted), or "*" for a route that takes everything. It names a route across reloads (the
// policy diff, the buckets of a route's rate limit), wherever the route moves in the list.
std::string describe_match(const RouteMatch& match);

}  // namespace pilotfish
