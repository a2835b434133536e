// The policy loader: YAML text in, a validated and immutable Policy out.
//
// This is the only file that includes yaml-cpp. yaml-cpp reports problems by throwing, so the
// parse and the walk sit behind the one try/catch in load_policy_text, and the walk itself only
// uses node calls that do not throw on a parsed tree (Type, Scalar, Mark, iteration), checking a
// node's type before it looks inside. Nothing escapes: every problem becomes a PolicyError.
//
// The walk never stops at the first problem. Each section reader records an error and goes on
// with the default, so that an operator sees every problem of a file in one `pilotfish check`.
// Errors are sorted by position at the end, as a compiler would print them.
//
// The walk is driven by the schema, not by the document, so a YAML alias that refers to itself
// (`&a [*a]`) can only ever be one wrong-typed value, never an endless recursion. Aliases can
// still make a small file expand to a huge tree, so the walk also counts the nodes it visits.

#include "pilotfish/policy_loader.h"
#include "policy/quote.h"
#include "policy/yaml_openers.h"
#include "gateway/jwt.h"
#include "tls/identity_files.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml-cpp/depthguard.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <limits>
#include <map>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace pilotfish {

std::string PolicyError::to_string() const {
  if (line <= 0) return file + ": " + message;
  return file + ":" + std::to_string(line) + ":" + std::to_string(column) + ": " + message;
}

namespace {

// A policy is a few kilobytes; anything near this is not a policy (or is /dev/zero), and reading
// it whole would only waste memory.
constexpr size_t kMaxPolicyBytes = 16 * 1024 * 1024;
// Enough to show every problem of any real file; a runaway file should not print a million lines.
constexpr size_t kMaxErrors = 1000;
// Bounds the work YAML aliases can cause ("billion laughs"); real policies have a few thousand.
constexpr size_t kMaxNodesVisited = 2'000'000;
// '<<' merges inside merged maps, as deep as anyone would write them on purpose.
constexpr int kMaxMergeDepth = 8;
constexpr size_t kMaxNameLength = 128;
constexpr uint64_t kMaxU32 = std::numeric_limits<uint32_t>::max();
constexpr uint64_t kMaxU64 = std::numeric_limits<uint64_t>::max();
constexpr unsigned kMaxWorkers = 1024;  // the same bound as `run --workers`

constexpr std::string_view kDefaultAdminAddress = "127.0.0.1:9901";

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
    "passthrough",    "auth",         "rate_limit",   "allow_ambiguous_paths"};
constexpr std::string_view kRouteKeys[] = {"match", "cluster", "auth", "rate_limit"};
constexpr std::string_view kAuthKeys[] = {"jwks", "issuer", "audience", "subject_header", "clock_skew"};
constexpr std::string_view kRateLimitKeys[] = {"rate", "burst", "key"};
constexpr std::string_view kMatchKeys[] = {"host", "path_prefix", "method", "headers"};
constexpr std::string_view kClusterKeys[] = {"name",
                                             "endpoints",
                                             "vips",
                                             "mtls",
                                             "lb",
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
constexpr Choice<LogLevel> kLogLevels[] = {
    {"debug", LogLevel::debug}, {"info", LogLevel::info}, {"warn", LogLevel::warn}, {"error", LogLevel::error}};
constexpr Choice<Protocol> kProtocols[] = {{"http", Protocol::http}, {"tcp", Protocol::tcp}};
constexpr Choice<Intercept> kIntercepts[] = {
    {"none", Intercept::none}, {"inbound", Intercept::inbound}, {"outbound", Intercept::outbound}};
constexpr Choice<LbPolicy> kLbPolicies[] = {
    {"round_robin", LbPolicy::round_robin}, {"least_request", LbPolicy::least_request}, {"random", LbPolicy::random}};
constexpr Choice<uint32_t> kRetryConditions[] = {{"connect-failure", kRetryConnectFailure},
                                                 {"reset", kRetryReset},
                                                 {"5xx", kRetry5xx},
                                                 {"gateway-error", kRetryGatewayError},
                                                 {"retriable-status-codes", kRetryRetriableStatusCodes}};

// ---------------------------------------------------------------------------------------------
// Small text helpers

std::string quote(std::string_view text) { return quote_value(text); }

std::string lower(std::string_view text) {
  std::string out(text);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

std::string upper(std::string_view text) {
  std::string out(text);
  for (char& c : out)
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  return out;
}

bool all_digits(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s)
    if (c < '0' || c > '9') return false;
  return true;
}

bool has_space_or_control(std::string_view s) {
  for (char c : s) {
    unsigned char uc = static_cast<unsigned char>(c);
    if (uc <= 0x20 || uc == 0x7f) return true;
  }
  return false;
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

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> previous(b.size() + 1), current(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) previous[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    current[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t substitution = previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
      current[j] = std::min({previous[j] + 1, current[j - 1] + 1, substitution});
    }
    std::swap(previous, current);
  }
  return previous[b.size()];
}

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

std::string join_path(const std::string& path, std::string_view key) {
  return path.empty() ? std::string(key) : path + "." + std::string(key);
}

std::string index_path(const std::string& path, size_t index) { return path + "[" + std::to_string(index) + "]"; }

std::string sha256_hex(std::string_view bytes) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  if (EVP_Digest(bytes.data(), bytes.size(), digest, &length, EVP_sha256(), nullptr) != 1) return {};
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(length * 2);
  for (unsigned int i = 0; i < length; ++i) {
    out += kHex[digest[i] >> 4];
    out += kHex[digest[i] & 0xf];
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Positions and the values being read

struct Position {
  int line = 0;    // 1-based; 0 = unknown
  int column = 0;  // 1-based
};

Position position_of(const YAML::Node& node, Position fallback) {
  const YAML::Mark mark = node.Mark();
  if (mark.is_null() || mark.line < 0 || mark.column < 0) return fallback;
  return {mark.line + 1, mark.column + 1};
}

// What a node is, for "expected X, got Y".
std::string describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Scalar:
      return quote(node.Scalar());
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a map";
    case YAML::NodeType::Null:
      return "nothing (null)";
    case YAML::NodeType::Undefined:
      break;
  }
  return "nothing";
}

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
  std::optional<Position> match;  // set when the route has a match
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
  // `auth` / `rate_limit`: a map, or (on a route) false to turn the listener's off.
  void read_auth(const Field& field, std::optional<AuthPolicy>& out, bool* off);
  void read_rate_limit(const Field& field, std::optional<RateLimitPolicy>& out, bool* off);
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

void PolicyReader::error(Position at, const std::string& path, const std::string& message) {
  if (stopped_) return;
  if (errors_.size() >= kMaxErrors) {
    stop("too many errors (more than " + std::to_string(kMaxErrors) + "); not reading further");
    return;
  }
  errors_.push_back({file_name_, at.line, at.column, path.empty() ? message : path + ": " + message});
}

