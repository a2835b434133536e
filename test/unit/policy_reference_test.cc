// docs/policy-reference.yaml, the users' annotated reference, against the loader: the reference
// shows every key the loader accepts, and the policy's JSON form (GET /config, and what the
// policy diff compares) writes every one of them. A key added to the loader fails here until
// both have it; once the reference has it, test_cli's diff test changes its value too.

#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "pilotfish/policy_loader.h"
#include "pilotfish_test_paths.h"
#include "policy/policy_json.h"

namespace pilotfish {
namespace {

const std::string kReference = std::string(PILOTFISH_SOURCE_ROOT) + "/docs/policy-reference.yaml";

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// Every key path of a YAML (or JSON) document, "[]" standing for a list's items. Under
// match.headers, respond.headers and a header rule's set and add the keys are header names,
// and under an authorization rule's claims claim names (sub, scope, aud), not policy keys.
void collect_key_paths(const YAML::Node& node, const std::string& prefix, std::set<std::string>& out) {
  if (node.IsMap()) {
    for (const auto& item : node) {
      std::string path = prefix + (prefix.empty() ? "" : ".") + item.first.Scalar();
      out.insert(path);
      bool names = path.ends_with(".match.headers") || path.ends_with(".respond.headers") || path.ends_with(".claims") ||
                   ((path.ends_with(".set") || path.ends_with(".add")) && path.find("_headers.") != std::string::npos);
      if (!names)
        collect_key_paths(item.second, path, out);
    }
  } else if (node.IsSequence()) {
    for (const auto& item : node) collect_key_paths(item, prefix + "[]", out);
  }
}

std::set<std::string> key_paths(const std::string& yaml) {
  std::set<std::string> out;
  collect_key_paths(YAML::Load(yaml), "", out);
  return out;
}

std::set<std::string> accepted_key_paths() {
  const std::vector<std::string> paths = policy_key_paths();
  return {paths.begin(), paths.end()};
}

// The paths of `wanted` that `have` lacks, one a line.
std::string missing(const std::set<std::string>& have, const std::set<std::string>& wanted) {
  std::string out;
  for (const auto& path : wanted)
    if (!have.count(path)) out += "\n  " + path;
  return out;
}

TEST(PolicyReference, ShowsEveryKeyTheLoaderAccepts) {
  const std::string text = read_text(kReference);
  ASSERT_FALSE(text.empty()) << kReference;
  const std::set<std::string> accepted = accepted_key_paths();
  EXPECT_GT(accepted.size(), 80u);
  const std::set<std::string> shown = key_paths(text);
  EXPECT_EQ(missing(shown, accepted), "") << "keys the loader accepts that " << kReference << " does not show";
  EXPECT_EQ(missing(accepted, shown), "") << "keys " << kReference << " shows that the loader does not accept";
}

TEST(PolicyReference, ItsJsonFormWritesEveryKeyTheLoaderAccepts) {
  // Loaded without reading the files it names (identity, JWKS): the keys are the question here.
  const std::string base_dir = std::filesystem::path(kReference).parent_path().string();
  auto result = load_policy_text(read_text(kReference), kReference, base_dir);
  std::string errors;
  for (const auto& e : result.errors) errors += "\n  " + e.to_string();
  ASSERT_TRUE(result.ok()) << errors;
  const std::set<std::string> accepted = accepted_key_paths();
  EXPECT_EQ(missing(key_paths(policy_to_json(*result.policy)), accepted), "")
      << "keys the loader accepts that policy_to_json does not write for " << kReference;
}

}  // namespace
}  // namespace pilotfish
