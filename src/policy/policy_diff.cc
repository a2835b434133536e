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

// Everything is compared through the policy's JSON form (policy_json.h), the same text GET
// /config shows: a key that policy_to_json writes is a key the diff sees, so a key added later
// cannot be missed (rate limits once were). A listener compares without its routes, which are
// reported one by one under "routes".

bool same_listener(const Listener& a, const Listener& b) {
  return listener_to_json(a, false) == listener_to_json(b, false);
}

bool same_cluster(const Cluster& a, const Cluster& b) { return cluster_to_json(a) == cluster_to_json(b); }

// A route is named by its match (describe_match, headers sorted); what else it says is compared.
bool same_route(const Route& a, const Route& b) {
  Route x = a, y = b;
  x.match = y.match = RouteMatch{};
  return route_to_json(x) == route_to_json(y);
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

std::string route_text(const KeyedRoute& r) {
  const Route& route = *r.route;
  if (route.respond) return r.key + " -> respond " + std::to_string(route.respond->status);
  if (route.redirect) return r.key + " -> redirect " + std::to_string(route.redirect->status);
  if (!route.clusters.empty()) {
    std::string out = r.key + " ->";
    for (const auto& c : route.clusters) out += (&c == &route.clusters.front() ? " " : ", ") + c.name + ":" + std::to_string(c.weight);
    return out;
  }
  return r.key + " -> " + route.cluster;
}

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
      else if (!same_route(*was->second, *r.route) || old_rank[r.key] != new_rank[r.key])
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
  auto before = settings_to_json(a), after = settings_to_json(b);
  for (size_t i = 0; i < after.size(); ++i) {
    const std::string& name = after[i].first;
    bool same = before[i].second == after[i].second;
    // policy_history as written (unset, off, or a path), not the effective path: an unset
    // history file sits beside its policy file, and the two policies being compared usually
    // live in different files.
    if (name == "policy_history") same = a.history_path == b.history_path;
    if (!same) out.push_back(name);
  }
  return out;
}

void write_changes(JsonWriter& w, const char* name, const ChangeSet& c) {
  w.key(name).begin_object();
  w.key("added").strings(c.added).key("removed").strings(c.removed).key("modified").strings(c.modified);
  w.end_object();
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
  std::string out;
  JsonWriter w(out);
  w.begin_object();
  write_changes(w, "listeners", d.listeners);
  write_changes(w, "routes", d.routes);
  write_changes(w, "clusters", d.clusters);
  w.key("settings").strings(d.settings);
  w.end_object();
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