void PolicyReader::stop(const std::string& reason) {
  if (stopped_) return;
  stopped_ = true;
  stop_reason_ = PolicyError{file_name_, 0, 0, reason};
}

bool PolicyReader::count_node() {
  if (stopped_) return false;
  if (++nodes_visited_ > kMaxNodesVisited) {
    stop("the policy expands to more than " + std::to_string(kMaxNodesVisited) +
         " values (through YAML aliases?); not reading further");
    return false;
  }
  return true;
}

std::vector<PolicyError> PolicyReader::take_errors() {
  // Sorted by position, as a compiler prints them; the reason for stopping early comes last.
  std::stable_sort(errors_.begin(), errors_.end(), [](const PolicyError& a, const PolicyError& b) {
    return std::pair(a.line, a.column) < std::pair(b.line, b.column);
  });
  if (stop_reason_) errors_.push_back(*stop_reason_);
  return std::move(errors_);
}

// ---------------------------------------------------------------------------------------------
// Generic readers

std::optional<Section> PolicyReader::open_section(const Field& field, std::span<const std::string_view> known_keys) {
  if (stopped_) return std::nullopt;
  if (!field.node.IsMap()) {
    error(field.position, field.path, "expected a map, got " + describe(field.node));
    return std::nullopt;
  }
  Section section{field.path, field.position, {}};
  collect_entries(field.node, known_keys, 0, section);
  return section;
}

// Adds the entries of `map` to `section`. Supports the YAML merge key (`<<: *defaults`), which
// yaml-cpp leaves to the application, because anchors plus merges are how people share retry or
// timeout blocks between clusters. As YAML says, keys written in the map win over merged ones.
void PolicyReader::collect_entries(const YAML::Node& map, std::span<const std::string_view> known_keys, int merge_depth,
                                   Section& section) {
  std::vector<std::pair<YAML::Node, Position>> merges;
  std::unordered_set<std::string> seen_here;
  for (auto it = map.begin(); it != map.end(); ++it) {
    if (!count_node()) return;
    const YAML::Node key = it->first;
    const YAML::Node value = it->second;
    const Position key_position = position_of(key, section.position);
    if (!key.IsScalar()) {
      error(key_position, section.path, "keys must be plain words, got " + describe(key) + " as a key");
      continue;
    }
    const std::string& name = key.Scalar();
    if (name == "<<") {
      merges.emplace_back(value, key_position);
      continue;
    }
    const std::string path = join_path(section.path, name);
    if (std::find(known_keys.begin(), known_keys.end(), name) == known_keys.end()) {
      error(key_position, path, "unknown key" + did_you_mean(name, known_keys));
      continue;
    }
    if (!seen_here.insert(name).second) {
      error(key_position, path, "given twice in the same map");
      continue;
    }
    if (section.find(name)) {
      // Only reachable inside a merged map: the key written in the including map wins.
      continue;
    }
    // yaml-cpp marks an empty value at the next token (often the next line), so point at the key.
    const Position value_position = value.IsNull() ? key_position : position_of(value, key_position);
    section.entries.emplace_back(name, Field{value, path, value_position});
  }

  for (const auto& [merged, at] : merges) {
    const std::string path = join_path(section.path, "<<");
    if (merge_depth >= kMaxMergeDepth) {
      error(at, path, "merges nested more than " + std::to_string(kMaxMergeDepth) + " deep (an alias to itself?)");
      continue;
    }
    if (merged.IsMap()) {
      collect_entries(merged, known_keys, merge_depth + 1, section);
    } else if (merged.IsSequence()) {
      for (auto it = merged.begin(); it != merged.end(); ++it) {
        if (!count_node()) return;
        if (it->IsMap()) {
          collect_entries(*it, known_keys, merge_depth + 1, section);
        } else {
          error(position_of(*it, at), path, "expected a map to merge, got " + describe(*it));
        }
      }
    } else {
      error(at, path, "expected a map (or a list of maps) to merge, got " + describe(merged));
    }
  }
}

std::optional<std::vector<Field>> PolicyReader::open_list(const Field& field) {
  if (stopped_) return std::nullopt;
  if (!field.node.IsSequence()) {
    error(field.position, field.path, "expected a list, got " + describe(field.node));
    return std::nullopt;
  }
  std::vector<Field> items;
  size_t index = 0;
  for (auto it = field.node.begin(); it != field.node.end(); ++it, ++index) {
    if (!count_node()) return std::nullopt;
    const YAML::Node item = *it;
    items.push_back(Field{item, index_path(field.path, index), position_of(item, field.position)});
  }
  return items;
}

const Field* PolicyReader::require(const Section& section, std::string_view key, const char* why) {
  const Field* field = section.find(key);
  if (!field) error(section.position, join_path(section.path, key), std::string("missing; ") + why);
  return field;
}

std::optional<std::string> PolicyReader::read_text(const Field& field) {
  if (!field.node.IsScalar()) {
    error(field.position, field.path, "expected a string, got " + describe(field.node));
    return std::nullopt;
  }
  return field.node.Scalar();
}

// Listener and cluster names end up in metric labels, log lines and JSON; keeping them to a
// plain alphabet means none of those needs escaping and a name reads the same everywhere.
std::optional<std::string> PolicyReader::read_name(const Field& field) {
  auto name = read_text(field);
  if (!name) return std::nullopt;
  if (name->empty()) {
    error(field.position, field.path, "must not be empty");
    return std::nullopt;
  }
  bool plain = name->size() <= kMaxNameLength;
  for (char c : *name) {
    plain = plain && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
                      c == '_' || c == '.');
  }
  if (!plain) {
    error(field.position, field.path,
          quote(*name) + " is not a valid name: use up to " + std::to_string(kMaxNameLength) +
              " letters, digits, '-', '_' or '.'");
    return std::nullopt;
  }
  return name;
}

std::optional<std::string> PolicyReader::read_spiffe_id(const Field& field, bool wildcard_allowed) {
  auto id = read_text(field);
  if (!id) return std::nullopt;
  constexpr std::string_view kScheme = "spiffe://";
  if (!id->starts_with(kScheme)) {
    error(field.position, field.path, quote(*id) + " must start with spiffe://");
    return std::nullopt;
  }
  if (id->size() == kScheme.size()) {
    error(field.position, field.path, quote(*id) + " names no trust domain");
    return std::nullopt;
  }
  if (has_space_or_control(*id)) {
    error(field.position, field.path, quote(*id) + " must not contain spaces or control characters");
    return std::nullopt;
  }
  size_t star = id->find('*');
  if (star != std::string::npos) {
    if (!wildcard_allowed) {
      error(field.position, field.path, quote(*id) + ": '*' is not allowed here; the identity is matched exactly");
      return std::nullopt;
    }
    if (star + 1 != id->size()) {
      error(field.position, field.path, quote(*id) + ": '*' is allowed only as the last character");
      return std::nullopt;
    }
  }
  return id;
}

