#include "policy/policy_diff.h"

#include <algorithm>
#include <optional>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "pilotfish/route_matcher.h"
#include "policy/policy_json.h"

namespace pilotfish {
namespace {

// Field by field rather than through policy.h's types: policy.h belongs to the data path and
// carries no comparison operators. A field added to Listener or Cluster must be added here too,
// or a change to it would go unreported.

bool same_addresses(const std::vector<SocketAddress>& a, const std::vector<SocketAddress>& b) {
  // SocketAddress compares by its text: as written (normalised), never a kernel-chosen port.
  return a == b;
}

// Everything but name (the identity) and routes (reported one by one under "routes").
bool same_listener(const Listener& a, const Listener& b) {
  return a.address.text == b.address.text && a.intercept == b.intercept && a.protocol == b.protocol &&
         a.passthrough == b.passthrough &&
         a.mtls == b.mtls && a.allow == b.allow && a.header_timeout == b.header_timeout &&
         a.body_timeout == b.body_timeout && a.idle_timeout == b.idle_timeout &&
         a.max_header_bytes == b.max_header_bytes && a.max_body_bytes == b.max_body_bytes;
}

bool same_retry(const RetryPolicy& a, const RetryPolicy& b) {
  return a.retries == b.retries && a.on == b.on && a.status_codes == b.status_codes &&
         a.per_try_timeout == b.per_try_timeout && a.backoff_base == b.backoff_base && a.backoff_max == b.backoff_max &&
         a.budget_ratio == b.budget_ratio && a.budget_min_per_second == b.budget_min_per_second && a.nested == b.nested;
}

bool same_cluster(const Cluster& a, const Cluster& b) {
  const CircuitBreakerLimits &ba = a.circuit_breaker, &bb = b.circuit_breaker;
  const OutlierDetection &oa = a.outlier_detection, &ob = b.outlier_detection;
  return same_addresses(a.endpoints, b.endpoints) && same_addresses(a.vips, b.vips) &&
         a.mtls == b.mtls && a.lb == b.lb &&
         a.connect_timeout == b.connect_timeout && a.timeout == b.timeout && a.idle_timeout == b.idle_timeout &&
         same_retry(a.retry, b.retry) && ba.max_connections == bb.max_connections &&
         ba.max_pending_requests == bb.max_pending_requests && ba.max_requests == bb.max_requests &&
         ba.max_retries == bb.max_retries && oa.consecutive_failures == ob.consecutive_failures &&
         oa.base_ejection_time == ob.base_ejection_time && oa.max_ejection_time == ob.max_ejection_time &&
         oa.max_ejection_percent == ob.max_ejection_percent;
}

bool same_identity(const std::optional<Identity>& a, const std::optional<Identity>& b) {
  if (a.has_value() != b.has_value()) return false;
  return !a || (a->cert == b->cert && a->key == b->key && a->ca == b->ca);
}

// Named elements (listeners, clusters): added and modified in `after`'s order, removed in
// `before`'s. Names are unique within a policy (the loader refuses duplicates).
template <typename T, typename Same>
ChangeSet diff_named(const std::vector<T>& before, const std::vector<T>& after, Same same) {
  std::unordered_map<std::string_view, const T*> old_by_name, new_by_name;
  for (const T& item : before) old_by_name.emplace(item.name, &item);
  for (const T& item : after) new_by_name.emplace(item.name, &item);
  ChangeSet out;
  for (const T& item : after) {
    auto old = old_by_name.find(item.name);
    if (old == old_by_name.end())
      out.added.push_back(item.name);
    else if (!same(*old->second, item))
      out.modified.push_back(item.name);
  }
  for (const T& item : before)
    if (!new_by_name.count(item.name)) out.removed.push_back(item.name);
  return out;
}

struct KeyedRoute {
  std::string key;  // "<listener>: <match>", with " #N" for the Nth route of the same match
  const Route* route;
};

std::vector<KeyedRoute> keyed_routes(const Listener& listener) {
  std::vector<KeyedRoute> out;
  std::unordered_map<std::string, int> seen;
  for (const Route& route : listener.routes) {
    std::string key = listener.name + ": " + describe_match(route.match);
    // A repeated match can never be reached (first match wins), but it is valid and must still
    // get a key of its own, or its cluster change would be folded into the first one's.
    int n = ++seen[key];
    if (n > 1) key += " #" + std::to_string(n);
    out.push_back({std::move(key), &route});
  }
  return out;
}

std::string route_text(const KeyedRoute& r) { return r.key + " -> " + r.route->cluster; }

// Routes of listeners present in both policies; an added or removed listener already says its
// routes came or went.
ChangeSet diff_routes(const Policy& before, const Policy& after) {
  std::unordered_map<std::string_view, const Listener*> old_by_name, new_by_name;
  for (const Listener& l : before.listeners) old_by_name.emplace(l.name, &l);
  for (const Listener& l : after.listeners) new_by_name.emplace(l.name, &l);
  ChangeSet out;
  for (const Listener& listener : after.listeners) {
    auto old = old_by_name.find(listener.name);
    if (old == old_by_name.end()) continue;
    std::unordered_map<std::string, const Route*> old_routes;
    std::vector<std::string> old_order;  // keys of the old routes, in order
    for (auto& r : keyed_routes(*old->second)) {
      old_order.push_back(r.key);
      old_routes.emplace(std::move(r.key), r.route);
    }
    std::vector<KeyedRoute> now = keyed_routes(listener);
    // The first matching route wins, so a route that moved relative to the routes kept on both
    // sides can change what matches: it counts as modified.
    std::unordered_map<std::string, size_t> new_rank;
    for (const auto& r : now)
      if (old_routes.count(r.key)) new_rank.emplace(r.key, new_rank.size());
    std::unordered_map<std::string, size_t> old_rank;
    for (const auto& key : old_order)
      if (new_rank.count(key)) old_rank.emplace(key, old_rank.size());
    for (const auto& r : now) {
      auto was = old_routes.find(r.key);
      if (was == old_routes.end())
        out.added.push_back(route_text(r));
      else if (was->second->cluster != r.route->cluster || old_rank[r.key] != new_rank[r.key])
        out.modified.push_back(route_text(r));
    }
  }
  for (const Listener& listener : before.listeners) {
    auto now = new_by_name.find(listener.name);
    if (now == new_by_name.end()) continue;
    std::unordered_map<std::string, const Route*> new_routes;
    for (auto& r : keyed_routes(*now->second)) new_routes.emplace(std::move(r.key), r.route);
    for (const auto& r : keyed_routes(listener))
      if (!new_routes.count(r.key)) out.removed.push_back(route_text(r));
  }
  return out;
}

std::vector<std::string> diff_settings(const Policy& a, const Policy& b) {
  std::vector<std::string> out;
  auto check = [&out](bool same, const char* name) {
    if (!same) out.push_back(name);
  };
  check(a.service == b.service, "service");
  check(a.admin_address.text == b.admin_address.text, "admin.address");
  check(a.workers == b.workers, "workers");
  check(a.log_level == b.log_level, "log_level");
  check(a.drain_timeout == b.drain_timeout, "drain_timeout");
  check(a.drain_delay == b.drain_delay, "drain_delay");
  // As written (unset, off, or a path), not the effective path: an unset history file sits
  // beside its policy file, and the two policies being compared usually live in different files.
  check(a.history_path == b.history_path, "policy_history");
  check(a.watch == b.watch, "policy_watch");
  check(a.wait_for_clusters == b.wait_for_clusters, "wait_for_clusters");
  check(a.access_log.target == b.access_log.target &&
            (a.access_log.target != AccessLogTarget::file || a.access_log.path == b.access_log.path),
        "access_log");
  check(same_identity(a.identity, b.identity), "identity");
  return out;
}

void append_json_changes(std::string& out, const ChangeSet& c) {
  out += "{\"added\":";
  json_string_array(out, c.added);
  out += ",\"removed\":";
  json_string_array(out, c.removed);
  out += ",\"modified\":";
  json_string_array(out, c.modified);
  out += '}';
}

void append_text_line(std::string& out, std::string_view category, const ChangeSet& c) {
  if (c.empty()) return;
  if (!out.empty()) out += '\n';
  out += category;
  out += ": ";
  bool first = true;
  auto add = [&](char sign, const std::vector<std::string>& list) {
    for (const auto& item : list) {
      if (!first) out += ", ";
      first = false;
      out += sign;
      out += item;
    }
  };
  add('+', c.added);
  add('-', c.removed);
  add('~', c.modified);
}

}  // namespace

PolicyDiff diff_policies(const Policy& before, const Policy& after) {
  PolicyDiff d;
  d.listeners = diff_named(before.listeners, after.listeners, same_listener);
  d.routes = diff_routes(before, after);
  d.clusters = diff_named(before.clusters, after.clusters, same_cluster);
  d.settings = diff_settings(before, after);
  return d;
}

std::string diff_to_json(const PolicyDiff& d) {
  std::string out = "{\"listeners\":";
  append_json_changes(out, d.listeners);
  out += ",\"routes\":";
  append_json_changes(out, d.routes);
  out += ",\"clusters\":";
  append_json_changes(out, d.clusters);
  out += ",\"settings\":";
  json_string_array(out, d.settings);
  out += '}';
  return out;
}

std::string diff_to_text(const PolicyDiff& d) {
  if (d.empty()) return "no changes";
  std::string out;
  append_text_line(out, "listeners", d.listeners);
  append_text_line(out, "routes", d.routes);
  append_text_line(out, "clusters", d.clusters);
  if (!d.settings.empty()) {
    if (!out.empty()) out += '\n';
    out += "settings: ";
    for (size_t i = 0; i < d.settings.size(); ++i) {
      if (i) out += ", ";
      out += d.settings[i];
    }
  }
  return out;
}

}  // namespace pilotfish
