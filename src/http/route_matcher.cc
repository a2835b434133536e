#include "pilotfish/route_matcher.h"

namespace pilotfish {

namespace {
bool headers_match(const RouteMatch& m, const HeaderList& headers) {
  for (const auto& want : m.headers) {
    bool found = false;
    for (size_t i = headers.find(want.name); i != HeaderList::npos; i = headers.find(want.name, i + 1)) {
      if (trim_ows(headers.value(i)) == want.value) {
        found = true;
        break;
      }
    }
    if (!found) return false;
  }
  return true;
}
}  // namespace

const Route* match_route(const Listener& listener, const RequestView& req) {
  for (const auto& route : listener.routes) {
    const RouteMatch& m = route.match;
    if (m.host && *m.host != req.host) continue;
    if (m.method && *m.method != req.method) continue;
    if (m.path_prefix && !req.path.starts_with(*m.path_prefix)) continue;
    if (!m.headers.empty() && (req.headers == nullptr || !headers_match(m, *req.headers))) continue;
    return &route;
  }
  return nullptr;
}

}  // namespace pilotfish