std::optional<bool> PolicyReader::read_bool(const Field& field) {
  if (field.node.IsScalar()) {
    const std::string& s = field.node.Scalar();
    if (s == "true" || s == "True" || s == "TRUE") return true;
    if (s == "false" || s == "False" || s == "FALSE") return false;
  }
  error(field.position, field.path, "expected true or false, got " + describe(field.node));
  return std::nullopt;
}

std::optional<uint64_t> PolicyReader::read_integer(const Field& field, uint64_t min, uint64_t max) {
  const std::string range = std::to_string(min) + "-" + std::to_string(max);
  if (!field.node.IsScalar()) {
    error(field.position, field.path, "expected an integer, got " + describe(field.node));
    return std::nullopt;
  }
  const std::string& text = field.node.Scalar();
  if (text.size() > 1 && text[0] == '-' && all_digits(std::string_view(text).substr(1))) {
    error(field.position, field.path, text.substr(0, 24) + " is out of range " + range);
    return std::nullopt;
  }
  if (!all_digits(text)) {
    error(field.position, field.path, "expected an integer, got " + quote(text));
    return std::nullopt;
  }
  uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || value < min || value > max) {
    std::string shown = ec == std::errc() ? std::to_string(value) : text.substr(0, 24) + "...";
    error(field.position, field.path, shown + " is out of range " + range);
    return std::nullopt;
  }
  return value;
}

std::optional<double> PolicyReader::read_number(const Field& field, double min, double max) {
  auto format = [](double v) {
    std::string s = std::to_string(v);
    s.erase(s.find_last_not_of('0') + 1);
    if (!s.empty() && s.back() == '.') s.pop_back();
    return s;
  };
  const std::string range = format(min) + "-" + format(max);
  if (!field.node.IsScalar()) {
    error(field.position, field.path, "expected a number, got " + describe(field.node));
    return std::nullopt;
  }
  const std::string& text = field.node.Scalar();
  double value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec == std::errc::result_out_of_range) {
    error(field.position, field.path, quote(text) + " is out of range " + range);
    return std::nullopt;
  }
  if (ec != std::errc() || end != text.data() + text.size() || !std::isfinite(value)) {
    error(field.position, field.path, "expected a number, got " + quote(text));
    return std::nullopt;
  }
  if (value < min || value > max) {
    error(field.position, field.path, text + " is out of range " + range);
    return std::nullopt;
  }
  return value;
}

std::optional<Duration> PolicyReader::read_duration(const Field& field, bool zero_allowed) {
  if (!field.node.IsScalar()) {
    error(field.position, field.path, "expected a duration such as 250ms or 5s, got " + describe(field.node));
    return std::nullopt;
  }
  Duration value{0};
  std::string why;
  if (!parse_duration(field.node.Scalar(), &value, &why)) {
    error(field.position, field.path, why);
    return std::nullopt;
  }
  if (!zero_allowed && value.count() == 0) {
    error(field.position, field.path, "must be more than 0");
    return std::nullopt;
  }
  return value;
}

std::optional<SocketAddress> PolicyReader::read_address(const Field& field, bool for_binding) {
  if (!field.node.IsScalar()) {
    std::string hint = field.node.IsSequence() ? " (quote an IPv6 address: \"[::1]:15001\")" : "";
    error(field.position, field.path, "expected HOST:PORT, got " + describe(field.node) + hint);
    return std::nullopt;
  }
  std::string why;
  auto address =
      for_binding ? parse_bind_address(field.node.Scalar(), &why) : parse_socket_address(field.node.Scalar(), &why);
  if (!address) error(field.position, field.path, why);
  return address;
}

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

// Relative file names in a policy mean "beside the policy file", so a policy folder can be moved
// or mounted anywhere. The result is absolute or relative to the working directory.
std::string PolicyReader::resolve_file(const std::string& path) const {
  std::filesystem::path file(path);
  if (file.is_absolute() || base_dir_.empty()) return path;
  return (std::filesystem::path(base_dir_) / file).lexically_normal().string();
}

// ---------------------------------------------------------------------------------------------
// Top level

void PolicyReader::read_document(const YAML::Node& root) {
  // A constant that always parses; set here rather than in policy.h, which knows no parsing.
  policy_.admin_address = parse_bind_address(kDefaultAdminAddress, nullptr).value();
  if (!root.IsDefined() || root.IsNull()) {
    error({}, "", "the policy is empty; expected a map with at least `listeners` and `clusters`");
    return;
  }
  const Position root_position = position_of(root, {1, 1});
  if (!root.IsMap()) {
    error(root_position, "",
          "the policy must be a map of keys (version, listeners, clusters, ...), got " + describe(root));
    return;
  }
  auto top = open_section(Field{root, "", root_position}, kTopLevelKeys);
  if (!top) return;

  if (const Field* f = top->find("version")) read_version(*f);
  if (const Field* f = top->find("service")) {
    if (auto service = read_text(*f)) {
      if (service->empty() || has_space_or_control(*service))
        error(f->position, f->path, "must be a non-empty word without spaces");
      else
        policy_.service = *service;
    }
  }
  if (const Field* f = top->find("admin")) read_admin(*f);
  if (const Field* f = top->find("workers")) read_workers(*f);
  if (const Field* f = top->find("log_level")) {
    if (auto level = read_choice(*f, kLogLevels)) policy_.log_level = *level;
  }
  if (const Field* f = top->find("drain_timeout")) {
    if (auto timeout = read_duration(*f, /*zero_allowed=*/true)) policy_.drain_timeout = *timeout;
  }
  if (const Field* f = top->find("drain_delay")) {
    if (auto delay = read_duration(*f, /*zero_allowed=*/true)) policy_.drain_delay = *delay;
  }
  if (const Field* f = top->find("policy_history")) read_policy_history(*f);
  if (const Field* f = top->find("policy_watch")) {
    if (auto watch = read_bool(*f)) policy_.watch = *watch;
  }
  if (const Field* f = top->find("access_log")) read_access_log(*f);
  // Identity before listeners and clusters, which check that it exists where mtls is on.
  if (const Field* f = top->find("identity")) read_identity(*f);

  // The admin address is bound too, so a listener on the same socket is a conflict.
  check_bind_address(policy_.admin_address, "admin.address", admin_position_);
  if (policy_.admin_read_only_address)
    check_bind_address(*policy_.admin_read_only_address, "admin.read_only_address", read_only_admin_position_);
  if (const Field* f = require(*top, "listeners", "a policy needs at least one listener")) read_listeners(*f);
  if (const Field* f = require(*top, "clusters", "a policy needs at least one cluster")) read_clusters(*f);

  resolve_routes();
  check_cluster_use();
  if (const Field* f = top->find("wait_for_clusters")) read_wait_for_clusters(*f);
  if (policy_.drain_delay > policy_.drain_timeout && top->find("drain_delay"))
    warn("drain_delay", "is longer than drain_timeout: a drain ends at drain_timeout, before listeners stop");
}

