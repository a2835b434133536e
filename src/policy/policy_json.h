#pragma once
// The running policy as JSON, for GET /config: every key with its effective value (defaults
// filled in), durations as "250ms"-style strings, as an operator would write them.

#include <string>
#include <utility>
#include <vector>

#include "json/json_writer.h"
#include "pilotfish/policy.h"

namespace pilotfish {

std::string policy_to_json(const Policy& policy);

// The parts of policy_to_json, which the policy diff compares, so that a key written there is
// a key the diff sees: each top-level setting as (name, JSON value) in the order written, with
// nested settings named by their path ("admin.address") and unset ones as null; a listener
// (with or without its routes); a route; a cluster.
std::vector<std::pair<std::string, std::string>> settings_to_json(const Policy& policy);
std::string listener_to_json(const Listener& listener, bool with_routes);
std::string route_to_json(const Route& route);
std::string cluster_to_json(const Cluster& cluster);


}  // namespace pilotfish
