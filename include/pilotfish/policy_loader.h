#pragma once
// The one loader that both `pilotfish check` and `pilotfish run` (and every hot reload) use.
// It never throws: every problem in the file is collected as a PolicyError pointing at the node
// (file, line, column, key path), so an operator sees all of them at once.

#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "pilotfish/policy.h"

namespace pilotfish {

struct PolicyError {
  std::string file;
  int line = 0;    // 1-based; 0 when the problem has no position (unreadable file)
  int column = 0;  // 1-based
  std::string message;  // starts with the key path, e.g. "clusters[1].endpoints: must not be empty"

  // "FILE:LINE:COL: message"
  std::string to_string() const;
};

class Jwks;  // gateway/jwt.h

struct PolicyLoadResult {
  PolicyPtr policy;                   // null when errors is not empty
  // The keys of each JWKS file the policy names, read with it (only with `check_files`): the
  // process hands them to the workers if, and only if, the policy is applied.
  std::map<std::string, std::shared_ptr<const Jwks>> jwks;
  std::vector<PolicyError> errors;
  std::vector<std::string> warnings;  // accepted, but worth a log line
  std::string sha256;                 // of the text read, loaded or not (empty: unreadable)
  bool ok() const { return errors.empty() && policy != nullptr; }
};

// Reads and validates a policy file. Relative paths inside it (identity files, access log)
// resolve against the file's folder. The identity files are read and checked too (see
// tls/identity_files.h): a policy whose certificate is missing, broken or expired does not load.
PolicyLoadResult load_policy_file(const std::string& path);

// The same from text already in memory; `file_name` is used in error positions and `base_dir`
// to resolve relative paths. The identity files are checked only with `check_files`.
PolicyLoadResult load_policy_text(const std::string& text, const std::string& file_name,
                                  const std::string& base_dir, bool check_files = false);

// Every key the loader accepts, by path, "[]" standing for a list's items:
// "listeners[].routes[].auth.jwks". Tests hold docs/policy-reference.yaml and the policy's JSON
// form (policy_json.h, which the policy diff compares) to it, so that a key added to the loader
// cannot be left out of either.
std::vector<std::string> policy_key_paths();

// Parses "250ms", "5s", "2m", "1h", "0". Returns false for anything else.
bool parse_duration(std::string_view text, Duration* out);

// The same, and on failure sets *error to a sentence saying why (no unit, negative, too large).
bool parse_duration(std::string_view text, Duration* out, std::string* error);

// "250ms" style text for logs and /config.
std::string format_duration(Duration d);

}  // namespace pilotfish
