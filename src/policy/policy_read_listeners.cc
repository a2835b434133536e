// The policy reader's listeners: each listener, its allow list, its routes and their match,
// and the auth and rate_limit blocks a listener or a route can have.

#include "policy/policy_reader.h"
#include "gateway/jwt.h"
#include "pilotfish/header_rules.h"
#include "pilotfish/path_normalizer.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

namespace pilotfish::policy_detail {

namespace {

constexpr Choice<Protocol> kProtocols[] = {{"http", Protocol::http}, {"tcp", Protocol::tcp}};
constexpr Choice<Intercept> kIntercepts[] = {
    {"none", Intercept::none}, {"inbound", Intercept::inbound}, {"outbound", Intercept::outbound}};

std::string upper(std::string_view text) {
  std::string out(text);
  for (char& c : out)
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  return out;
}

// An HTTP token (RFC 9110 tchar): what header names and methods are made of.
bool is_http_token(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
    if (!ok) return false;
  }
  return true;
}

constexpr size_t kMaxDirectBodyBytes = 65536;
constexpr uint64_t kMaxWeight = 1'000'000;
constexpr size_t kMaxHeaderValueBytes = 8192;

// What a policy may not set on a message: what frames it, says how the connection goes, or is
// pilotfish's own marking.
bool is_reserved_header(std::string_view name) {
  static constexpr std::string_view kReserved[] = {
      "content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection", "upgrade",
      "te", "trailer", "host"};
  for (std::string_view r : kReserved)
    if (name == r) return true;
  return name.starts_with("x-pilotfish-") || name.starts_with(":");
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Listeners and routes

void PolicyReader::read_listeners(const Field& field) {
  auto items = open_list(field);
  if (!items) return;
  if (items->empty()) error(field.position, field.path, "must list at least one listener");
  for (const Field& item : *items) read_listener(item);
}

void PolicyReader::read_listener(const Field& field) {
  auto section = open_section(field, kListenerKeys);
  if (!section) return;
  Listener listener;
  ListenerSource source;
  source.path = field.path;

  if (const Field* f = require(*section, "name", "every listener needs a name")) {
    if (auto name = read_name(*f)) {
      listener.name = *name;
      auto [existing, inserted] = listener_names_.emplace(*name, field.path);
      if (!inserted) error(f->position, f->path, quote(*name) + " is already the name of " + existing->second);
    }
  }
  if (const Field* f = require(*section, "address", "every listener needs an address to bind")) {
    if (auto address = read_address(*f, /*for_binding=*/true)) {
      listener.address = *address;
      check_bind_address(*address, f->path, f->position);
    }
  }
  if (const Field* f = section->find("protocol")) {
    if (auto protocol = read_choice(*f, kProtocols)) listener.protocol = *protocol;
  }
  if (const Field* f = section->find("intercept")) {
    if (auto intercept = read_choice(*f, kIntercepts)) {
      listener.intercept = *intercept;
      if (*intercept != Intercept::none) {
        auto [existing, inserted] = interceptors_.emplace(*intercept, field.path);
        if (!inserted) {
          error(f->position, f->path,
                "only one listener may intercept " + f->node.Scalar() + " traffic; " + existing->second +
                    " already does");
        }
      }
    }
  }
  if (const Field* f = section->find("passthrough")) {
    if (auto on = read_bool(*f)) listener.passthrough = *on;
    if (listener.intercept != Intercept::outbound)
      error(f->position, f->path, "only applies to a listener with intercept: outbound");
  }
  if (const Field* f = section->find("auth")) read_auth(*f, listener.auth, nullptr);
  if (const Field* f = section->find("rate_limit")) read_rate_limit(*f, listener.rate_limit, nullptr);
  const Field* mtls_field = section->find("mtls");
  std::optional<bool> mtls = mtls_field ? read_bool(*mtls_field) : std::optional<bool>(false);
  if (mtls) {
    listener.mtls = *mtls;
    if (*mtls) require_identity(mtls_field->position, mtls_field->path);
  }
  if (const Field* f = section->find("allow")) {
    read_allow(*f, listener);
    // Without mtls there is no verified peer identity to compare, so an allow list would
    // silently let everyone in.
    if (mtls == false) error(f->position, f->path, "needs mtls: true on this listener");
  }

  if (const Field* f = section->find("header_timeout")) {
    if (auto d = read_duration(*f, /*zero_allowed=*/false)) listener.header_timeout = *d;
  }
  if (const Field* f = section->find("body_timeout")) {
    if (auto d = read_duration(*f, /*zero_allowed=*/true)) listener.body_timeout = *d;
  }
  if (const Field* f = section->find("idle_timeout")) {
    if (auto d = read_duration(*f, /*zero_allowed=*/false)) listener.idle_timeout = *d;
  }
  if (const Field* f = section->find("max_header_bytes")) {
    if (auto n = read_integer(*f, 1, kMaxU32)) listener.max_header_bytes = static_cast<uint32_t>(*n);
  }
  if (const Field* f = section->find("max_body_bytes")) {
    if (auto n = read_integer(*f, 0, kMaxU64)) listener.max_body_bytes = *n;
  }
  if (const Field* f = section->find("allow_ambiguous_paths")) {
    if (auto on = read_bool(*f)) listener.allow_ambiguous_paths = *on;
  }
  if (const Field* f = section->find("http2")) read_http2(*f, listener);
  if (listener.protocol == Protocol::tcp) {
    for (std::string_view key : {"header_timeout", "body_timeout", "max_header_bytes", "max_body_bytes",
                                 "allow_ambiguous_paths", "http2"}) {
      if (const Field* f = section->find(key)) warn(f->path, "has no effect on a tcp listener");
    }
    // A rule that would let no one in must not silently let everyone in.
    if (const Field* f = section->find("authorization"))
      error(f->position, f->path, "has no effect on a tcp listener (allow, with mtls, admits peers by identity)");
  }

  if (const Field* f = section->find("authorization"))
    read_authorization(*f, listener.authorization, listener.auth.has_value(), listener.mtls);
  if (const Field* f = require(*section, "routes", "every listener needs at least one route")) {
    read_routes(*f, listener, source);
  }
  auto subject = [&](const std::optional<AuthPolicy>& auth) {
    if (auth && std::find(listener.subject_headers.begin(), listener.subject_headers.end(), auth->subject_header) ==
                    listener.subject_headers.end())
      listener.subject_headers.push_back(auth->subject_header);
  };
  subject(listener.auth);
  for (const auto& r : listener.routes) subject(r.auth);
  policy_.listeners.push_back(std::move(listener));
  listener_sources_.push_back(std::move(source));
}

void PolicyReader::read_allow(const Field& field, Listener& listener) {
  auto items = open_list(field);
  if (!items) return;
  if (items->empty()) {
    error(field.position, field.path, "must not be empty; leave allow out to let any verified peer in");
    return;
  }
  for (const Field& item : *items) {
    if (auto id = read_spiffe_id(item, /*wildcard_allowed=*/true)) listener.allow.push_back(*id);
  }
}

void PolicyReader::read_routes(const Field& field, Listener& listener, ListenerSource& source) {
  auto items = open_list(field);
  if (!items) return;
  if (items->empty()) {
    error(field.position, field.path, "must list at least one route");
    return;
  }
  for (const Field& item : *items) read_route(item, listener, source);

  if (listener.protocol == Protocol::tcp) {
    // A tcp listener proxies bytes: there is no request to match, so exactly one route.
    for (const RouteSource& route : source.routes) {
      if (route.match)
        error(*route.match, join_path(route.path, "match"),
              "a tcp listener's route cannot have a match (there is no HTTP request to match)");
    }
    if (items->size() > 1) error((*items)[1].position, (*items)[1].path, "a tcp listener takes exactly one route");
    for (size_t i = 0; i < listener.routes.size() && i < items->size(); ++i) {
      const Route& r = listener.routes[i];
      if (r.answers_itself())
        error((*items)[i].position, (*items)[i].path, "a tcp listener's route sends to a cluster (there is no HTTP request to answer)");
      // What looks at a request does nothing on bytes: refused rather than silently ignored.
      const char* keys[] = {r.clusters.empty() ? nullptr : "clusters", r.fault ? "fault" : nullptr,
                            r.timeout ? "timeout" : nullptr, r.retry ? "retry" : nullptr,
                            r.authorization ? "authorization" : nullptr, r.request_headers ? "request_headers" : nullptr,
                            r.response_headers ? "response_headers" : nullptr, r.mirror ? "mirror" : nullptr};
      for (const char* key : keys)
        if (key) error((*items)[i].position, join_path((*items)[i].path, key), "has no effect on a tcp listener's bytes");
    }
    return;
  }
  // First match wins, so anything after a route that matches everything is never used.
  for (size_t i = 0; i + 1 < source.routes.size(); ++i) {
    if (!source.routes[i].match) {
      warn(source.routes[i + 1].path, "never used: " + source.routes[i].path + " has no match and takes every request");
      break;
    }
  }
}

void PolicyReader::read_route(const Field& field, Listener& listener, ListenerSource& source) {
  auto section = open_section(field, kRouteKeys);
  if (!section) return;
  Route route;
  RouteSource route_source;
  route_source.path = field.path;
  if (const Field* f = section->find("name")) {
    if (auto name = read_name(*f)) {
      for (const Route& other : listener.routes)
        if (other.name == *name) error(f->position, f->path, quote(*name) + " is already the name of another route of this listener");
      route.name = *name;
    }
  }
  if (const Field* f = section->find("match")) {
    route_source.match = f->position;
    route.match = read_match(*f);
  }
  // Exactly one of: the cluster it sends to, or the answer pilotfish gives itself.
  std::vector<const Field*> targets;
  for (std::string_view key : {"cluster", "clusters", "respond", "redirect"})
    if (const Field* f = section->find(key)) targets.push_back(f);
  if (targets.empty())
    error(section->position, join_path(section->path, "cluster"),
          "missing; every route names the cluster it sends to (or clusters, a weighted split), or answers itself "
          "(respond or redirect)");
  for (size_t i = 1; i < targets.size(); ++i)
    error(targets[i]->position, targets[i]->path,
          "a route either sends to a cluster or answers itself: it cannot have both " +
              targets[0]->path.substr(targets[0]->path.rfind('.') + 1) + " and " +
              targets[i]->path.substr(targets[i]->path.rfind('.') + 1));
  if (const Field* f = section->find("cluster")) {
    route_source.cluster = f->position;
    if (auto cluster = read_text(*f)) {
      if (cluster->empty())
        error(f->position, f->path, "must not be empty");
      else
        route.cluster = *cluster;
    }
  }
  if (const Field* f = section->find("clusters")) read_split(*f, route, route_source);
  if (const Field* f = section->find("hash_on")) {
    read_hash_on(*f, route);
    if (!section->find("clusters"))
      error(f->position, f->path, "keeps a caller on one cluster of a split: this route has no clusters to choose from");
  }
  if (const Field* f = section->find("respond")) read_respond(*f, route);
  if (const Field* f = section->find("redirect")) read_redirect(*f, route);
  if (const Field* f = section->find("timeout")) {
    if (auto d = read_duration(*f, /*zero_allowed=*/false)) route.timeout = *d;
  }
  if (const Field* f = section->find("authorization")) {
    // The route's auth is read below; whether one applies is known from the keys already.
    const Field* own = section->find("auth");
    bool off = own && own->node.IsScalar() && own->node.Scalar() == "false";
    read_authorization(*f, route.authorization, own ? !off : listener.auth.has_value(), listener.mtls);
  }
  if (const Field* f = section->find("retry")) {
    Cluster defaults;  // keys the route's retry leaves out take the defaults, as in a cluster
    read_retry(*f, defaults);
    route.retry = defaults.retry;
    if (f->node.IsMap() && f->node["budget"])
      error(f->position, join_path(f->path, "budget"), "is the cluster's: its counters are shared by every route");
  }
  for (std::string_view key : {"timeout", "retry"}) {
    const Field* f = section->find(key);
    if (f && route.answers_itself())
      error(f->position, f->path, "applies to requests sent to a cluster: this route answers itself");
  }
  for (auto [key, rules] : {std::pair{"request_headers", &route.request_headers},
                            std::pair{"response_headers", &route.response_headers}}) {
    if (const Field* f = section->find(key)) {
      read_header_rules(*f, *rules, rules == &route.request_headers, listener);
      if (route.answers_itself() && rules == &route.request_headers)
        error(f->position, f->path, "changes requests sent to a cluster: this route answers itself");
    }
  }
  if (const Field* f = section->find("fault")) {
    read_fault(*f, route);
    if (route.answers_itself())
      error(f->position, f->path, "faults are injected into requests sent to a cluster: this route answers itself");
  }
  if (const Field* f = section->find("mirror")) {
    read_mirror(*f, route, route_source);
    if (route.answers_itself())
      error(f->position, f->path, "copies requests sent to a cluster: this route answers itself");
  }
  if (const Field* f = section->find("auth")) read_auth(*f, route.auth, &route.auth_off);
  if (const Field* f = section->find("rate_limit")) read_rate_limit(*f, route.rate_limit, &route.rate_limit_off);
  listener.routes.push_back(std::move(route));
  source.routes.push_back(std::move(route_source));
}

void PolicyReader::read_split(const Field& field, Route& route, RouteSource& source) {
  auto items = open_list(field);
  if (!items) return;
  if (items->empty()) error(field.position, field.path, "must list at least one cluster");
  for (const Field& item : *items) {
    auto section = open_section(item, kWeightedClusterKeys);
    if (!section) continue;
    WeightedCluster c;
    std::pair<Position, std::string> at{section->position, join_path(item.path, "name")};
    if (const Field* f = require(*section, "name", "the cluster this share of the requests goes to")) {
      at.first = f->position;
      if (auto name = read_text(*f)) {
        bool twice = false;
        for (const auto& other : route.clusters) twice = twice || other.name == *name;
        if (name->empty())
          error(f->position, f->path, "must not be empty");
        else if (twice)
          error(f->position, f->path, quote(*name) + " is in this split twice");
        else
          c.name = *name;
      }
    }
    if (const Field* f = require(*section, "weight", "this cluster's share, relative to the others' (0 sends it nothing)")) {
      if (auto w = read_integer(*f, 0, kMaxWeight)) c.weight = static_cast<uint32_t>(*w);
    }
    if (c.name.empty()) continue;
    route.split_total += c.weight;
    route.clusters.push_back(std::move(c));
    source.split.push_back(at);
  }
  if (!route.clusters.empty() && route.split_total == 0)
    error(field.position, field.path, "the weights sum to 0: no request could go anywhere");
}

void PolicyReader::read_hash_on(const Field& field, Route& route) {
  auto v = read_text(field);
  if (!v) return;
  if (*v == "peer_identity") {
    route.hash_on.kind = HashOn::Kind::peer_identity;
  } else if (v->starts_with("header:") && is_http_token(v->substr(7))) {
    route.hash_on.kind = HashOn::Kind::header;
    route.hash_on.header = lower(v->substr(7));
  } else {
    error(field.position, field.path, quote(*v) + " is not something to keep a caller by: header:NAME or peer_identity");
  }
}

void PolicyReader::read_authorization(const Field& field, std::optional<Authorization>& out, bool auth_applies,
                                      bool mtls) {
  auto section = open_section(field, kAuthorizationKeys);
  if (!section) return;
  Authorization a;
  for (auto [key, rules] : {std::pair{"deny", &a.deny}, std::pair{"allow", &a.allow}}) {
    const Field* f = section->find(key);
    if (!f) continue;
    auto items = open_list(*f);
    if (!items) continue;
    if (items->empty())
      error(f->position, f->path, std::string("must list at least one rule; leave ") + key + " out for none");
    for (const Field& item : *items) {
      AuthzRule rule;
      read_authz_rule(item, rule, auth_applies);
      if (!rule.principals.empty() && !mtls)
        error(item.position, join_path(item.path, "principals"),
              "needs mtls: true on this listener (without it there is no verified peer, and the rule would never match)");
      rules->push_back(std::move(rule));
    }
  }
  if (!section->find("deny") && !section->find("allow"))
    error(section->position, section->path, "has deny rules, allow rules or both");
  out = std::move(a);
}

void PolicyReader::read_authz_rule(const Field& field, AuthzRule& rule, bool auth_applies) {
  auto section = open_section(field, kAuthzRuleKeys);
  if (!section) return;
  // Each list given must have values: an empty one could never match.
  auto values = [&](const char* key) -> std::optional<std::vector<Field>> {
    const Field* f = section->find(key);
    if (!f) return std::nullopt;
    auto items = open_list(*f);
    if (items && items->empty()) error(f->position, f->path, "must list at least one value; leave it out to match any");
    return items;
  };
  if (auto items = values("principals"))
    for (const Field& item : *items)
      if (auto id = read_spiffe_id(item, /*wildcard_allowed=*/true)) rule.principals.push_back(*id);
  if (auto items = values("methods")) {
    for (const Field& item : *items) {
      if (auto m = read_text(item)) {
        if (!is_http_token(*m))
          error(item.position, item.path, quote(*m) + " is not an HTTP method");
        else
          rule.methods.push_back(upper(*m));
      }
    }
  }
  if (auto items = values("paths")) {
    for (const Field& item : *items) {
      auto p = open_section(item, kAuthzPathKeys);
      if (!p) continue;
      const Field* prefix = p->find("prefix");
      const Field* exact = p->find("exact");
      if ((prefix == nullptr) == (exact == nullptr)) {
        error(item.position, item.path, "a path is {prefix: P} or {exact: P}");
        continue;
      }
      const Field* f = prefix ? prefix : exact;
      auto text = read_text(*f);
      if (!text) continue;
      // Compared with the request's normalised path, so written the same way: "/a/./b",
      // "/%61" and "//a" stand for what a request's path becomes.
      std::optional<NormalizedTarget> n = text->starts_with('/') ? normalize_target(*text) : std::nullopt;
      if (!n || !n->query.empty()) {
        error(f->position, f->path, quote(*text) + " is not a path (it starts with '/', has no '?', and no escape "
                                                   "servers resolve differently)");
        continue;
      }
      // A prefix keeps its trailing slash ("/api/" must not match "/apix").
      if (prefix && text->ends_with('/') && !n->path.ends_with('/')) n->path += '/';
      rule.paths.push_back({n->path, prefix != nullptr});
    }
  }
  if (const Field* f = section->find("claims")) {
    if (!auth_applies)
      error(f->position, f->path, "claims come from the token auth verifies: no auth applies here");
    if (!f->node.IsMap()) {
      error(f->position, f->path, "expected a map of claim (sub, scope, aud) to the values it may have");
    } else {
      for (auto it = f->node.begin(); it != f->node.end(); ++it) {
        if (!count_node()) return;
        std::string name = it->first.IsScalar() ? it->first.Scalar() : std::string();
        Field claim{it->second, join_path(f->path, name), position_of(it->second, f->position)};
        if (name != "sub" && name != "scope" && name != "aud") {
          error(position_of(it->first, f->position), claim.path, "is not a claim pilotfish matches: sub, scope or aud");
          continue;
        }
        std::vector<std::string> wanted;
        if (auto items = open_list(claim)) {
          if (items->empty()) error(claim.position, claim.path, "must list at least one value");
          for (const Field& item : *items)
            if (auto v = read_text(item)) wanted.push_back(*v);
        }
        rule.claims.emplace_back(std::move(name), std::move(wanted));
      }
    }
  }
}

std::optional<std::string> PolicyReader::read_header_name(const Field& field) {
  auto v = read_text(field);
  if (!v) return std::nullopt;
  if (!is_http_token(*v)) {
    error(field.position, field.path, quote(*v) + " is not a header name");
    return std::nullopt;
  }
  return lower(*v);
}

void PolicyReader::read_header_rules(const Field& field, std::optional<HeaderRules>& out, bool request,
                                     const Listener& listener) {
  auto section = open_section(field, kHeaderRulesKeys);
  if (!section) return;
  // What pilotfish sets on a request for the app to trust is never the policy's to change.
  auto refused = [&](const std::string& name) -> const char* {
    if (!request) return nullptr;
    // In any spelling a server may read as the same name ("x_request_id").
    std::string folded = name;
    std::replace(folded.begin(), folded.end(), '_', '-');
    if (folded.starts_with("x-forwarded-") || folded == "forwarded" || folded == "x-request-id")
      return "is set by pilotfish for the app to trust; a route cannot change it";
    if (folded == "traceparent" || folded == "tracestate")
      return "is the request's W3C trace context, which pilotfish propagates; a route cannot change it";
    if (listener.auth && same_field_name_folded(listener.auth->subject_header, name))
      return "is the listener's auth subject header";
    for (const auto& r : listener.routes)
      if (r.auth && same_field_name_folded(r.auth->subject_header, name)) return "is an auth subject header of this listener";
    return nullptr;
  };
  HeaderRules rules;
  auto check_values = [&](const Field& f, std::vector<std::pair<std::string, std::string>>& list) {
    read_header_values(f, list, refused);
    for (const auto& [name, value] : list) {
      // ${...} names one of the variables; anything else there is a typo, not text to send.
      for (size_t at = value.find("${"); at != std::string::npos; at = value.find("${", at + 2)) {
        size_t end = value.find('}', at);
        std::string_view var = end == std::string::npos ? std::string_view() : std::string_view(value).substr(at + 2, end - at - 2);
        if (var != "peer_identity" && var != "request_id" && var != "route")
          error(f.position, join_path(f.path, name),
                quote(value) + ": ${...} is one of ${peer_identity}, ${request_id} and ${route}");
      }
    }
  };
  if (const Field* f = section->find("set")) check_values(*f, rules.set);
  if (const Field* f = section->find("add")) check_values(*f, rules.add);
  if (const Field* f = section->find("remove")) {
    if (auto items = open_list(*f)) {
      for (const Field& item : *items) {
        auto name = read_header_name(item);
        if (!name) continue;
        const char* why = refused(*name);
        if (is_reserved_header(*name))
          error(item.position, item.path, "'" + *name + "' is not a header a policy removes: pilotfish frames and marks its messages itself");
        else if (why)
          error(item.position, item.path, "'" + *name + "' " + why);
        else
          rules.remove.push_back(*name);
      }
    }
  }
  if (rules.set.empty() && rules.add.empty() && rules.remove.empty())
    error(section->position, section->path, "has set, add or remove");
  out = std::move(rules);
}

void PolicyReader::read_fault(const Field& field, Route& route) {
  auto section = open_section(field, kFaultKeys);
  if (!section) return;
  FaultPolicy fault;
  if (const Field* f = section->find("delay")) {
    if (auto delay = open_section(*f, kFaultDelayKeys)) {
      if (const Field* p = require(*delay, "percent", "the share of requests delayed, 0 to 100")) {
        if (auto v = read_number(*p, 0, 100)) fault.delay_percent = *v;
      }
      if (const Field* d = require(*delay, "duration", "how long a delayed request waits before it is sent")) {
        if (auto v = read_duration(*d, /*zero_allowed=*/false)) {
          if (v->count() > 3'600'000)
            error(d->position, d->path, "at most 1h");
          else
            fault.delay = *v;
        }
      }
    }
  }
  if (const Field* f = section->find("abort")) {
    if (auto abort = open_section(*f, kFaultAbortKeys)) {
      if (const Field* p = require(*abort, "percent", "the share of requests answered at once, 0 to 100")) {
        if (auto v = read_number(*p, 0, 100)) fault.abort_percent = *v;
      }
      if (const Field* s = require(*abort, "status", "the status an aborted request is answered with")) {
        if (auto v = read_integer(*s, 200, 599)) fault.abort_status = static_cast<int>(*v);
      }
    }
  }
  if (!section->find("delay") && !section->find("abort"))
    error(section->position, section->path, "a fault has a delay, an abort or both");
  if (const Field* f = section->find("header")) {
    if (auto v = read_header_name(*f)) fault.header = *v;
  }
  route.fault = std::move(fault);
}

void PolicyReader::read_mirror(const Field& field, Route& route, RouteSource& source) {
  auto section = open_section(field, kMirrorKeys);
  if (!section) return;
  MirrorPolicy mirror;
  if (const Field* f = require(*section, "cluster", "the cluster the copies go to")) {
    if (auto name = read_text(*f)) {
      if (name->empty())
        error(f->position, f->path, "must not be empty");
      else {
        mirror.cluster = *name;
        source.mirror.emplace(f->position, f->path);
      }
    }
  }
  if (const Field* f = section->find("percent")) {
    if (auto v = read_number(*f, 0, 100)) mirror.percent = *v;
  }
  if (const Field* f = section->find("max_in_flight")) {
    if (auto v = read_integer(*f, 1, 100'000)) mirror.max_in_flight = static_cast<uint32_t>(*v);
  }
  if (const Field* f = section->find("max_body_bytes")) {
    if (auto v = read_integer(*f, 0, 16 * 1024 * 1024)) mirror.max_body_bytes = *v;
  }
  route.mirror = std::move(mirror);
}

void PolicyReader::read_respond(const Field& field, Route& route) {
  auto section = open_section(field, kRespondKeys);
  if (!section) return;
  DirectResponse r;
  if (const Field* f = section->find("status")) {
    if (auto v = read_integer(*f, 200, 599)) r.status = static_cast<int>(*v);
  }
  if (const Field* f = section->find("body")) {
    if (auto v = read_text(*f)) {
      if (v->size() > kMaxDirectBodyBytes)
        error(f->position, f->path, "is " + std::to_string(v->size()) + " bytes; at most " +
                                        std::to_string(kMaxDirectBodyBytes) + " are sent");
      else
        r.body = *v;
    }
  }
  if (const Field* f = section->find("headers")) read_header_values(*f, r.headers);
  if (r.status == 204 || r.status == 304) {
    if (!r.body.empty()) error(section->position, section->path, "a " + std::to_string(r.status) + " has no body");
  }
  route.respond = std::move(r);
}

void PolicyReader::read_redirect(const Field& field, Route& route) {
  auto section = open_section(field, kRedirectKeys);
  if (!section) return;
  Redirect r;
  if (const Field* f = section->find("scheme")) {
    if (auto v = read_text(*f)) {
      if (*v != "http" && *v != "https")
        error(f->position, f->path, quote(*v) + " is not a scheme pilotfish redirects to: http or https");
      else
        r.scheme = *v;
    }
  }
  if (const Field* f = section->find("host")) {
    if (auto v = read_text(*f)) {
      if (v->empty() || !is_valid_host(*v))
        error(f->position, f->path, quote(*v) + " is not a host (a name or address, and an optional :port)");
      else
        r.host = lower(*v);
    }
  }
  if (const Field* f = section->find("path")) {
    if (auto v = read_text(*f)) {
      bool ok = !v->empty() && (*v)[0] == '/';
      for (char c : *v) ok = ok && c > 0x20 && c < 0x7f && c != '?' && c != '#';
      if (!ok)
        error(f->position, f->path, quote(*v) + " is not a path: it starts with '/', and has no space, control "
                                                  "character, '?', '#' or byte outside ASCII (percent-encode them)");
      else
        r.path = *v;
    }
  }
  if (const Field* f = section->find("status")) {
    if (auto v = read_integer(*f, 301, 308)) {
      if (*v != 301 && *v != 302 && *v != 307 && *v != 308)
        error(f->position, f->path, std::to_string(*v) + " is not a redirect status: 301, 302, 307 or 308");
      else
        r.status = static_cast<int>(*v);
    }
  }
  if (r.scheme.empty() && r.host.empty() && r.path.empty())
    error(section->position, section->path,
          "a redirect names at least one of scheme, host and path (else it sends the client where it is)");
  route.redirect = std::move(r);
}

void PolicyReader::read_header_map(
    const Field& field, const char* again,
    const std::function<void(std::string name, const std::string& value, const std::string& path, Position at)>& take) {
  if (!field.node.IsMap()) {
    error(field.position, field.path, "expected a map of header name to value, got " + describe(field.node));
    return;
  }
  std::unordered_set<std::string> seen;
  for (auto it = field.node.begin(); it != field.node.end(); ++it) {
    if (!count_node()) return;
    const YAML::Node key = it->first;
    const YAML::Node value = it->second;
    const Position key_position = position_of(key, field.position);
    if (!key.IsScalar()) {
      error(key_position, field.path, "header names must be strings, got " + describe(key));
      continue;
    }
    const std::string path = join_path(field.path, key.Scalar());
    if (!is_http_token(key.Scalar())) {
      error(key_position, path, quote(key.Scalar()) + " is not a valid header name");
      continue;
    }
    std::string name = lower(key.Scalar());
    // Header names are case-insensitive, so "X-Canary" and "x-canary" are the same header.
    if (!seen.insert(name).second) {
      error(key_position, path, "header '" + name + "' is " + again + " twice");
      continue;
    }
    const Position value_position = value.IsNull() ? key_position : position_of(value, key_position);
    if (!value.IsScalar()) {
      error(value_position, path, "expected the header's value as a string, got " + describe(value));
      continue;
    }
    take(std::move(name), value.Scalar(), path, value_position);
  }
}

void PolicyReader::read_header_values(const Field& field, std::vector<std::pair<std::string, std::string>>& out,
                                      const std::function<const char*(const std::string& name)>& refused) {
  read_header_map(field, "given", [&](std::string name, const std::string& value, const std::string& path, Position at) {
    if (is_reserved_header(name)) {
      error(at, path, "'" + name + "' is not a header a policy sets: pilotfish frames, routes and marks its messages itself");
      return;
    }
    if (const char* why = refused ? refused(name) : nullptr) {
      error(at, path, "'" + name + "' " + why);
      return;
    }
    if (!is_valid_field_value(value) || value.size() > kMaxHeaderValueBytes) {
      error(at, path, "is not a header value: at most " + std::to_string(kMaxHeaderValueBytes) +
                          " bytes, no control character but tab");
      return;
    }
    out.emplace_back(std::move(name), std::string(trim_ows(value)));
  });
}

void PolicyReader::read_auth(const Field& field, std::optional<AuthPolicy>& out, bool* off) {
  if (off && field.node.IsScalar() && field.node.Scalar() == "false") {
    *off = true;
    return;
  }
  auto section = open_section(field, kAuthKeys);
  if (!section) return;
  AuthPolicy auth;
  if (const Field* f = require(*section, "jwks", "the JWKS file with the keys tokens are signed with")) {
    if (auto path = read_text(*f)) {
      auth.jwks = resolve_file(*path);
      if (check_files_) {
        std::string err;
        std::vector<std::string> skipped;
        if (JwksPtr keys = Jwks::load(auth.jwks, &err, &skipped)) jwks_[auth.jwks] = std::move(keys);
        else error(f->position, f->path, err);
        for (const auto& w : skipped) warn(f->path, auth.jwks + ": " + w);
      }
    }
  }
  if (const Field* f = section->find("issuer")) {
    if (auto v = read_text(*f)) auth.issuer = *v;
  }
  if (const Field* f = section->find("audience")) {
    if (f->node.IsSequence()) {
      if (auto items = open_list(*f))
        for (const Field& item : *items)
          if (auto v = read_text(item)) auth.audiences.push_back(*v);
    } else if (auto v = read_text(*f)) {
      auth.audiences.push_back(*v);
    }
  }
  if (const Field* f = section->find("subject_header")) {
    if (auto v = read_header_name(*f)) auth.subject_header = *v;
  }
  if (const Field* f = section->find("clock_skew")) {
    if (auto d = read_duration(*f, /*zero_allowed=*/true)) auth.clock_skew = *d;
  }
  if (auth.issuer.empty() && auth.audiences.empty())
    warn(field.path, "neither issuer nor audience is checked: any token the JWKS keys signed, for any service, "
                     "is accepted");
  out = auth;
}

// `http2: false`, `true`, or its settings (which leave it on).
void PolicyReader::read_http2(const Field& field, Listener& listener) {
  if (field.node.IsScalar()) {
    if (auto on = read_bool(field)) listener.http2 = *on;
    return;
  }
  auto section = open_section(field, kHttp2Keys);
  if (!section) return;
  listener.http2 = true;
  if (const Field* f = section->find("max_concurrent_streams")) {
    if (auto n = read_integer(*f, 1, 10'000)) listener.http2_max_concurrent_streams = static_cast<uint32_t>(*n);
  }
}

void PolicyReader::read_rate_limit(const Field& field, std::optional<RateLimitPolicy>& out, bool* off) {
  if (off && field.node.IsScalar() && field.node.Scalar() == "false") {
    *off = true;
    return;
  }
  auto section = open_section(field, kRateLimitKeys);
  if (!section) return;
  RateLimitPolicy limit;
  if (const Field* f = require(*section, "rate", "requests per second each client key may make")) {
    if (auto v = read_number(*f, 0.001, 1e7)) limit.rate = *v;
  }
  if (const Field* f = section->find("burst")) {
    if (auto v = read_integer(*f, 1, 4'000'000)) limit.burst = static_cast<uint32_t>(*v);
  }
  if (limit.burst == 0) limit.burst = static_cast<uint32_t>(std::max(1.0, std::ceil(limit.rate)));
  if (const Field* f = section->find("key")) {
    if (auto v = read_text(*f)) {
      if (*v == "client_address") {
        limit.key = RateLimitPolicy::Key::client_address;
      } else if (*v == "peer_identity") {
        limit.key = RateLimitPolicy::Key::peer_identity;
      } else if (v->starts_with("header:") && is_http_token(v->substr(7))) {
        limit.key = RateLimitPolicy::Key::header;
        limit.header = lower(v->substr(7));
      } else {
        error(f->position, f->path,
              quote(*v) + " is not client_address, peer_identity or header:NAME");
      }
    }
  }
  out = limit;
}

RouteMatch PolicyReader::read_match(const Field& field) {
  RouteMatch match;
  auto section = open_section(field, kMatchKeys);
  if (!section) return match;

  if (const Field* f = section->find("host")) {
    if (auto host = read_text(*f)) {
      // The request's port is ignored when matching, so a port here could never match.
      // "[::1]" is an IPv6 literal; any other ':' (or one after the ']') starts a port.
      const size_t close = host->starts_with('[') ? host->find(']') : std::string::npos;
      const bool has_port = close == std::string::npos ? host->find(':') != std::string::npos && !host->starts_with('[')
                                                       : host->find(':', close) != std::string::npos;
      if (host->empty() || has_space_or_control(*host) || host->find('/') != std::string::npos) {
        error(f->position, f->path, quote(*host) + " is not a host name");
      } else if (has_port) {
        error(f->position, f->path, quote(*host) + " must not have a port (the request's port is ignored)");
      } else {
        match.host = lower(*host);
      }
    }
  }
  if (const Field* f = section->find("path_prefix")) {
    if (auto prefix = read_text(*f)) {
      if (!prefix->starts_with('/'))
        error(f->position, f->path, quote(*prefix) + " must start with '/'");
      else if (has_space_or_control(*prefix))
        error(f->position, f->path, quote(*prefix) + " must not contain spaces or control characters");
      else
        match.path_prefix = *prefix;
    }
  }
  if (const Field* f = section->find("method")) {
    if (auto method = read_text(*f)) {
      if (!is_http_token(*method))
        error(f->position, f->path, quote(*method) + " is not an HTTP method");
      else
        match.method = upper(*method);
    }
  }
  if (const Field* f = section->find("headers")) read_match_headers(*f, match);
  return match;
}

void PolicyReader::read_match_headers(const Field& field, RouteMatch& match) {
  read_header_map(field, "matched", [&](std::string name, const std::string& value, const std::string& path, Position at) {
    if (value.find_first_of(std::string_view("\r\n\0", 3)) != std::string::npos) {
      error(at, path, "a header value cannot contain CR, LF or NUL");
      return;
    }
    match.headers.push_back({std::move(name), value});
  });
}

}  // namespace pilotfish::policy_detail