void PolicyReader::read_version(const Field& field) {
  if (field.node.IsScalar() && field.node.Scalar() == "1") {
    policy_.version = 1;
    return;
  }
  error(field.position, field.path, "must be 1, got " + describe(field.node));
}

void PolicyReader::read_admin(const Field& field) {
  auto section = open_section(field, kAdminKeys);
  if (!section) return;
  const Field* address_field = section->find("address");
  if (!address_field) return;
  auto address = read_address(*address_field, /*for_binding=*/true);
  if (!address) return;
  policy_.admin_address = *address;
  admin_position_ = address_field->position;
  // /config, /clusters and /policy/history tell a reader much about the mesh; /drain and
  // /reload answer loopback peers only, wherever admin is bound.
  if (!is_loopback(*address))
    warn(address_field->path,
         address->text + " is not a loopback address: /config, /clusters and /policy/history answer anyone who "
                         "can reach it (read_only_address serves /metrics, /ready and /live alone)");
  if (const Field* f = section->find("read_only_address")) {
    if (auto ro = read_address(*f, /*for_binding=*/true)) {
      policy_.admin_read_only_address = *ro;
      read_only_admin_position_ = f->position;
    }
  }
}

void PolicyReader::read_workers(const Field& field) {
  if (field.node.IsScalar()) {
    const std::string& text = field.node.Scalar();
    if (text == "auto") {
      policy_.workers = 0;
      return;
    }
    uint64_t n = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
    if (all_digits(text) && ec == std::errc() && end == text.data() + text.size() && n >= 1) {
      if (n > kMaxWorkers) {
        error(field.position, field.path,
              std::to_string(n) + " is more than the maximum of " + std::to_string(kMaxWorkers));
        return;
      }
      policy_.workers = static_cast<unsigned>(n);
      return;
    }
  }
  error(field.position, field.path, "expected a positive integer or 'auto', got " + describe(field.node));
}

void PolicyReader::read_access_log(const Field& field) {
  auto target = read_text(field);
  if (!target) return;
  if (*target == "stdout") {
    policy_.access_log = {AccessLogTarget::stdout_stream, ""};
  } else if (*target == "off") {
    policy_.access_log = {AccessLogTarget::off, ""};
  } else if (target->empty()) {
    error(field.position, field.path, "must be stdout, off or a file path, got ''");
  } else if (target->back() == '/') {
    error(field.position, field.path, quote(*target) + " names a folder; expected stdout, off or a file path");
  } else {
    policy_.access_log = {AccessLogTarget::file, resolve_file(*target)};
    // A bare word close to a keyword is more likely a typo than a file name.
    constexpr std::string_view kKeywords[] = {"stdout", "off", "stderr"};
    if (target->find('/') == std::string::npos && target->find('.') == std::string::npos &&
        (*target == "stderr" || !did_you_mean(*target, kKeywords).empty())) {
      warn(field.path, quote(*target) + " is taken as a file name; only stdout and off are special" +
                           did_you_mean(*target, std::span(kKeywords, 2)));
    }
  }
}

void PolicyReader::read_policy_history(const Field& field) {
  auto target = read_text(field);
  if (!target) return;
  if (*target == "off") {
    policy_.history_path = std::string();
  } else if (target->empty() || target->back() == '/') {
    error(field.position, field.path, "must be off or a file path, got " + quote(*target));
  } else {
    std::string path = resolve_file(*target);
    // Appending events to the policy file itself would make every event a policy change.
    std::error_code ec1, ec2;
    auto a = std::filesystem::weakly_canonical(path, ec1);
    auto b = std::filesystem::weakly_canonical(
        base_dir_.empty() ? std::filesystem::path(file_name_)
                          : std::filesystem::path(base_dir_) / std::filesystem::path(file_name_).filename(),
        ec2);
    if (!ec1 && !ec2 && a == b)
      error(field.position, field.path, quote(*target) + " is the policy file itself");
    else
      policy_.history_path = path;
  }
}

void PolicyReader::read_wait_for_clusters(const Field& field) {
  auto items = open_list(field);
  if (!items) return;
  std::vector<std::string_view> names;
  for (const Cluster& cluster : policy_.clusters)
    if (!cluster.name.empty()) names.push_back(cluster.name);
  for (const Field& item : *items) {
    auto name = read_text(item);
    if (!name) continue;
    if (!cluster_indexes_.count(*name)) {
      error(item.position, item.path, "no cluster is named " + quote(*name) + did_you_mean(*name, names));
      continue;
    }
    if (std::find(policy_.wait_for_clusters.begin(), policy_.wait_for_clusters.end(), *name) !=
        policy_.wait_for_clusters.end()) {
      error(item.position, item.path, quote(*name) + " is listed twice");
      continue;
    }
    policy_.wait_for_clusters.push_back(*name);
  }
}

void PolicyReader::read_identity(const Field& field) {
  identity_given_ = true;  // even if broken: do not also report "mtls needs identity" below
  auto section = open_section(field, kIdentityKeys);
  if (!section) return;
  Identity identity;
  bool complete = true;
  const Field* fields[3] = {nullptr, nullptr, nullptr};
  int next_field = 0;
  auto read_file = [&](std::string_view key, std::string& out, const char* why) {
    const Field* f = require(*section, key, why);
    fields[next_field++] = f;
    if (!f) {
      complete = false;
      return;
    }
    auto path = read_text(*f);
    if (!path || path->empty()) {
      if (path) error(f->position, f->path, "must not be empty");
      complete = false;
      return;
    }
    out = resolve_file(*path);
  };
  read_file("cert", identity.cert, "the PEM certificate chain of this workload");
  read_file("key", identity.key, "the PEM private key of identity.cert");
  read_file("ca", identity.ca, "the PEM trust bundle for peers");
  if (!complete) return;
  if (check_files_) {
    IdentityCheck check = check_identity_files(identity, std::time(nullptr));
    for (const auto& e : check.errors) {
      const Field* f = fields[static_cast<int>(e.file)];
      error(f->position, f->path, e.message);
    }
    for (const auto& w : check.warnings) warn(fields[static_cast<int>(w.file)]->path, w.message);
    identity.spiffe_id = check.spiffe_id;
    identity.cert_not_after = check.cert_not_after;
    identity.ca_not_after = check.ca_not_after;
  }
  policy_.identity = identity;
}

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
  if (listener.protocol == Protocol::tcp) {
    for (std::string_view key :
         {"header_timeout", "body_timeout", "max_header_bytes", "max_body_bytes", "allow_ambiguous_paths"}) {
      if (const Field* f = section->find(key)) warn(f->path, "has no effect on a tcp listener");
    }
  }

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
  if (const Field* f = section->find("match")) {
    route_source.match = f->position;
    route.match = read_match(*f);
  }
  if (const Field* f = require(*section, "cluster", "every route names the cluster it sends to")) {
    route_source.cluster = f->position;
    if (auto cluster = read_text(*f)) {
      if (cluster->empty())
        error(f->position, f->path, "must not be empty");
      else
        route.cluster = *cluster;
    }
  }
  if (const Field* f = section->find("auth")) read_auth(*f, route.auth, &route.auth_off);
  if (const Field* f = section->find("rate_limit")) read_rate_limit(*f, route.rate_limit, &route.rate_limit_off);
  listener.routes.push_back(std::move(route));
  source.routes.push_back(std::move(route_source));
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
        if (!JwksRegistry::instance().load(auth.jwks, &err, &skipped)) error(f->position, f->path, err);
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
    if (auto v = read_text(*f)) {
      if (!is_http_token(*v))
        error(f->position, f->path, quote(*v) + " is not a header name");
      else
        auth.subject_header = lower(*v);
    }
  }
  if (const Field* f = section->find("clock_skew")) {
    if (auto d = read_duration(*f, /*zero_allowed=*/true)) auth.clock_skew = *d;
  }
  if (auth.issuer.empty() && auth.audiences.empty())
    warn(field.path, "neither issuer nor audience is checked: any token the JWKS keys signed, for any service, "
                     "is accepted");
  out = auth;
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
      error(key_position, path, "header '" + name + "' is matched twice");
      continue;
    }
    const Position value_position = value.IsNull() ? key_position : position_of(value, key_position);
    if (!value.IsScalar()) {
      error(value_position, path, "expected the exact header value as a string, got " + describe(value));
      continue;
    }
    const std::string& text = value.Scalar();
    if (text.find_first_of(std::string_view("\r\n\0", 3)) != std::string::npos) {
      error(value_position, path, "a header value cannot contain CR, LF or NUL");
      continue;
    }
    match.headers.push_back({std::move(name), text});
  }
}

