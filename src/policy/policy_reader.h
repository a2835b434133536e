#pragma once
// The policy reader's internals, shared by policy_reader.cc, policy_read_sections.cc,
// policy_read_listeners.cc, policy_read_clusters.cc and policy_loader.cc: the key tables, the
// text helpers more than one of them uses, the values being read, and class PolicyReader.

#include "pilotfish/policy_loader.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "gateway/jwt.h"

namespace pilotfish::policy_detail {

constexpr uint64_t kMaxU32 = std::numeric_limits<uint32_t>::max();
constexpr uint64_t kMaxU64 = std::numeric_limits<uint64_t>::max();

// The keys each section allows. Anything else is an error: a typo must not silently change
// behaviour (policy-reference.yaml).
constexpr std::string_view kTopLevelKeys[] = {"version",     "service",        "admin",          "workers",
                                              "log_level",   "drain_timeout",  "drain_delay",    "policy_history", "policy_watch",
                                              "wait_for_clusters", "access_log", "identity",     "listeners",
                                              "clusters"};
constexpr std::string_view kAdminKeys[] = {"address", "read_only_address"};
constexpr std::string_view kIdentityKeys[] = {"cert", "key", "ca"};
constexpr std::string_view kListenerKeys[] = {
    "name",           "address",      "intercept",    "protocol",         "mtls",           "allow",
    "header_timeout", "body_timeout", "idle_timeout", "max_header_bytes", "max_body_bytes", "routes",
    "passthrough",    "auth",         "rate_limit",   "allow_ambiguous_paths", "http2", "authorization"};
constexpr std::string_view kHttp2Keys[] = {"max_concurrent_streams"};
constexpr std::string_view kRouteKeys[] = {"name",    "match",   "cluster",  "clusters", "hash_on",    "timeout", "retry",
                                           "fault",   "respond", "redirect", "auth",     "rate_limit", "authorization",
                                           "request_headers", "response_headers", "mirror"};
constexpr std::string_view kMirrorKeys[] = {"cluster", "percent", "max_in_flight", "max_body_bytes"};
constexpr std::string_view kHeaderRulesKeys[] = {"set", "add", "remove"};
// A route's retry: a cluster's but its budget (whose counters the cluster's routes share).
constexpr std::string_view kRouteRetryKeys[] = {"retries", "on", "status_codes", "per_try_timeout", "backoff", "nested"};
constexpr std::string_view kAuthorizationKeys[] = {"deny", "allow"};
constexpr std::string_view kAuthzRuleKeys[] = {"principals", "methods", "paths", "claims"};
constexpr std::string_view kAuthzPathKeys[] = {"prefix", "exact"};
constexpr std::string_view kFaultKeys[] = {"delay", "abort", "header"};
constexpr std::string_view kFaultDelayKeys[] = {"percent", "duration"};
constexpr std::string_view kFaultAbortKeys[] = {"percent", "status"};
constexpr std::string_view kWeightedClusterKeys[] = {"name", "weight"};
constexpr std::string_view kRespondKeys[] = {"status", "body", "headers"};
constexpr std::string_view kRedirectKeys[] = {"scheme", "host", "path", "status"};
constexpr std::string_view kAuthKeys[] = {"jwks", "issuer", "audience", "subject_header", "clock_skew"};
constexpr std::string_view kRateLimitKeys[] = {"rate", "burst", "key"};
constexpr std::string_view kMatchKeys[] = {"host", "path_prefix", "method", "headers"};
constexpr std::string_view kClusterKeys[] = {"name",
                                             "endpoints",
                                             "vips",
                                             "mtls",
                                             "lb",
                                             "protocol",
                                             "connect_timeout",
                                             "timeout",
                                             "idle_timeout",
                                             "retry",
                                             "circuit_breaker",
                                             "outlier_detection"};
constexpr std::string_view kClusterMtlsKeys[] = {"server_identity", "sni"};
constexpr std::string_view kRetryKeys[] = {"retries", "on",     "status_codes", "per_try_timeout",
                                           "backoff", "budget", "nested"};
constexpr std::string_view kBackoffKeys[] = {"base", "max"};
constexpr std::string_view kBudgetKeys[] = {"ratio", "min_per_second"};
constexpr std::string_view kCircuitBreakerKeys[] = {"max_connections", "max_pending_requests", "max_requests",
                                                    "max_retries"};
constexpr std::string_view kOutlierDetectionKeys[] = {"consecutive_failures", "base_ejection_time", "max_ejection_time",
                                                      "max_ejection_percent"};

template <typename E>
struct Choice {
  std::string_view word;
  E value;
};

// ---------------------------------------------------------------------------------------------
// Small text helpers (policy_reader.cc)

std::string quote(std::string_view text);
std::string lower(std::string_view text);
bool all_digits(std::string_view s);
bool has_space_or_control(std::string_view s);
size_t edit_distance(std::string_view a, std::string_view b);
std::string join_path(const std::string& path, std::string_view key);

// " (did you mean 'routes'?)" when one candidate is a likely typo of `word`, else "".
template <typename Strings>
std::string did_you_mean(std::string_view word, const Strings& candidates) {
  if (word.size() > 64) return {};  // not a typo; and keeps the distance cheap
  std::string lowered = lower(word);
  std::string_view best;
  size_t best_distance = std::numeric_limits<size_t>::max();
  for (const auto& candidate : candidates) {
    std::string_view c = candidate;
    size_t d = edit_distance(lowered, c);
    if (d < best_distance) {
      best_distance = d;
      best = c;
    }
  }
  // Two edits catch most typos ("routs", "time_out") without suggesting unrelated words for
  // short keys.
  size_t allowed = std::min<size_t>(2, std::max<size_t>(1, best.size() / 3));
  if (best.empty() || best_distance == 0 || best_distance > allowed) return {};
  return " (did you mean '" + std::string(best) + "'?)";
}

template <typename E>
std::string list_words(std::span<const Choice<E>> choices) {
  std::string out;
  for (size_t i = 0; i < choices.size(); ++i) {
    if (i > 0) out += i + 1 == choices.size() ? " or " : ", ";
    out += choices[i].word;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Positions and the values being read

struct Position {
  int line = 0;    // 1-based; 0 = unknown
  int column = 0;  // 1-based
};

Position position_of(const YAML::Node& node, Position fallback);
std::string describe(const YAML::Node& node);

// One value in the policy, with its key path and where it was written.
struct Field {
  YAML::Node node;
  std::string path;
  Position position;
};

// The entries of one YAML map, already checked against the keys its section allows, so a section
// reader only looks up keys it knows.
struct Section {
  std::string path;
  Position position;  // of the map itself: where a missing key is reported
  std::vector<std::pair<std::string, Field>> entries;

  const Field* find(std::string_view key) const {
    for (const auto& [name, field] : entries)
      if (name == key) return &field;
    return nullptr;
  }
};

// Where the values the cross-checks need were written, kept beside the Policy being built.
struct RouteSource {
  std::string path;
  Position cluster;
  std::vector<std::pair<Position, std::string>> split;  // where each name of `clusters` is, and its path
  std::optional<Position> match;  // set when the route has a match
  std::optional<std::pair<Position, std::string>> mirror;  // where mirror.cluster is, and its path
};

struct ListenerSource {
  std::string path;
  std::vector<RouteSource> routes;  // parallel to Listener::routes
};

// ---------------------------------------------------------------------------------------------
// The reader

class PolicyReader {
 public:
  PolicyReader(std::string file_name, std::string base_dir, bool check_files)
      : file_name_(std::move(file_name)), base_dir_(std::move(base_dir)), check_files_(check_files) {}

  // Reads the whole document into policy_; errors_ and warnings_ say what was wrong.
  void read_document(const YAML::Node& root);

  Policy& policy() { return policy_; }
  std::vector<PolicyError> take_errors();
  std::vector<std::string>& warnings() { return warnings_; }
  std::map<std::string, JwksPtr>& jwks() { return jwks_; }

  void error(Position at, const std::string& path, const std::string& message);
  // Reports a problem that ends the walk (the YAML does not parse, or yaml-cpp threw something
  // else); what was reported before it stays.
  void fail(Position at, const std::string& message) {
    errors_.push_back({file_name_, at.line, at.column, message});
    stopped_ = true;
  }

 private:
  void warn(const std::string& path, const std::string& message) {
    warnings_.push_back(path.empty() ? message : path + ": " + message);
  }
  bool count_node();
  void stop(const std::string& reason);

  // Generic readers: each reports its own errors and returns nullopt on a bad value.
  std::optional<Section> open_section(const Field& field, std::span<const std::string_view> known_keys);
  void collect_entries(const YAML::Node& map, std::span<const std::string_view> known_keys, int merge_depth,
                       Section& section);
  std::optional<std::vector<Field>> open_list(const Field& field);
  const Field* require(const Section& section, std::string_view key, const char* why);
  std::optional<std::string> read_text(const Field& field);
  std::optional<std::string> read_name(const Field& field);
  std::optional<std::string> read_spiffe_id(const Field& field, bool wildcard_allowed);
  std::optional<bool> read_bool(const Field& field);
  std::optional<uint64_t> read_integer(const Field& field, uint64_t min, uint64_t max);
  std::optional<double> read_number(const Field& field, double min, double max);
  std::optional<Duration> read_duration(const Field& field, bool zero_allowed);
  std::optional<SocketAddress> read_address(const Field& field, bool for_binding);
  template <typename E, size_t N>
  std::optional<E> read_choice(const Field& field, const Choice<E> (&choices)[N]);
  std::string resolve_file(const std::string& path) const;

  // Sections, in the order of policy-reference.yaml.
  void read_version(const Field& field);
  void read_admin(const Field& field);
  void read_workers(const Field& field);
  void read_access_log(const Field& field);
  void read_policy_history(const Field& field);
  void read_wait_for_clusters(const Field& field);
  void read_identity(const Field& field);
  void read_listeners(const Field& field);
  void read_listener(const Field& field);
  void read_allow(const Field& field, Listener& listener);
  void read_routes(const Field& field, Listener& listener, ListenerSource& source);
  void read_route(const Field& field, Listener& listener, ListenerSource& source);
  void read_split(const Field& field, Route& route, RouteSource& source);
  void read_hash_on(const Field& field, Route& route);
  void read_respond(const Field& field, Route& route);
  void read_fault(const Field& field, Route& route);
  void read_mirror(const Field& field, Route& route, RouteSource& source);
  // `request`: what only pilotfish sets on a request (X-Forwarded-*, x-request-id, the
  // listener's subject headers) cannot be named either.
  void read_header_rules(const Field& field, std::optional<HeaderRules>& out, bool request, const Listener& listener);
  // `authorization`; `auth_applies`: a verified token's claims can be there to match.
  void read_authorization(const Field& field, std::optional<Authorization>& out, bool auth_applies, bool mtls);
  void read_authz_rule(const Field& field, AuthzRule& rule, bool auth_applies);
  std::optional<std::string> read_header_name(const Field& field);  // a token, lowered
  void read_redirect(const Field& field, Route& route);
  // A map of header name to value that pilotfish sends as given: names are tokens (lowered,
  // each once), values valid field values, and no name is one that frames or routes a message
  // (content-length, transfer-encoding, connection, ...) or is pilotfish's own (x-pilotfish-*).
  void read_header_values(const Field& field, std::vector<std::pair<std::string, std::string>>& out,
                          const std::function<const char*(const std::string& name)>& refused = {});
  // Each entry of a map of header name to value: names checked as tokens, lowered and each
  // taken once (`again`: the verb of the error for a second one), values scalars.
  void read_header_map(
      const Field& field, const char* again,
      const std::function<void(std::string name, const std::string& value, const std::string& path, Position at)>& take);
  // `auth` / `rate_limit`: a map, or (on a route) false to turn the listener's off.
  void read_auth(const Field& field, std::optional<AuthPolicy>& out, bool* off);
  void read_rate_limit(const Field& field, std::optional<RateLimitPolicy>& out, bool* off);
  void read_http2(const Field& field, Listener& listener);
  RouteMatch read_match(const Field& field);
  void read_match_headers(const Field& field, RouteMatch& match);
  void read_clusters(const Field& field);
  void read_cluster(const Field& field);
  void read_endpoints(const Field& field, Cluster& cluster);
  void read_vips(const Field& field, Cluster& cluster);
  void read_cluster_mtls(const Field& field, Cluster& cluster);
  void read_retry(const Field& field, Cluster& cluster);
  void read_backoff(const Field& field, RetryPolicy& retry);
  void read_budget(const Field& field, RetryPolicy& retry);
  void read_circuit_breaker(const Field& field, CircuitBreakerLimits& limits);
  void read_outlier_detection(const Field& field, OutlierDetection& outlier);

  // Checks across sections, once everything is read.
  void check_bind_address(const SocketAddress& address, const std::string& path, Position at);
  void check_one_family(const SocketAddress& address, const std::string& path, Position at);
  void resolve_routes();
  void check_cluster_use();
  void require_identity(Position at, const std::string& path);

  std::string file_name_;
  std::string base_dir_;
  bool check_files_ = false;
  Policy policy_;
  std::vector<PolicyError> errors_;
  std::vector<std::string> warnings_;
  std::map<std::string, JwksPtr> jwks_;  // the JWKS files read, by resolved path
  size_t nodes_visited_ = 0;
  bool stopped_ = false;  // too many errors or nodes: stop walking, keep what was reported
  std::optional<PolicyError> stop_reason_;

  bool identity_given_ = false;
  Position admin_position_;
  Position read_only_admin_position_;
  std::vector<ListenerSource> listener_sources_;                 // parallel to policy_.listeners
  std::unordered_map<std::string, std::string> listener_names_;  // name -> path of its listener
  std::unordered_map<std::string, size_t> cluster_indexes_;      // name -> index in clusters
  std::unordered_map<std::string, std::string> cluster_paths_;   // name -> path of its cluster
  std::unordered_map<std::string, std::string> vip_owners_;      // vip text -> path of its cluster
  std::map<Intercept, std::string> interceptors_;                // direction -> path of listener

  // Addresses pilotfish binds, grouped by (family, port), to find two listeners on one socket.
  struct BoundPort {
    std::unordered_map<std::string, std::string> by_text;  // address text -> path of its owner
    std::string wildcard_owner;                            // path of the owner of 0.0.0.0 / [::]
    std::string wildcard_text;
  };
  std::map<std::pair<int, uint16_t>, BoundPort> bound_ports_;
};

template <typename E, size_t N>
std::optional<E> PolicyReader::read_choice(const Field& field, const Choice<E> (&choices)[N]) {
  if (field.node.IsScalar()) {
    for (const auto& choice : choices)
      if (choice.word == field.node.Scalar()) return choice.value;
  }
  std::vector<std::string_view> words;
  for (const auto& choice : choices) words.push_back(choice.word);
  std::string hint = field.node.IsScalar() ? did_you_mean(field.node.Scalar(), words) : "";
  error(field.position, field.path,
        describe(field.node) + " is not one of " + list_words(std::span<const Choice<E>>(choices)) + hint);
  return std::nullopt;
}

}  // namespace pilotfish::policy_detail
