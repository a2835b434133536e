#pragma once
// Request-target normalisation, applied before routing and to what the upstream receives, so
// that "/public/../admin", "/%61dmin" and "//admin" all meet the rules for "/admin".

#include <optional>
#include <string>
#include <string_view>

namespace pilotfish {

struct NormalizedTarget {
  std::string path;   // normalised path, starts with '/'
  std::string query;  // including the leading '?', or empty
};

// Accepts origin-form targets ("/a/b?q"). Decodes percent-encoded unreserved characters,
// upper-cases the hex of the rest, removes dot-segments (RFC 3986 5.2.4) and merges repeated
// slashes. Returns nullopt for a target that is not origin-form or has a malformed escape.
std::optional<NormalizedTarget> normalize_target(std::string_view target);

}  // namespace pilotfish
