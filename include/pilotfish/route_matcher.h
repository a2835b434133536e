#pragma once
// First-match routing of a request to a cluster, over a listener's routes.

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

}  // namespace pilotfish