// ---------------------------------------------------------------------------------------------
// Clusters

void PolicyReader::read_clusters(const Field& field) {
  auto items = open_list(field);
  if (!items) return;
  if (items->empty()) error(field.position, field.path, "must list at least one cluster");
  for (const Field& item : *items) read_cluster(item);
}

void PolicyReader::read_cluster(const Field& field) {
  auto section = open_section(field, kClusterKeys);
  if (!section) return;
  Cluster cluster;

  if (const Field* f = require(*section, "name", "every cluster needs a name")) {
    if (auto name = read_name(*f)) {
      cluster.name = *name;
      auto [existing, inserted] = cluster_paths_.emplace(*name, field.path);
      if (!inserted) {
        error(f->position, f->path, quote(*name) + " is already the name of " + existing->second);
      } else {
        cluster_indexes_.emplace(*name, policy_.clusters.size());
      }
    }
  }
  if (const Field* f = require(*section, "endpoints", "every cluster needs at least one endpoint")) {
    read_endpoints(*f, cluster);
  }
  if (const Field* f = section->find("vips")) read_vips(*f, cluster);
  if (const Field* f = section->find("mtls")) read_cluster_mtls(*f, cluster);
  if (const Field* f = section->find("lb")) {
    if (auto lb = read_choice(*f, kLbPolicies)) cluster.lb = *lb;
  }
  if (const Field* f = section->find("connect_timeout")) {
    if (auto d = read_duration(*f, /*zero_allowed=*/false)) cluster.connect_timeout = *d;
  }
  if (const Field* f = section->find("timeout")) {
    if (auto d = read_duration(*f, /*zero_allowed=*/false)) cluster.timeout = *d;
  }
  if (const Field* f = section->find("idle_timeout")) {
    if (auto d = read_duration(*f, /*zero_allowed=*/false)) cluster.idle_timeout = *d;
  }
  if (const Field* f = section->find("retry")) read_retry(*f, cluster);
  if (const Field* f = section->find("circuit_breaker")) read_circuit_breaker(*f, cluster.circuit_breaker);
  if (const Field* f = section->find("outlier_detection")) read_outlier_detection(*f, cluster.outlier_detection);

  if (cluster.retry.per_try_timeout > cluster.timeout) {
    warn(join_path(field.path, "retry.per_try_timeout"),
         format_duration(cluster.retry.per_try_timeout) + " is longer than the cluster timeout " +
             format_duration(cluster.timeout) + ", which ends every attempt first");
  }
  policy_.clusters.push_back(std::move(cluster));
}

void PolicyReader::read_endpoints(const Field& field, Cluster& cluster) {
  auto items = open_list(field);
  if (!items) return;
  if (items->empty()) {
    error(field.position, field.path, "must not be empty");
    return;
  }
  std::unordered_set<std::string> seen;
  for (const Field& item : *items) {
    auto address = read_address(item, /*for_binding=*/false);
    if (!address) continue;
    if (!seen.insert(address->text).second)
      warn(item.path, address->text + " is listed twice and will get twice the share of requests");
    cluster.endpoints.push_back(*address);
  }
}

void PolicyReader::read_vips(const Field& field, Cluster& cluster) {
  auto items = open_list(field);
  if (!items) return;
  const std::string cluster_path = field.path.substr(0, field.path.rfind('.'));
  for (const Field& item : *items) {
    auto address = read_address(item, /*for_binding=*/false);
    if (!address) continue;
    // An original destination must pick exactly one cluster.
    auto [existing, inserted] = vip_owners_.emplace(address->text, cluster_path);
    if (!inserted) {
      error(item.position, item.path,
            address->text + " is already a vip of " +
                (existing->second == cluster_path ? "this cluster" : existing->second));
      continue;
    }
    cluster.vips.push_back(*address);
  }
}

void PolicyReader::read_cluster_mtls(const Field& field, Cluster& cluster) {
  if (field.node.IsScalar() &&
      (field.node.Scalar() == "false" || field.node.Scalar() == "False" || field.node.Scalar() == "FALSE")) {
    cluster.mtls = {};
    return;
  }
  if (!field.node.IsMap()) {
    // `mtls: true` alone would leave open which server identity to verify.
    error(field.position, field.path,
          "expected false or a map {server_identity: spiffe://...}, got " + describe(field.node));
    return;
  }
  auto section = open_section(field, kClusterMtlsKeys);
  if (!section) return;
  require_identity(field.position, field.path);
  const Field* f = require(*section, "server_identity", "the spiffe:// identity the upstream must present");
  if (!f) return;
  auto id = read_spiffe_id(*f, /*wildcard_allowed=*/false);
  if (!id) return;
  cluster.mtls = {true, *id, {}};
  if (const Field* sni = section->find("sni")) {
    auto name = read_text(*sni);
    if (!name) return;
    bool valid = !name->empty() && name->size() <= 253 && name->front() != '.' && name->front() != '-';
    for (char c : *name)
      valid = valid && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.');
    if (!valid)
      error(sni->position, sni->path, quote(*name) + " is not a DNS name (letters, digits, '-' and '.')");
    else
      cluster.mtls.sni = *name;
  }
}

