// The policy reader's top level: read_document, which walks the whole file, and the top-level
// sections (version, admin, workers, access_log, policy_history, wait_for_clusters, identity).
// Listeners and clusters are read in policy_read_listeners.cc and policy_read_clusters.cc.

#include "policy/policy_reader.h"
#include "tls/identity_files.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <ctime>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace pilotfish::policy_detail {

namespace {

constexpr unsigned kMaxWorkers = 1024;  // the same bound as `run --workers`

constexpr std::string_view kDefaultAdminAddress = "127.0.0.1:9901";

constexpr Choice<LogLevel> kLogLevels[] = {
    {"debug", LogLevel::debug}, {"info", LogLevel::info}, {"warn", LogLevel::warn}, {"error", LogLevel::error}};

}  // namespace

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

}  // namespace pilotfish::policy_detail
