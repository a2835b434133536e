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
// slashes. Returns nullopt for a target that is not origin-form or has a malformed escape, and
// unless `allow_ambiguous`, for one that servers resolve differently from each other: an
// encoded slash or backslash ("%2F", "%5C"), a backslash, or a dot-segment carrying
// parameters ("/..;/", "/.;x/"). Routing sees exactly the path the upstream receives, so a
// path that one server would resolve to another route is refused rather than guessed at.
std::optional<NormalizedTarget> normalize_target(std::string_view target, bool allow_ambiguous = false);

// The path as a server that drops `;` parameters from each segment sees it (Java servlet
// containers: "/admin;x=1/users" is "/admin/users" to them).
std::string without_path_parameters(std::string_view path);

}  // namespace pilotfish