void PolicyReader::read_retry(const Field& field, Cluster& cluster) {
  auto section = open_section(field, kRetryKeys);
  if (!section) return;
  RetryPolicy& retry = cluster.retry;

  if (const Field* f = section->find("retries")) {
    if (auto n = read_integer(*f, 0, kMaxU32)) retry.retries = static_cast<uint32_t>(*n);
  }
  const Field* on_field = section->find("on");
  bool on_valid = true;
  if (on_field) {
    on_valid = false;
    if (auto items = open_list(*on_field)) {
      if (items->empty()) {
        error(on_field->position, on_field->path, "must not be empty; set retries: 0 to turn retries off");
      } else {
        uint32_t on = 0;
        bool all_valid = true;
        for (const Field& item : *items) {
          if (auto bit = read_choice(item, kRetryConditions))
            on |= *bit;
          else
            all_valid = false;
        }
        if (all_valid) retry.on = on;
        on_valid = all_valid;
      }
    }
  }
  const Field* codes_field = section->find("status_codes");
  if (codes_field) {
    if (auto items = open_list(*codes_field)) {
      for (const Field& item : *items) {
        if (auto code = read_integer(item, 100, 599)) retry.status_codes.push_back(static_cast<int>(*code));
      }
    }
  }
  if (const Field* f = section->find("per_try_timeout")) {
    if (auto d = read_duration(*f, /*zero_allowed=*/true)) retry.per_try_timeout = *d;
  }
  if (const Field* f = section->find("backoff")) read_backoff(*f, retry);
  if (const Field* f = section->find("budget")) read_budget(*f, retry);
  if (const Field* f = section->find("nested")) {
    if (auto nested = read_bool(*f)) retry.nested = *nested;
  }

  if (!on_valid) return;  // what on means is unknown, so nothing can be said about status_codes
  const bool retries_on_codes = (retry.on & kRetryRetriableStatusCodes) != 0;
  if (retries_on_codes && !codes_field) {
    error(on_field ? on_field->position : field.position, join_path(field.path, "status_codes"),
          "missing; retriable-status-codes in retry.on needs the list of codes");
  } else if (retries_on_codes && codes_field && codes_field->node.IsSequence() && codes_field->node.size() == 0) {
    error(codes_field->position, codes_field->path, "must not be empty when retry.on has retriable-status-codes");
  } else if (!retries_on_codes && codes_field && on_field) {
    warn(codes_field->path, "has no effect: retry.on does not include retriable-status-codes");
  } else if (!retries_on_codes && codes_field) {
    warn(codes_field->path,
         "has no effect: retry.on (default connect-failure) does not include retriable-status-codes");
  }
}

void PolicyReader::read_backoff(const Field& field, RetryPolicy& retry) {
  auto section = open_section(field, kBackoffKeys);
  if (!section) return;
  if (const Field* f = section->find("base")) {
    if (auto d = read_duration(*f, /*zero_allowed=*/true)) retry.backoff_base = *d;
  }
  const Field* max_field = section->find("max");
  if (max_field) {
    if (auto d = read_duration(*max_field, /*zero_allowed=*/true)) retry.backoff_max = *d;
  }
  if (retry.backoff_max < retry.backoff_base) {
    error(max_field ? max_field->position : field.position, join_path(field.path, "max"),
          format_duration(retry.backoff_max) + (max_field ? "" : " (the default)") + " is less than base " +
              format_duration(retry.backoff_base));
  }
}

void PolicyReader::read_budget(const Field& field, RetryPolicy& retry) {
  auto section = open_section(field, kBudgetKeys);
  if (!section) return;
  if (const Field* f = section->find("ratio")) {
    if (auto ratio = read_number(*f, 0, 1)) retry.budget_ratio = *ratio;
  }
  if (const Field* f = section->find("min_per_second")) {
    if (auto rate = read_number(*f, 0, 1e9)) retry.budget_min_per_second = *rate;
  }
}

void PolicyReader::read_circuit_breaker(const Field& field, CircuitBreakerLimits& limits) {
  auto section = open_section(field, kCircuitBreakerKeys);
  if (!section) return;
  // A limit of 0 connections or requests would refuse everything; 0 pending requests (no queue)
  // and 0 retries in flight are meaningful choices.
  if (const Field* f = section->find("max_connections")) {
    if (auto n = read_integer(*f, 1, kMaxU32)) limits.max_connections = static_cast<uint32_t>(*n);
  }
  if (const Field* f = section->find("max_pending_requests")) {
    if (auto n = read_integer(*f, 0, kMaxU32)) limits.max_pending_requests = static_cast<uint32_t>(*n);
  }
  if (const Field* f = section->find("max_requests")) {
    if (auto n = read_integer(*f, 1, kMaxU32)) limits.max_requests = static_cast<uint32_t>(*n);
  }
  if (const Field* f = section->find("max_retries")) {
    if (auto n = read_integer(*f, 0, kMaxU32)) limits.max_retries = static_cast<uint32_t>(*n);
  }
}

void PolicyReader::read_outlier_detection(const Field& field, OutlierDetection& outlier) {
  auto section = open_section(field, kOutlierDetectionKeys);
  if (!section) return;
  if (const Field* f = section->find("consecutive_failures")) {
    if (auto n = read_integer(*f, 1, kMaxU32)) outlier.consecutive_failures = static_cast<uint32_t>(*n);
  }
  if (const Field* f = section->find("base_ejection_time")) {
    if (auto d = read_duration(*f, /*zero_allowed=*/false)) outlier.base_ejection_time = *d;
  }
  const Field* max_field = section->find("max_ejection_time");
  if (max_field) {
    if (auto d = read_duration(*max_field, /*zero_allowed=*/false)) outlier.max_ejection_time = *d;
  }
  if (const Field* f = section->find("max_ejection_percent")) {
    if (auto n = read_integer(*f, 0, 100)) outlier.max_ejection_percent = static_cast<uint32_t>(*n);
  }
  if (outlier.max_ejection_time < outlier.base_ejection_time) {
    error(max_field ? max_field->position : field.position, join_path(field.path, "max_ejection_time"),
          format_duration(outlier.max_ejection_time) + (max_field ? "" : " (the default)") +
              " is less than base_ejection_time " + format_duration(outlier.base_ejection_time));
  }
}

// ---------------------------------------------------------------------------------------------
// Checks across sections

void PolicyReader::require_identity(Position at, const std::string& path) {
  if (!identity_given_) error(at, path, "mtls needs the top-level identity block (identity: {cert, key, ca})");
}

