#include "pilotfish/route_matcher.h"

#include <algorithm>
#include <vector>

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

std::string describe_match(const RouteMatch& m) {
  std::string out;
  auto add = [&out](std::string_view part) {
    if (!out.empty()) out += ' ';
    out += part;
  };
  if (m.host) add("host=" + *m.host);
  if (m.path_prefix) add("path_prefix=" + *m.path_prefix);
  if (m.method) add("method=" + *m.method);
  // Sorted: every listed header must match, so their order in the file means nothing, and
  // reordering them must not make the route another one.
  std::vector<std::pair<std::string_view, std::string_view>> headers;
  for (const auto& h : m.headers) headers.emplace_back(h.name, h.value);
  std::sort(headers.begin(), headers.end());
  for (const auto& [name, value] : headers) add("header:" + std::string(name) + "=" + std::string(value));
  return out.empty() ? "*" : out;
}

}  // namespace pilotfish
