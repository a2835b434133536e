#pragma once
// Strict JSON for what pilotfish reads from outside: JWT headers and payloads (from requests,
// before any signature is checked) and JWKS files. RFC 8259 only (no comments, no trailing
// commas, valid UTF-8 in strings), bounded in size and depth, and an object that names a key
// twice is refused: where parsers differ on which duplicate wins, a service reading the same
// token could see another `sub` than the one pilotfish checked. Never throws.
//
// nlohmann/json (Debian's nlohmann-json3-dev) does the lexing: its SAX interface lets the
// limits and the duplicate check sit inside the parse, and its DOM is convenient for the few
// fields read afterwards. simdjson was the other candidate; it is faster, but it keeps
// duplicate keys silently and these documents are small (and verified tokens are cached).

#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <string_view>

namespace pilotfish {

struct JsonLimits {
  size_t max_bytes = 64 * 1024;
  size_t max_depth = 16;
};

// The document, or nullopt with *error saying why (a fixed text, never a piece of the input).
std::optional<nlohmann::json> parse_json_strict(std::string_view text, const JsonLimits& limits, std::string* error);

}  // namespace pilotfish