// Two sockets on one address cannot both bind, and 0.0.0.0:P (or [::]:P) takes port P on every
// address of its family. Port 0 asks the kernel for a fresh port each time, so it never clashes.
void PolicyReader::check_bind_address(const SocketAddress& address, const std::string& path, Position at) {
  if (address.port() == 0) return;
  // "[::]" takes IPv4 as well (a dual-stack socket): it claims the IPv4 wildcard of its port too.
  if (address.family() == AF_INET6 && is_unspecified(address)) {
    SocketAddress v4 = parse_bind_address("0.0.0.0:" + std::to_string(address.port()), nullptr).value();
    v4.text = address.text;
    check_one_family(v4, path, at);
  }
  check_one_family(address, path, at);
}

void PolicyReader::check_one_family(const SocketAddress& address, const std::string& path, Position at) {
  BoundPort& bound = bound_ports_[{address.family(), address.port()}];
  if (auto same = bound.by_text.find(address.text); same != bound.by_text.end()) {
    error(at, path, address.text + " is already used by " + same->second);
    return;
  }
  if (!bound.wildcard_owner.empty()) {
    error(at, path, address.text + " clashes with " + bound.wildcard_owner + " (" + bound.wildcard_text + ")");
    return;
  }
  if (is_unspecified(address) && !bound.by_text.empty()) {
    const auto& [other_text, other_path] = *bound.by_text.begin();
    error(at, path, address.text + " clashes with " + other_path + " (" + other_text + ")");
    return;
  }
  bound.by_text.emplace(address.text, path);
  if (is_unspecified(address)) {
    bound.wildcard_owner = path;
    bound.wildcard_text = address.text;
  }
}

void PolicyReader::resolve_routes() {
  std::vector<std::string_view> names;
  for (const Cluster& cluster : policy_.clusters)
    if (!cluster.name.empty()) names.push_back(cluster.name);
  for (size_t l = 0; l < policy_.listeners.size(); ++l) {
    Listener& listener = policy_.listeners[l];
    const ListenerSource& source = listener_sources_[l];
    for (size_t r = 0; r < listener.routes.size(); ++r) {
      Route& route = listener.routes[r];
      if (route.cluster.empty()) continue;  // already reported
      auto found = cluster_indexes_.find(route.cluster);
      if (found == cluster_indexes_.end()) {
        error(source.routes[r].cluster, join_path(source.routes[r].path, "cluster"),
              "no cluster is named " + quote(route.cluster) + did_you_mean(route.cluster, names));
        continue;
      }
      route.cluster_index = found->second;
    }
  }
}

void PolicyReader::check_cluster_use() {
  std::vector<bool> routed(policy_.clusters.size(), false);
  for (const Listener& listener : policy_.listeners)
    for (const Route& route : listener.routes)
      if (!route.cluster.empty() && cluster_indexes_.count(route.cluster)) routed[route.cluster_index] = true;
  const bool intercepts_outbound = interceptors_.count(Intercept::outbound) > 0;
  for (size_t i = 0; i < policy_.clusters.size(); ++i) {
    const Cluster& cluster = policy_.clusters[i];
    // Skips unnamed clusters and the second of two with one name; both are errors already.
    auto registered = cluster_indexes_.find(cluster.name);
    if (registered == cluster_indexes_.end() || registered->second != i) continue;
    const std::string& path = cluster_paths_[cluster.name];
    // A cluster with vips is reached by original destination on an outbound intercept listener.
    const bool reached_by_vip = !cluster.vips.empty() && intercepts_outbound;
    if (!routed[i] && !reached_by_vip) warn(path, "cluster '" + cluster.name + "' is not used by any route");
    if (!cluster.vips.empty() && !intercepts_outbound)
      warn(join_path(path, "vips"), "no listener has intercept: outbound, so these vips are never used");
  }
}

// ---------------------------------------------------------------------------------------------
// Documents

// yaml-cpp's parse events, each ignored: the probes below override the few they look at.
class EventProbe : public YAML::EventHandler {
 public:
  void OnDocumentStart(const YAML::Mark&) override {}
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t, const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}
};

// Notes whether a YAML document holds anything but an empty value, and where that starts.
class DocumentProbe : public EventProbe {
 public:
  bool has_content() const { return has_content_; }
  Position start() const { return start_; }

  void OnAlias(const YAML::Mark& mark, YAML::anchor_t) override { saw(mark); }
  void OnScalar(const YAML::Mark& mark, const std::string&, YAML::anchor_t, const std::string&) override { saw(mark); }
  void OnSequenceStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {
    saw(mark);
  }
  void OnMapStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {
    saw(mark);
  }

 private:
  void saw(const YAML::Mark& mark) {
    if (has_content_) return;
    has_content_ = true;
    start_ = mark.is_null() ? Position{} : Position{mark.line + 1, mark.column + 1};
  }
  bool has_content_ = false;
  Position start_;
};

// Where a second document with content starts, if the text has one.
//
// yaml-cpp 0.7's LoadAll loops forever, allocating, on a document that does not consume its first
// token (a file starting with ','; jbeder/yaml-cpp#1040, fixed upstream after 0.7). So the policy
// is read with Load, which parses one document, and this asks a parser for at most two documents
// only to reject a second one. May throw YAML::Exception like any parse.
std::optional<Position> second_document(const std::string& text) {
  std::istringstream in(text);
  YAML::Parser parser(in);
  DocumentProbe first, second;
  if (!parser.HandleNextDocument(first)) return std::nullopt;
  if (!parser.HandleNextDocument(second) || !second.has_content()) return std::nullopt;
  return second.start();
}

// Where the first character that is not blank, a comment, a directive or a document marker is;
// nullopt when there is none, i.e. the file is empty as far as YAML is concerned.
std::optional<Position> first_content(std::string_view text) {
  if (text.starts_with("\xEF\xBB\xBF")) text.remove_prefix(3);  // UTF-8 byte order mark
  int line = 0;
  for (size_t start = 0; start <= text.size();) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    std::string_view content = text.substr(start, end - start);
    ++line;
    size_t indent = content.find_first_not_of(" \t\r");
    if (indent != std::string_view::npos) {
      std::string_view rest = content.substr(indent);
      const bool marker = (rest.starts_with("---") || rest.starts_with("...")) && indent == 0 &&
                          (rest.size() == 3 || rest[3] == ' ' || rest[3] == '\t' || rest[3] == '\r');
      const bool directive = indent == 0 && rest.starts_with('%');
      if (!rest.starts_with('#') && !directive) {
        if (!marker) return Position{line, static_cast<int>(indent) + 1};
        size_t after = rest.find_first_not_of(" \t\r", 3);
        if (after != std::string_view::npos && rest[after] != '#')
          return Position{line, static_cast<int>(indent + after) + 1};
      }
    }
    start = end + 1;
  }
  return std::nullopt;
}

// ---------------------------------------------------------------------------------------------
// File reading

