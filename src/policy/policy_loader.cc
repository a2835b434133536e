// The policy loader: YAML text in, a validated and immutable Policy out.
//
// This file holds the checks across sections, made once everything is read, and the public
// entry points of policy_loader.h; the reader itself is policy_reader.h and policy_read*.cc.
// These are the only files that include yaml-cpp. yaml-cpp reports problems by throwing, so the
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
#include "policy/policy_reader.h"
#include "policy/yaml_openers.h"
#include "text/sha256.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml-cpp/depthguard.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pilotfish {

std::string PolicyError::to_string() const {
  if (line <= 0) return file + ": " + message;
  return file + ":" + std::to_string(line) + ":" + std::to_string(column) + ": " + message;
}

namespace policy_detail {

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
      for (size_t i = 0; i < route.clusters.size(); ++i) {
        WeightedCluster& c = route.clusters[i];
        auto found = cluster_indexes_.find(c.name);
        if (found == cluster_indexes_.end())
          error(source.routes[r].split[i].first, source.routes[r].split[i].second,
                "no cluster is named " + quote(c.name) + did_you_mean(c.name, names));
        else
          c.index = found->second;
      }
      if (route.mirror && source.routes[r].mirror) {
        const auto& [position, path] = *source.routes[r].mirror;
        auto found = cluster_indexes_.find(route.mirror->cluster);
        if (found == cluster_indexes_.end())
          error(position, path, "no cluster is named " + quote(route.mirror->cluster) + did_you_mean(route.mirror->cluster, names));
        else if (route.cluster == route.mirror->cluster ||
                 std::any_of(route.clusters.begin(), route.clusters.end(),
                             [&](const WeightedCluster& c) { return c.name == route.mirror->cluster; }))
          error(position, path, "is a cluster this route sends to: a copy would reach it twice");
        else
          route.mirror->cluster_index = found->second;
      }
      if (!route.cluster.empty()) {
        auto found = cluster_indexes_.find(route.cluster);
        if (found == cluster_indexes_.end()) {
          error(source.routes[r].cluster, join_path(source.routes[r].path, "cluster"),
                "no cluster is named " + quote(route.cluster) + did_you_mean(route.cluster, names));
          continue;
        }
        route.cluster_index = found->second;
      }
      if (!route.timeout && !route.retry) continue;
      // The route's overrides on a copy of each cluster it sends to.
      std::vector<size_t> targets;
      if (!route.cluster.empty()) targets.push_back(route.cluster_index);
      for (const auto& c : route.clusters) targets.push_back(c.index);
      for (size_t index : targets) {
        if (index >= policy_.clusters.size()) continue;  // an unknown name, reported
        auto tuned = std::make_shared<Cluster>(policy_.clusters[index]);
        if (route.timeout) tuned->timeout = *route.timeout;
        if (route.retry) {
          // The retry budget is the cluster's (its counters are shared): its settings stay.
          RetryPolicy retry = *route.retry;
          retry.budget_ratio = tuned->retry.budget_ratio;
          retry.budget_min_per_second = tuned->retry.budget_min_per_second;
          tuned->retry = retry;
        }
        route.tuned.push_back(std::move(tuned));
      }
    }
  }
}

void PolicyReader::check_cluster_use() {
  std::vector<bool> routed(policy_.clusters.size(), false);
  for (const Listener& listener : policy_.listeners)
    for (const Route& route : listener.routes) {
      if (!route.cluster.empty() && cluster_indexes_.count(route.cluster)) routed[route.cluster_index] = true;
      for (const auto& c : route.clusters)
        if (cluster_indexes_.count(c.name)) routed[c.index] = true;
      if (route.mirror && cluster_indexes_.count(route.mirror->cluster)) routed[route.mirror->cluster_index] = true;
    }
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

}  // namespace policy_detail

using namespace policy_detail;

namespace {

// A policy is a few kilobytes; anything near this is not a policy (or is /dev/zero), and reading
// it whole would only waste memory.
constexpr size_t kMaxPolicyBytes = 16 * 1024 * 1024;

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
  // Appended to one string: g++ 12 with LTO warns (falsely) about a chain of operator+ here.
  std::string text = "invalid YAML: the ";
  text += mark;
  text += open.symbol;
  text += mark;
  text += " opened here is never closed";
  return text;
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
  result.jwks = std::move(reader.jwks());
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
  add("listeners[].http2.", kHttp2Keys);
  add("listeners[].routes[].", kRouteKeys);
  add("listeners[].routes[].match.", kMatchKeys);
  add("listeners[].routes[].clusters[].", kWeightedClusterKeys);
  add("listeners[].routes[].retry.", kRouteRetryKeys);
  add("listeners[].routes[].retry.backoff.", kBackoffKeys);
  for (const std::string owner : {"listeners[].", "listeners[].routes[]."}) {
    add(owner + "authorization.", kAuthorizationKeys);
    for (const std::string list : {"deny[].", "allow[]."}) {
      add(owner + "authorization." + list, kAuthzRuleKeys);
      add(owner + "authorization." + list + "paths[].", kAuthzPathKeys);
    }
  }
  add("listeners[].routes[].request_headers.", kHeaderRulesKeys);
  add("listeners[].routes[].response_headers.", kHeaderRulesKeys);
  add("listeners[].routes[].fault.", kFaultKeys);
  add("listeners[].routes[].mirror.", kMirrorKeys);
  add("listeners[].routes[].fault.delay.", kFaultDelayKeys);
  add("listeners[].routes[].fault.abort.", kFaultAbortKeys);
  add("listeners[].routes[].respond.", kRespondKeys);
  add("listeners[].routes[].redirect.", kRedirectKeys);
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
