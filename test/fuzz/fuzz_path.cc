// Path normalisation and first-match routing: no crash, and what normalisation returns is a
// fixed point (normalising it again changes nothing), starts with '/', and holds no dot-segment
// and no empty segment but a final one, in both modes.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "pilotfish/path_normalizer.h"
#include "pilotfish/policy_loader.h"
#include "pilotfish/route_matcher.h"

namespace {

const pilotfish::Listener& listener() {
  static const auto policy = [] {
    auto r = pilotfish::load_policy_text(
        "version: 1\nlisteners:\n  - name: l\n    address: 127.0.0.1:0\n    routes:\n"
        "      - {match: {path_prefix: /admin}, cluster: a}\n"
        "      - {match: {path_prefix: /public/, method: GET}, cluster: a}\n"
        "      - {match: {host: api.local, headers: {x-v: '2'}}, cluster: a}\n"
        "      - {cluster: a}\n"
        "clusters: [{name: a, endpoints: [127.0.0.1:1]}]\n",
        "fuzz.yaml", ".", false);
    if (!r.ok()) std::abort();
    return r.policy;
  }();
  return policy->listeners[0];
}

void check(const std::string& target, bool allow_ambiguous) {
  auto n = pilotfish::normalize_target(target, allow_ambiguous);
  if (!n) return;
  const std::string& path = n->path;
  if (path.empty() || path[0] != '/') std::abort();
  if (path.find("//") != std::string::npos || path.find("/./") != std::string::npos ||
      path.find("/../") != std::string::npos)
    std::abort();
  auto again = pilotfish::normalize_target(path + n->query, allow_ambiguous);
  if (!again || again->path != path || again->query != n->query) std::abort();
  pilotfish::RequestView view{"api.local", path, "GET", nullptr};
  pilotfish::match_route(listener(), view);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string target(reinterpret_cast<const char*>(data), size);
  check(target, false);
  check(target, true);
  return 0;
}