// Reads a whole file. Returns false with a strerror sentence on failure.
bool read_whole_file(const std::string& path, std::string* contents, std::string* why) {
  auto describe_errno = [](int err) {
    char buffer[256];
    return std::string(strerror_r(err, buffer, sizeof buffer));
  };
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    *why = describe_errno(errno);
    return false;
  }
  contents->clear();
  char buffer[65536];
  while (true) {
    ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      *why = describe_errno(errno);
      ::close(fd);
      return false;
    }
    if (n == 0) break;
    if (contents->size() + static_cast<size_t>(n) > kMaxPolicyBytes) {
      *why = "larger than " + std::to_string(kMaxPolicyBytes / (1024 * 1024)) + " MiB, which no policy is";
      ::close(fd);
      return false;
    }
    contents->append(buffer, static_cast<size_t>(n));
  }
  ::close(fd);
  return true;
}

// Whether yaml-cpp read a quoted scalar (or a tagged one) that starts on `at`'s line, at or
// before it: an anchor or a tag puts the scalar's mark before its quote. It is how an open
// quote that the scan found is confirmed as one that yaml-cpp ended at the end of the file, so
// that no slip of the scan can ever refuse a policy that parses.
class QuotedScalarProbe : public EventProbe {
 public:
  explicit QuotedScalarProbe(const YamlOpener& at) : at_(at) {}
  bool found() const { return found_; }

  void OnScalar(const YAML::Mark& mark, const std::string& tag, YAML::anchor_t, const std::string&) override {
    // yaml-cpp tags a plain scalar "?" and a quoted or block one "!", unless the file tags it.
    if (tag != "?" && mark.line + 1 == at_.line && mark.column + 1 <= at_.column) found_ = true;
  }

 private:
  YamlOpener at_;
  bool found_ = false;
};

// A quote that yaml-cpp 0.7 let run to the end of the file instead of reporting it: the whole
// rest of the file became one string, and the errors the walk would report about it (keys
// "missing", a port that "is not a number") would only mislead. May throw YAML::Exception like
// any parse.
std::optional<YamlOpener> unclosed_quote(const std::string& text) {
  std::optional<YamlOpener> open = find_unclosed_opener(text);
  if (!open || (open->symbol != '"' && open->symbol != '\'')) return std::nullopt;
  std::istringstream in(text);
  YAML::Parser parser(in);
  QuotedScalarProbe probe(*open);
  parser.HandleNextDocument(probe);
  if (!probe.found()) return std::nullopt;
  return open;
}

std::string never_closed(const YamlOpener& open) {
  const char mark = open.symbol == '\'' ? '"' : '\'';  // "'" reads better than '''
  return std::string("invalid YAML: the ") + mark + open.symbol + mark + " opened here is never closed";
}

}  // namespace

PolicyLoadResult load_policy_text(const std::string& text, const std::string& file_name, const std::string& base_dir,
                                  bool check_files) {
  PolicyLoadResult result;
  result.sha256 = sha256_hex(text);
  PolicyReader reader(file_name, base_dir, check_files);
  // The boundary: yaml-cpp throws, nothing beyond this function does.
  try {
    const YAML::Node root = YAML::Load(text);
    if (auto quote = unclosed_quote(text)) {
      reader.fail({quote->line, quote->column}, never_closed(*quote));
    } else {
      if (auto second = second_document(text))
        reader.error(*second, "", "a policy file holds one YAML document; this is document 2");
      auto content = first_content(text);
      if (root.IsNull() && content) {
        // Text that YAML reads as no value at all, such as "null" or a stray ','.
        reader.error(*content, "",
                     "the policy must be a map of keys (version, listeners, clusters, ...), but the "
                     "document parses as null");
      } else {
        reader.read_document(root);
      }
    }
  } catch (const YAML::DeepRecursion& e) {
    // yaml-cpp's guard against stack exhaustion; its own message ("bad file") says nothing useful.
    Position at = e.mark.is_null() ? Position{} : Position{e.mark.line + 1, e.mark.column + 1};
    reader.fail(at, "invalid YAML: nested more than " + std::to_string(e.depth()) + " levels deep");
  } catch (const YAML::Exception& e) {
    Position at = e.mark.is_null() ? Position{} : Position{e.mark.line + 1, e.mark.column + 1};
    // yaml-cpp notices an unclosed bracket (or a quote) where the text ends; the mistake is where
    // it opened.
    const bool at_end = e.msg.find("flow not found") != std::string::npos ||
                        (!e.mark.is_null() && static_cast<size_t>(e.mark.pos) >= text.size());
    std::optional<YamlOpener> open = at_end ? find_unclosed_opener(text) : std::nullopt;
    if (open) {
      reader.fail({open->line, open->column}, never_closed(*open) + " (" + e.msg + ")");
    } else {
      reader.fail(at, "invalid YAML: " + (e.msg.empty() ? std::string("cannot parse") : e.msg));
    }
  } catch (const std::exception& e) {
    // Only memory exhaustion or a yaml-cpp bug can get here; still an answer, not a crash.
    reader.fail({}, std::string("cannot read the policy: ") + e.what());
  }

  result.errors = reader.take_errors();
  result.warnings = std::move(reader.warnings());
  if (!result.errors.empty()) return result;

  auto policy = std::make_shared<Policy>(std::move(reader.policy()));
  policy->source_path = file_name;
  policy->sha256 = result.sha256;
  result.policy = std::move(policy);
  return result;
}

std::vector<std::string> policy_key_paths() {
  // The same tables the sections are read with (open_section), each under the path it sits at.
  std::vector<std::string> out;
  auto add = [&out](const std::string& prefix, std::span<const std::string_view> keys) {
    for (std::string_view key : keys) out.push_back(prefix + std::string(key));
  };
  add("", kTopLevelKeys);
  add("admin.", kAdminKeys);
  add("identity.", kIdentityKeys);
  add("listeners[].", kListenerKeys);
  add("listeners[].routes[].", kRouteKeys);
  add("listeners[].routes[].match.", kMatchKeys);
  for (const std::string owner : {"listeners[].", "listeners[].routes[]."}) {
    add(owner + "auth.", kAuthKeys);
    add(owner + "rate_limit.", kRateLimitKeys);
  }
  add("clusters[].", kClusterKeys);
  add("clusters[].mtls.", kClusterMtlsKeys);
  add("clusters[].retry.", kRetryKeys);
  add("clusters[].retry.backoff.", kBackoffKeys);
  add("clusters[].retry.budget.", kBudgetKeys);
  add("clusters[].circuit_breaker.", kCircuitBreakerKeys);
  add("clusters[].outlier_detection.", kOutlierDetectionKeys);
  return out;
}

PolicyLoadResult load_policy_file(const std::string& path) {
  std::string contents;
  std::string why;
  if (!read_whole_file(path, &contents, &why)) {
    PolicyLoadResult result;
    result.errors.push_back({path, 0, 0, "cannot read: " + why});
    return result;
  }
  std::string base_dir = std::filesystem::path(path).parent_path().string();
  return load_policy_text(contents, path, base_dir, /*check_files=*/true);
}

}  // namespace pilotfish
