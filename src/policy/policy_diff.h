#pragma once
// What changed between two policies, for `pilotfish check --against OLD`, the reload log line and
// the events of /policy/history: an operator reviewing a policy change wants
// to see which listeners, routes and clusters it touches before it goes out, not a text diff of
// two YAML files that may differ only in comments or key order.
//
// Both policies are compared as loaded (policy_loader.h): names and addresses as written, every
// default filled in, so a key written out with its default value is not a change.

#include <string>
#include <vector>

#include "pilotfish/policy.h"

namespace pilotfish {

struct ChangeSet {
  std::vector<std::string> added;     // in the order of the new policy
  std::vector<std::string> removed;   // in the order of the old policy
  std::vector<std::string> modified;  // in the order of the new policy
  bool empty() const { return added.empty() && removed.empty() && modified.empty(); }
};

// Every comparison goes through the policy's JSON form (policy_json.h): whatever policy_to_json
// writes, the diff compares, so no key can be left out of it.
struct PolicyDiff {
  ChangeSet listeners;  // by name; "modified" = any key but routes differs
  ChangeSet routes;     // "<listener>: <match> -> <cluster>", only for listeners in both policies;
                        // "modified" = any key (cluster, auth, rate_limit...) or its place differs
  ChangeSet clusters;   // by name; "modified" = any key differs
  // Top-level keys whose value changed, in the order of settings_to_json: "version", "service",
  // "admin.address", "admin.read_only_address", "workers", "log_level", "drain_timeout",
  // "drain_delay", "policy_history", "policy_watch", "wait_for_clusters", "access_log",
  // "identity".
  std::vector<std::string> settings;
  bool empty() const { return listeners.empty() && routes.empty() && clusters.empty() && settings.empty(); }
};

PolicyDiff diff_policies(const Policy& before, const Policy& after);

// {"listeners":{"added":[...],"removed":[...],"modified":[...]},"routes":{...},"clusters":{...},
//  "settings":[...]}: every key always present, on one line.
std::string diff_to_json(const PolicyDiff& diff);

// One line per category that changed ("listeners: +new, -old, ~changed"; "settings: log_level"),
// or "no changes". No trailing newline.
std::string diff_to_text(const PolicyDiff& diff);

}  // namespace pilotfish
