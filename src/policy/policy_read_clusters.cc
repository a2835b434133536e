// The policy reader's clusters: each cluster, its endpoints, vips and mtls, its retry policy
// (with backoff and budget), its circuit breaker and its outlier detection.

#include "policy/policy_reader.h"

#include <yaml-cpp/yaml.h>

#include <optional>
#include <string>
#include <unordered_set>
#include <utility>

namespace pilotfish::policy_detail {

namespace {

constexpr Choice<LbPolicy> kLbPolicies[] = {
    {"round_robin", LbPolicy::round_robin}, {"least_request", LbPolicy::least_request}, {"random", LbPolicy::random}};
constexpr Choice<UpstreamProtocol> kUpstreamProtocols[] = {
    {"http1", UpstreamProtocol::http1}, {"http2", UpstreamProtocol::http2}, {"auto", UpstreamProtocol::automatic}};
constexpr Choice<uint32_t> kRetryConditions[] = {{"connect-failure", kRetryConnectFailure},
                                                 {"reset", kRetryReset},
                                                 {"5xx", kRetry5xx},
                                                 {"gateway-error", kRetryGatewayError},
                                                 {"retriable-status-codes", kRetryRetriableStatusCodes},
                                                 {"cancelled", kRetryGrpcCancelled},
                                                 {"deadline-exceeded", kRetryGrpcDeadlineExceeded},
                                                 {"resource-exhausted", kRetryGrpcResourceExhausted},
                                                 {"internal", kRetryGrpcInternal},
                                                 {"unavailable", kRetryGrpcUnavailable}};

}  // namespace

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
  if (const Field* f = section->find("protocol")) {
    if (auto p = read_choice(*f, kUpstreamProtocols)) {
      cluster.protocol = *p;
      // auto is decided in the TLS handshake (ALPN): a plain connection has nothing to ask with.
      if (*p == UpstreamProtocol::automatic && !cluster.mtls.enabled)
        error(f->position, f->path, "auto needs mtls on this cluster (the endpoint picks h2 or http/1.1 in ALPN); "
                                    "write http2 for h2c with prior knowledge");
    }
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

}  // namespace pilotfish::policy_detail
