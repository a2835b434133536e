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

size_t pick_split(const Route& route, std::string_view key, uint64_t draw) {
  uint64_t point = draw;
  if (!key.empty()) {
    // FNV-1a, then a finaliser (splitmix64) so that nearby keys spread over the whole range.
    uint64_t h = 14695981039346656037ull;
    for (char c : key) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebull;
    h ^= h >> 31;
    point = h;
  }
  // The point as a fraction of the whole, scaled to the weights: when one share grows, only the
  // keys next to its edge move, and only towards it (a modulo would reshuffle every key).
  point = static_cast<uint64_t>((static_cast<unsigned __int128>(point) * route.split_total) >> 64);
  for (size_t i = 0; i < route.clusters.size(); ++i) {
    if (point < route.clusters[i].weight) return i;
    point -= route.clusters[i].weight;
  }
  return route.clusters.size() - 1;
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
