#pragma once
// The running policy as JSON, for GET /config: every key with its effective value (defaults
// filled in), durations as "250ms"-style strings, as an operator would write them.

#include <string>
#include <vector>

#include "pilotfish/policy.h"

namespace pilotfish {

std::string policy_to_json(const Policy& policy);

// Small JSON writing helpers shared by the admin answers.
void json_string(std::string& out, std::string_view s);
void json_string_array(std::string& out, const std::vector<std::string>& items);

}  // namespace pilotfish
