// The policy loader: the reference policy, every class of error with its exact position, and
// a fuzz-ish pass over mutated policies. Address and duration syntax have their own test files.

#include "pilotfish/policy_loader.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

namespace pilotfish {
namespace {

// A copy of the outside contract's reference (shared/contract/policy-reference.yaml, beside the
// repository where the team works), embedded because a clone has no such folder: these tests
// hold the loader to the contract's own values. Keep it byte-for-byte in step with the contract.
// The users' reference, docs/policy-reference.yaml, has its own tests (policy_reference_test.cc).
constexpr const char* kReferencePolicy =
    R"yaml(# pilotfish policy, version 1: every key below must be accepted, with the meaning its comment gives.
# A policy file may leave out any key that has a default. Unknown keys are an error (typos must not
# silently change behaviour). Durations are strings with a unit: 250ms, 5s, 2m. Addresses are
# HOST:PORT; IPv6 as [::1]:15001.
version: 1

service: payments                       # the service this sidecar runs beside: logs, metric labels

admin:
  address: 127.0.0.1:9901               # /metrics /ready /live /config /clusters /policy/history

workers: auto                           # event-loop threads; auto (default) = one per CPU

access_log: stdout                      # stdout (default) | off | a file path; one JSON line per request

identity:                               # this workload's mTLS identity, used where mtls is on
  cert: certs/payments.pem              # PEM chain; the leaf carries a spiffe:// URI SAN
  key: certs/payments-key.pem
  ca: certs/ca.pem                      # trust bundle for peers
                                        # relative paths resolve against the policy file's folder

listeners:
  - name: inbound                       # traffic from other services to the local app
    address: 0.0.0.0:15006
    intercept: inbound
    protocol: http                      # http (default) | tcp
    mtls: true                          # require a client certificate that chains to identity.ca
    allow:                              # peer identities let in; absent = any verified peer
      - spiffe://shop.local/ns/shop/sa/gateway
      - spiffe://shop.local/ns/shop/sa/orders-*      # a trailing * matches any rest
    routes:
      - cluster: local-app              # a route without match takes everything

  - name: outbound                      # traffic from the local app to other services
    address: 127.0.0.1:15001
    intercept: outbound                 # none (default) | inbound | outbound: `pilotfish iptables` redirects
                                        # that direction's traffic here; the original destination picks the
                                        # cluster by clusters[].vips (outbound)
    header_timeout: 10s                 # whole request head must arrive within this
    body_timeout: 30s                   # whole request body must arrive within this after the head (408); 0 = none
    idle_timeout: 60s                   # keep-alive connection with no request in flight
    max_header_bytes: 65536             # request line + headers; more is answered 431
    routes:                             # first match wins
      - match:
          host: recommendations         # Host header (port ignored), exact, case-insensitive
        cluster: recommendations
      - match:
          path_prefix: /users/
          method: GET
          headers:
            x-canary: "1"               # exact value
        cluster: users-canary
      - match:
          path_prefix: /users/
        cluster: users

  - name: db                            # a non-HTTP service: bytes are proxied as they are
    address: 127.0.0.1:15432
    protocol: tcp
    routes:
      - cluster: postgres

clusters:
  - name: local-app
    endpoints: [127.0.0.1:8080]

  - name: recommendations
    endpoints:
      - 10.0.1.7:15006
      - 10.0.1.8:15006
    vips: [10.96.0.20:80]               # original destinations that mean this cluster (intercept)
    mtls:                               # originate mTLS with identity.cert, verify the server
      server_identity: spiffe://shop.local/ns/shop/sa/recommendations
    lb: least_request                   # round_robin (default) | least_request | random
    connect_timeout: 250ms
    timeout: 3s                         # whole request, every retry included
    idle_timeout: 30s                   # pooled upstream connection unused this long is closed
    retry:
      retries: 2                        # at most 2 more attempts after the first
      on: [connect-failure, reset, gateway-error, retriable-status-codes]   # also: 5xx
      status_codes: [503]               # for retriable-status-codes
      per_try_timeout: 1s
      backoff: {base: 25ms, max: 250ms} # full jitter: wait uniform in [0, min(max, base * 2^n))
      budget: {ratio: 0.2, min_per_second: 10}   # retries stay under 20% of requests (+10/s)
    circuit_breaker:                    # cluster-wide across all workers
      max_connections: 1024
      max_pending_requests: 1024
      max_requests: 1024
      max_retries: 3                    # retries in flight at once
    outlier_detection:                  # per endpoint
      consecutive_failures: 5           # 5xx, connect failure or reset in a row: eject
      base_ejection_time: 30s           # times the number of ejections so far, up to the max
      max_ejection_time: 300s
      max_ejection_percent: 50          # never eject more than this share of endpoints

  - name: users
    endpoints: [10.0.1.9:15006]
    mtls: {server_identity: spiffe://shop.local/ns/shop/sa/users}

  - name: users-canary
    endpoints: [10.0.1.10:15006]
    mtls: {server_identity: spiffe://shop.local/ns/shop/sa/users}

  - name: postgres
    endpoints: [127.0.0.1:5432]
)yaml";

constexpr const char* kFile = "policy.yaml";
constexpr const char* kBaseDir = "/etc/pilotfish";

// The smallest valid policy. Tests insert keys at known lines, so every expected LINE:COL below
// can be checked by counting:
//   top-level keys inserted by with_top() start on line 2, column 1;
//   listener keys inserted by with_listener() start on line 5, column 5;
//   cluster keys inserted by with_cluster() start on line 10, column 5.
constexpr const char* kMinimal =
    "version: 1\n"                        // 1
    "listeners:\n"                        // 2
    "  - name: web\n"                     // 3
    "    address: 127.0.0.1:0\n"          // 4
    "    routes:\n"                       // 5
    "      - cluster: app\n"              // 6
    "clusters:\n"                         // 7
    "  - name: app\n"                     // 8
    "    endpoints: [127.0.0.1:8080]\n";  // 9

// Appended at the end (a top-level key again), so it moves no line the tests point at.
constexpr const char* kIdentityAtEnd = "identity: {cert: certs/me.pem, key: /keys/me-key.pem, ca: ca.pem}\n";

std::string replaced(std::string text, const std::string& from, const std::string& to) {
  size_t at = text.find(from);
  EXPECT_NE(at, std::string::npos) << "test bug: '" << from << "' not in the policy";
  if (at != std::string::npos) text.replace(at, from.size(), to);
  return text;
}
std::string with_top(const std::string& lines) { return replaced(kMinimal, "version: 1\n", "version: 1\n" + lines); }
std::string with_listener(const std::string& lines) {
  return replaced(kMinimal, "    address: 127.0.0.1:0\n", "    address: 127.0.0.1:0\n" + lines);
}
std::string with_cluster(const std::string& lines) { return std::string(kMinimal) + lines; }

PolicyLoadResult load(const std::string& text) { return load_policy_text(text, kFile, kBaseDir); }

std::string describe(const PolicyLoadResult& result) {
  std::string out;
  for (const auto& e : result.errors) out += "\n  error: " + e.to_string();
  for (const auto& w : result.warnings) out += "\n  warning: " + w;
  return out.empty() ? "\n  (no errors, no warnings)" : out;
}

// True when one error is at LINE:COL and its message starts with `prefix`.
::testing::AssertionResult HasError(const PolicyLoadResult& result, int line, int column, const std::string& prefix) {
  if (result.policy) return ::testing::AssertionFailure() << "the policy loaded" << describe(result);
  const std::string wanted =
      std::string(kFile) + ":" + std::to_string(line) + ":" + std::to_string(column) + ": " + prefix;
  for (const auto& e : result.errors)
    if (e.to_string().rfind(wanted, 0) == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "no error starting with\n  " << wanted << "\ngot:" << describe(result);
}

// The same, and it is the only error.
::testing::AssertionResult OnlyError(const PolicyLoadResult& result, int line, int column, const std::string& prefix) {
  auto found = HasError(result, line, column, prefix);
  if (!found) return found;
  if (result.errors.size() != 1) return ::testing::AssertionFailure() << "more than one error:" << describe(result);
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult HasWarning(const PolicyLoadResult& result, const std::string& prefix) {
  for (const auto& w : result.warnings)
    if (w.rfind(prefix, 0) == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "no warning starting with\n  " << prefix << "\ngot:" << describe(result);
}

// A copy, so that `const Policy& p = loaded(load(...))` does not dangle once the result is gone.
Policy loaded(const PolicyLoadResult& result) {
  EXPECT_TRUE(result.ok()) << describe(result);
  EXPECT_TRUE(result.errors.empty());
  return result.policy ? *result.policy : Policy{};
}

// ---------------------------------------------------------------------------------------------
// The reference policy

TEST(ReferencePolicy, LoadsWithEveryValueAsWritten) {
  auto result = load(kReferencePolicy);
  const Policy& p = loaded(result);
  ASSERT_TRUE(result.ok());
  EXPECT_TRUE(result.warnings.empty()) << describe(result);

  EXPECT_EQ(p.version, 1);
  EXPECT_EQ(p.service, "payments");
  EXPECT_EQ(p.admin_address.text, "127.0.0.1:9901");
  EXPECT_EQ(p.admin_address.port(), 9901);
  EXPECT_EQ(p.workers, 0u);  // auto
  EXPECT_EQ(p.access_log.target, AccessLogTarget::stdout_stream);
  ASSERT_TRUE(p.identity.has_value());
  EXPECT_EQ(p.identity->cert, "/etc/pilotfish/certs/payments.pem");
  EXPECT_EQ(p.identity->key, "/etc/pilotfish/certs/payments-key.pem");
  EXPECT_EQ(p.identity->ca, "/etc/pilotfish/certs/ca.pem");
  EXPECT_EQ(p.source_path, kFile);
  EXPECT_EQ(p.sha256.size(), 64u);

  ASSERT_EQ(p.listeners.size(), 3u);
  const Listener& inbound = p.listeners[0];
  EXPECT_EQ(inbound.name, "inbound");
  EXPECT_EQ(inbound.address.text, "0.0.0.0:15006");
  EXPECT_EQ(inbound.intercept, Intercept::inbound);
  EXPECT_EQ(inbound.protocol, Protocol::http);
  EXPECT_TRUE(inbound.mtls);
  EXPECT_EQ(inbound.allow, (std::vector<std::string>{"spiffe://shop.local/ns/shop/sa/gateway",
                                                     "spiffe://shop.local/ns/shop/sa/orders-*"}));
  ASSERT_EQ(inbound.routes.size(), 1u);
  EXPECT_EQ(inbound.routes[0].cluster, "local-app");
  EXPECT_EQ(inbound.routes[0].cluster_index, 0u);
  EXPECT_FALSE(inbound.routes[0].match.host.has_value());
  EXPECT_FALSE(inbound.routes[0].match.path_prefix.has_value());
  EXPECT_FALSE(inbound.routes[0].match.method.has_value());
  EXPECT_TRUE(inbound.routes[0].match.headers.empty());

  const Listener& outbound = p.listeners[1];
  EXPECT_EQ(outbound.name, "outbound");
  EXPECT_EQ(outbound.address.text, "127.0.0.1:15001");
  EXPECT_EQ(outbound.intercept, Intercept::outbound);
  EXPECT_FALSE(outbound.mtls);
  EXPECT_TRUE(outbound.allow.empty());
  EXPECT_EQ(outbound.header_timeout, Duration{10'000});
  EXPECT_EQ(outbound.body_timeout, Duration{30'000});
  EXPECT_EQ(outbound.idle_timeout, Duration{60'000});
  EXPECT_EQ(outbound.max_header_bytes, 65536u);
  ASSERT_EQ(outbound.routes.size(), 3u);
  EXPECT_EQ(outbound.routes[0].match.host, "recommendations");
  EXPECT_EQ(outbound.routes[0].cluster, "recommendations");
  EXPECT_EQ(outbound.routes[0].cluster_index, 1u);
  EXPECT_EQ(outbound.routes[1].match.path_prefix, "/users/");
  EXPECT_EQ(outbound.routes[1].match.method, "GET");
  ASSERT_EQ(outbound.routes[1].match.headers.size(), 1u);
  EXPECT_EQ(outbound.routes[1].match.headers[0].name, "x-canary");
  EXPECT_EQ(outbound.routes[1].match.headers[0].value, "1");
  EXPECT_EQ(outbound.routes[1].cluster, "users-canary");
  EXPECT_EQ(outbound.routes[1].cluster_index, 3u);
  EXPECT_EQ(outbound.routes[2].match.path_prefix, "/users/");
  EXPECT_FALSE(outbound.routes[2].match.method.has_value());
  EXPECT_EQ(outbound.routes[2].cluster_index, 2u);

  const Listener& db = p.listeners[2];
  EXPECT_EQ(db.name, "db");
  EXPECT_EQ(db.address.text, "127.0.0.1:15432");
  EXPECT_EQ(db.protocol, Protocol::tcp);
  EXPECT_EQ(db.intercept, Intercept::none);
  ASSERT_EQ(db.routes.size(), 1u);
  EXPECT_EQ(db.routes[0].cluster, "postgres");
  EXPECT_EQ(db.routes[0].cluster_index, 4u);

  ASSERT_EQ(p.clusters.size(), 5u);
  const Cluster& local = p.clusters[0];
  EXPECT_EQ(local.name, "local-app");
  ASSERT_EQ(local.endpoints.size(), 1u);
  EXPECT_EQ(local.endpoints[0].text, "127.0.0.1:8080");
  EXPECT_FALSE(local.mtls.enabled);

  const Cluster& rec = p.clusters[1];
  EXPECT_EQ(rec.name, "recommendations");
  ASSERT_EQ(rec.endpoints.size(), 2u);
  EXPECT_EQ(rec.endpoints[0].text, "10.0.1.7:15006");
  EXPECT_EQ(rec.endpoints[1].text, "10.0.1.8:15006");
  ASSERT_EQ(rec.vips.size(), 1u);
  EXPECT_EQ(rec.vips[0].text, "10.96.0.20:80");
  EXPECT_TRUE(rec.mtls.enabled);
  EXPECT_EQ(rec.mtls.server_identity, "spiffe://shop.local/ns/shop/sa/recommendations");
  EXPECT_EQ(rec.lb, LbPolicy::least_request);
  EXPECT_EQ(rec.connect_timeout, Duration{250});
  EXPECT_EQ(rec.timeout, Duration{3'000});
  EXPECT_EQ(rec.idle_timeout, Duration{30'000});
  EXPECT_EQ(rec.retry.retries, 2u);
  EXPECT_EQ(rec.retry.on, kRetryConnectFailure | kRetryReset | kRetryGatewayError | kRetryRetriableStatusCodes);
  EXPECT_EQ(rec.retry.status_codes, std::vector<int>{503});
  EXPECT_EQ(rec.retry.per_try_timeout, Duration{1'000});
  EXPECT_EQ(rec.retry.backoff_base, Duration{25});
  EXPECT_EQ(rec.retry.backoff_max, Duration{250});
  EXPECT_DOUBLE_EQ(rec.retry.budget_ratio, 0.2);
  EXPECT_DOUBLE_EQ(rec.retry.budget_min_per_second, 10);
  EXPECT_EQ(rec.circuit_breaker.max_connections, 1024u);
  EXPECT_EQ(rec.circuit_breaker.max_pending_requests, 1024u);
  EXPECT_EQ(rec.circuit_breaker.max_requests, 1024u);
  EXPECT_EQ(rec.circuit_breaker.max_retries, 3u);
  EXPECT_EQ(rec.outlier_detection.consecutive_failures, 5u);
  EXPECT_EQ(rec.outlier_detection.base_ejection_time, Duration{30'000});
  EXPECT_EQ(rec.outlier_detection.max_ejection_time, Duration{300'000});
  EXPECT_EQ(rec.outlier_detection.max_ejection_percent, 50u);

  EXPECT_EQ(p.clusters[2].name, "users");
  EXPECT_EQ(p.clusters[2].endpoints[0].text, "10.0.1.9:15006");
  EXPECT_TRUE(p.clusters[2].mtls.enabled);
  EXPECT_EQ(p.clusters[2].mtls.server_identity, "spiffe://shop.local/ns/shop/sa/users");
  EXPECT_EQ(p.clusters[3].name, "users-canary");
  EXPECT_EQ(p.clusters[3].endpoints[0].text, "10.0.1.10:15006");
  EXPECT_EQ(p.clusters[4].name, "postgres");
  EXPECT_EQ(p.clusters[4].endpoints[0].text, "127.0.0.1:5432");
  EXPECT_EQ(p.find_cluster("postgres"), &p.clusters[4]);
}

TEST(ReferencePolicy, KeysLeftOutTakeTheirDefaults) {
  auto result = load(kReferencePolicy);
  const Policy& p = loaded(result);
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(p.log_level, LogLevel::info);
  EXPECT_EQ(p.drain_timeout, Duration{30'000});

  const Listener& inbound = p.listeners[0];  // sets none of the timeouts or limits
  EXPECT_EQ(inbound.header_timeout, Duration{10'000});
  EXPECT_EQ(inbound.body_timeout, Duration{30'000});
  EXPECT_EQ(inbound.idle_timeout, Duration{60'000});
  EXPECT_EQ(inbound.max_header_bytes, 65536u);
  EXPECT_EQ(inbound.max_body_bytes, 0u);
  EXPECT_EQ(p.listeners[2].protocol, Protocol::tcp);
  EXPECT_FALSE(p.listeners[2].mtls);

  const Cluster& postgres = p.clusters[4];  // sets nothing but its endpoints
  EXPECT_EQ(postgres.lb, LbPolicy::round_robin);
  EXPECT_FALSE(postgres.mtls.enabled);
  EXPECT_TRUE(postgres.vips.empty());
  EXPECT_EQ(postgres.connect_timeout, Duration{1'000});
  EXPECT_EQ(postgres.timeout, Duration{15'000});
  EXPECT_EQ(postgres.idle_timeout, Duration{30'000});
  EXPECT_EQ(postgres.retry.retries, 1u);
  EXPECT_EQ(postgres.retry.on, static_cast<uint32_t>(kRetryConnectFailure));
  EXPECT_TRUE(postgres.retry.status_codes.empty());
  EXPECT_EQ(postgres.retry.per_try_timeout, Duration{0});
  EXPECT_EQ(postgres.retry.backoff_base, Duration{25});
  EXPECT_EQ(postgres.retry.backoff_max, Duration{250});
  EXPECT_DOUBLE_EQ(postgres.retry.budget_ratio, 0.2);
  EXPECT_DOUBLE_EQ(postgres.retry.budget_min_per_second, 10);
  EXPECT_EQ(postgres.circuit_breaker.max_connections, 1024u);
  EXPECT_EQ(postgres.circuit_breaker.max_retries, 3u);
  EXPECT_EQ(postgres.outlier_detection.consecutive_failures, 5u);
  EXPECT_EQ(postgres.outlier_detection.max_ejection_percent, 50u);
}

TEST(MinimalPolicy, LoadsWithDefaults) {
  auto result = load(kMinimal);
  const Policy& p = loaded(result);
  ASSERT_TRUE(result.ok());
  EXPECT_TRUE(result.warnings.empty()) << describe(result);
  EXPECT_EQ(p.version, 1);
  EXPECT_EQ(p.service, "");
  EXPECT_EQ(p.admin_address.text, "127.0.0.1:9901");
  EXPECT_EQ(p.workers, 0u);
  EXPECT_EQ(p.log_level, LogLevel::info);
  EXPECT_EQ(p.drain_timeout, Duration{30'000});
  EXPECT_EQ(p.access_log.target, AccessLogTarget::stdout_stream);
  EXPECT_FALSE(p.identity.has_value());
  ASSERT_EQ(p.listeners.size(), 1u);
  EXPECT_EQ(p.listeners[0].address.port(), 0);  // port 0 is allowed where pilotfish binds
  EXPECT_EQ(p.listeners[0].intercept, Intercept::none);
  EXPECT_EQ(p.listeners[0].protocol, Protocol::http);
  // sha256 of the exact bytes, lower-case hex (as `sha256sum` prints it).
  EXPECT_EQ(p.sha256, "43f2161fca771a11ac7af4ecfcdd2bf52113cb9c16a461e9c85eb7f8a17c1e00");
}

TEST(MinimalPolicy, VersionMayBeLeftOut) {
  const Policy& p = loaded(load(replaced(kMinimal, "version: 1\n", "")));
  EXPECT_EQ(p.version, 1);
}

TEST(ExtensionKeys, LogLevelDrainTimeoutAndMaxBodyBytes) {
  auto result = load(with_top("log_level: warn\ndrain_timeout: 45s\n"));
  EXPECT_EQ(loaded(result).log_level, LogLevel::warn);
  EXPECT_EQ(loaded(result).drain_timeout, Duration{45'000});
  for (auto [word, level] : {std::pair{"debug", LogLevel::debug}, {"info", LogLevel::info}, {"error", LogLevel::error}})
    EXPECT_EQ(loaded(load(with_top(std::string("log_level: ") + word + "\n"))).log_level, level);
  EXPECT_EQ(loaded(load(with_top("drain_timeout: 0\n"))).drain_timeout, Duration{0});
  EXPECT_EQ(loaded(load(with_listener("    max_body_bytes: 1048576\n"))).listeners[0].max_body_bytes, 1048576u);
  EXPECT_EQ(loaded(load(with_listener("    max_body_bytes: 0\n"))).listeners[0].max_body_bytes, 0u);

  EXPECT_TRUE(OnlyError(load(with_top("log_level: verbose\n")), 2, 12,
                        "log_level: 'verbose' is not one of debug, info, warn or error"));
  EXPECT_TRUE(OnlyError(load(with_top("drain_timeout: 30\n")), 2, 16, "drain_timeout: '30' has no unit"));
  EXPECT_TRUE(OnlyError(load(with_listener("    max_body_bytes: -1\n")), 5, 21,
                        "listeners[0].max_body_bytes: -1 is out of range 0-18446744073709551615"));
}

TEST(ExtensionKeys, PolicyRolloutKeys) {
  Policy defaults = loaded(load(kMinimal));
  EXPECT_EQ(defaults.drain_delay, Duration{0});
  EXPECT_FALSE(defaults.history_path.has_value());  // next to the policy file
  EXPECT_TRUE(defaults.watch);
  EXPECT_TRUE(defaults.wait_for_clusters.empty());

  Policy p = loaded(load(with_top("drain_delay: 5s\npolicy_history: state/h.jsonl\npolicy_watch: false\n"
                                  "wait_for_clusters: [app]\n")));
  EXPECT_EQ(p.drain_delay, Duration{5'000});
  EXPECT_EQ(p.history_path, std::string(kBaseDir) + "/state/h.jsonl");
  EXPECT_FALSE(p.watch);
  EXPECT_EQ(p.wait_for_clusters, std::vector<std::string>{"app"});
  EXPECT_EQ(loaded(load(with_top("policy_history: off\n"))).history_path, std::string());
  EXPECT_EQ(loaded(load(with_top("policy_history: /var/h.jsonl\n"))).history_path, std::string("/var/h.jsonl"));

  EXPECT_TRUE(OnlyError(load(with_top("wait_for_clusters: [ap]\n")), 2, 21,
                        "wait_for_clusters[0]: no cluster is named 'ap' (did you mean 'app'?)"));
  EXPECT_TRUE(OnlyError(load(with_top("wait_for_clusters: [app, app]\n")), 2, 26, "wait_for_clusters[1]: 'app' is listed twice"));
  EXPECT_TRUE(OnlyError(load(with_top("drain_delay: 5\n")), 2, 14, "drain_delay: '5' has no unit"));
  EXPECT_TRUE(OnlyError(load(with_top("policy_watch: sometimes\n")), 2, 15, "policy_watch:"));
  EXPECT_TRUE(OnlyError(load(with_top("policy_history: dir/\n")), 2, 17, "policy_history: must be off or a file path"));
  EXPECT_TRUE(HasWarning(load(with_top("drain_delay: 40s\n")), "drain_delay: is longer than drain_timeout"));
  // kFile is /etc/pilotfish/policy.yaml: events appended to it would be policy changes.
  EXPECT_TRUE(OnlyError(load(with_top("policy_history: policy.yaml\n")), 2, 17,
                        "policy_history: 'policy.yaml' is the policy file itself"));
}

TEST(Workers, AutoOrAPositiveInteger) {
  EXPECT_EQ(loaded(load(with_top("workers: auto\n"))).workers, 0u);
  EXPECT_EQ(loaded(load(with_top("workers: 4\n"))).workers, 4u);
  EXPECT_EQ(loaded(load(with_top("workers: 1024\n"))).workers, 1024u);
  for (const char* bad : {"lots", "0", "-2", "1.5", "[2]", "''", "Auto"}) {
    EXPECT_TRUE(OnlyError(load(with_top(std::string("workers: ") + bad + "\n")), 2, 10,
                          "workers: expected a positive integer or 'auto'"))
        << bad;
  }
  EXPECT_TRUE(OnlyError(load(with_top("workers: 1025\n")), 2, 10, "workers: 1025 is more than the maximum of 1024"));
  EXPECT_TRUE(OnlyError(load(with_top("workers: 99999999999999999999999\n")), 2, 10,
                        "workers: expected a positive integer or 'auto'"));
  // A key with no value is null, reported at the key (yaml-cpp marks it at the next token).
  EXPECT_TRUE(
      OnlyError(load(with_top("workers:\n")), 2, 1, "workers: expected a positive integer or 'auto', got nothing"));
}

TEST(Version, MustBeOne) {
  EXPECT_TRUE(OnlyError(load(replaced(kMinimal, "version: 1", "version: 2")), 1, 10, "version: must be 1, got '2'"));
  EXPECT_TRUE(OnlyError(load(replaced(kMinimal, "version: 1", "version: 1.0")), 1, 10, "version: must be 1"));
  EXPECT_TRUE(OnlyError(load(replaced(kMinimal, "version: 1", "version: 123456789012345678901234567890")), 1, 10,
                        "version: must be 1"));
}

TEST(Service, IsAWord) {
  EXPECT_EQ(loaded(load(with_top("service: payments\n"))).service, "payments");
  EXPECT_TRUE(OnlyError(load(with_top("service: ''\n")), 2, 10, "service: must be a non-empty word"));
  EXPECT_TRUE(OnlyError(load(with_top("service: {a: 1}\n")), 2, 10, "service: expected a string, got a map"));
}

TEST(Admin, DefaultsToLoopbackAndAllowsPortZero) {
  EXPECT_EQ(loaded(load(with_top("admin: {address: 127.0.0.1:0}\n"))).admin_address.text, "127.0.0.1:0");
  EXPECT_EQ(loaded(load(with_top("admin: {}\n"))).admin_address.text, "127.0.0.1:9901");
  EXPECT_EQ(loaded(load(with_top("admin:\n  address: \"[::1]:9902\"\n"))).admin_address.text, "[::1]:9902");
  auto exposed = load(with_top("admin: {address: 0.0.0.0:9901}\n"));
  EXPECT_EQ(loaded(exposed).admin_address.text, "0.0.0.0:9901");
  EXPECT_TRUE(HasWarning(exposed, "admin.address: 0.0.0.0:9901 is not a loopback address"));

  EXPECT_TRUE(OnlyError(load(with_top("admin: {address: 127.0.0.1:99999}\n")), 2, 18,
                        "admin.address: port 99999 is out of range 1-65535"));
  EXPECT_TRUE(OnlyError(load(with_top("admin:\n")), 2, 1, "admin: expected a map, got nothing (null)"));
  EXPECT_TRUE(
      OnlyError(load(with_top("admin: 127.0.0.1:9901\n")), 2, 8, "admin: expected a map, got '127.0.0.1:9901'"));
  EXPECT_TRUE(OnlyError(load(with_top("admin: {adress: 127.0.0.1:1}\n")), 2, 9,
                        "admin.adress: unknown key (did you mean 'address'?)"));
}

TEST(AccessLog, StdoutOffOrAPathBesideThePolicy) {
  EXPECT_EQ(loaded(load(with_top("access_log: stdout\n"))).access_log.target, AccessLogTarget::stdout_stream);
  EXPECT_EQ(loaded(load(with_top("access_log: off\n"))).access_log.target, AccessLogTarget::off);
  const Policy& relative = loaded(load(with_top("access_log: logs/access.log\n")));
  EXPECT_EQ(relative.access_log.target, AccessLogTarget::file);
  EXPECT_EQ(relative.access_log.path, "/etc/pilotfish/logs/access.log");
  EXPECT_EQ(loaded(load(with_top("access_log: /var/log/pf.log\n"))).access_log.path, "/var/log/pf.log");
  // Without a base folder, relative paths stay relative to the working directory.
  auto here = load_policy_text(with_top("access_log: access.log\n"), "p.yaml", "");
  EXPECT_EQ(loaded(here).access_log.path, "access.log");

  auto typo = load(with_top("access_log: stdot\n"));
  EXPECT_EQ(loaded(typo).access_log.target, AccessLogTarget::file);
  EXPECT_TRUE(HasWarning(
      typo, "access_log: 'stdot' is taken as a file name; only stdout and off are special (did you mean 'stdout'?)"));
  EXPECT_TRUE(OnlyError(load(with_top("access_log: ''\n")), 2, 13, "access_log: must be stdout, off or a file path"));
  EXPECT_TRUE(OnlyError(load(with_top("access_log: logs/\n")), 2, 13, "access_log: 'logs/' names a folder"));
  EXPECT_TRUE(OnlyError(load(with_top("access_log: [stdout]\n")), 2, 13, "access_log: expected a string, got a list"));
}

TEST(Identity, OptionalAndResolvedAgainstThePolicyFolder) {
  const Policy& p = loaded(load(std::string(kMinimal) + kIdentityAtEnd));
  ASSERT_TRUE(p.identity.has_value());
  EXPECT_EQ(p.identity->cert, "/etc/pilotfish/certs/me.pem");
  EXPECT_EQ(p.identity->key, "/keys/me-key.pem");  // absolute stays
  EXPECT_EQ(p.identity->ca, "/etc/pilotfish/ca.pem");
  EXPECT_EQ(loaded(load(std::string(kMinimal) + "identity: {cert: ../c.pem, key: k, ca: ./ca}\n")).identity->cert,
            "/etc/c.pem");

  // Line 10 is the identity line: "identity: {cert: c, key: k}" puts the map at column 11.
  EXPECT_TRUE(OnlyError(load(std::string(kMinimal) + "identity: {cert: c, key: k}\n"), 10, 11, "identity.ca: missing"));
  EXPECT_TRUE(OnlyError(load(std::string(kMinimal) + "identity: {cert: c, key: k, ca: ''}\n"), 10, 33,
                        "identity.ca: must not be empty"));
  EXPECT_TRUE(OnlyError(load(std::string(kMinimal) + "identity: {cert: c, key: k, ca: a, crt: x}\n"), 10, 36,
                        "identity.crt: unknown key (did you mean 'cert'?)"));
}

// ---------------------------------------------------------------------------------------------
// Unknown keys, duplicate keys, wrong shapes

TEST(UnknownKeys, AreErrorsAtEveryLevelWithASuggestion) {
  EXPECT_TRUE(OnlyError(load(with_top("listners: []\n")), 2, 1, "listners: unknown key (did you mean 'listeners'?)"));
  EXPECT_TRUE(OnlyError(load(with_top("frobnicate: 1\n")), 2, 1, "frobnicate: unknown key"));
  EXPECT_EQ(load(with_top("frobnicate: 1\n")).errors.at(0).message, "frobnicate: unknown key");
  EXPECT_TRUE(OnlyError(load(with_listener("    header_timout: 5s\n")), 5, 5,
                        "listeners[0].header_timout: unknown key (did you mean 'header_timeout'?)"));
  EXPECT_TRUE(OnlyError(load(replaced(kMinimal, "      - cluster: app", "      - cluster: app\n        timout: 5s")),
                        7, 9, "listeners[0].routes[0].timout: unknown key (did you mean 'timeout'?)"));
  EXPECT_TRUE(OnlyError(
      load(replaced(kMinimal, "      - cluster: app", "      - cluster: app\n        match: {paht_prefix: /}")), 7, 17,
      "listeners[0].routes[0].match.paht_prefix: unknown key (did you mean 'path_prefix'?)"));
  EXPECT_TRUE(OnlyError(load(with_cluster("    endpoint: [127.0.0.1:1]\n")), 10, 5,
                        "clusters[0].endpoint: unknown key (did you mean 'endpoints'?)"));
  EXPECT_TRUE(OnlyError(load(with_cluster("    retry: {retires: 3}\n")), 10, 13,
                        "clusters[0].retry.retires: unknown key (did you mean 'retries'?)"));
  EXPECT_TRUE(OnlyError(load(with_cluster("    retry: {backoff: {bas: 1s}}\n")), 10, 23,
                        "clusters[0].retry.backoff.bas: unknown key (did you mean 'base'?)"));
  EXPECT_TRUE(OnlyError(load(with_cluster("    retry: {budget: {ration: 1}}\n")), 10, 22,
                        "clusters[0].retry.budget.ration: unknown key (did you mean 'ratio'?)"));
  EXPECT_TRUE(OnlyError(load(with_cluster("    circuit_breaker: {max_connection: 1}\n")), 10, 23,
                        "clusters[0].circuit_breaker.max_connection: unknown key (did you mean 'max_connections'?)"));
  EXPECT_TRUE(OnlyError(load(with_cluster("    outlier_detection: {interval: 1s}\n")), 10, 25,
                        "clusters[0].outlier_detection.interval: unknown key"));
  EXPECT_TRUE(HasError(load(with_cluster("    mtls: {server_identiy: spiffe://a/b}\n") + kIdentityAtEnd), 10, 11,
                       "clusters[0].mtls.server_identity: missing"));
  EXPECT_TRUE(HasError(load(with_cluster("    mtls: {server_identiy: spiffe://a/b}\n") + kIdentityAtEnd), 10, 12,
                       "clusters[0].mtls.server_identiy: unknown key (did you mean 'server_identity'?)"));
}

TEST(DuplicateKeys, AreErrors) {
  EXPECT_TRUE(OnlyError(load(with_listener("    address: 127.0.0.1:1\n")), 5, 5,
                        "listeners[0].address: given twice in the same map"));
  EXPECT_TRUE(OnlyError(load(with_top("workers: 1\nworkers: 2\n")), 3, 1, "workers: given twice in the same map"));
}

TEST(Shapes, SequencesNullsAndScalarsWhereOtherShapesBelong) {
  // The route's cluster is then unknown too: both are reported.
  auto clusters_map = load(
      replaced(kMinimal, "clusters:\n  - name: app\n    endpoints: [127.0.0.1:8080]\n", "clusters: {name: app}\n"));
  EXPECT_EQ(clusters_map.errors.size(), 2u) << describe(clusters_map);
  EXPECT_TRUE(HasError(clusters_map, 7, 11, "clusters: expected a list, got a map"));
  EXPECT_TRUE(HasError(clusters_map, 6, 18, "listeners[0].routes[0].cluster: no cluster is named 'app'"));
  EXPECT_TRUE(HasError(load(replaced(kMinimal, "  - name: web\n", "  - web\n  - name: web\n")), 3, 5,
                       "listeners[0]: expected a map, got 'web'"));
  EXPECT_TRUE(OnlyError(load(replaced(kMinimal, "    routes:\n      - cluster: app\n", "    routes:\n")), 5, 5,
                        "listeners[0].routes: expected a list, got nothing (null)"));
  EXPECT_TRUE(OnlyError(load(replaced(kMinimal, "      - cluster: app\n", "      - [app]\n")), 6, 9,
                        "listeners[0].routes[0]: expected a map, got a list"));
  EXPECT_TRUE(
      OnlyError(load(with_cluster("    retry: [1]\n")), 10, 12, "clusters[0].retry: expected a map, got a list"));
  EXPECT_TRUE(OnlyError(load(with_cluster("    retry: {on: 5xx}\n")), 10, 17,
                        "clusters[0].retry.on: expected a list, got '5xx'"));
  EXPECT_TRUE(OnlyError(load(with_top("? [a, b]\n: 1\n")), 2, 3, "keys must be plain words, got a list as a key"));
}

TEST(Document, EmptyOrNotAMap) {
  auto empty = load("");
  ASSERT_EQ(empty.errors.size(), 1u) << describe(empty);
  EXPECT_FALSE(empty.policy);
  EXPECT_EQ(empty.errors[0].to_string(),
            "policy.yaml: the policy is empty; expected a map with at least `listeners` and `clusters`");
  EXPECT_EQ(load("# nothing but a comment\n\n").errors.size(), 1u);
  EXPECT_TRUE(OnlyError(load("- version: 1\n"), 1, 1, "the policy must be a map of keys"));
  EXPECT_TRUE(OnlyError(load("just words\n"), 1, 1,
                        "the policy must be a map of keys (version, listeners, clusters, ...), got 'just words'"));
  EXPECT_EQ(load("version: 1\n").errors.size(), 2u);
  EXPECT_TRUE(HasError(load("version: 1\n"), 1, 1, "listeners: missing; a policy needs at least one listener"));
  EXPECT_TRUE(HasError(load("version: 1\n"), 1, 1, "clusters: missing; a policy needs at least one cluster"));
  EXPECT_TRUE(OnlyError(load(std::string(kMinimal) + "---\nversion: 1\n"), 11, 1,
                        "a policy file holds one YAML document; this is document 2"));
  EXPECT_TRUE(loaded(load(std::string(kMinimal) + "---\n")).listeners.size() == 1u);
  EXPECT_TRUE(loaded(load("--- # the policy\n" + std::string(kMinimal) + "...\n")).listeners.size() == 1u);
  EXPECT_EQ(load("%YAML 1.2\n---  # nothing\n...\n").errors.at(0).message.rfind("the policy is empty", 0), 0u);
}

TEST(Document, TextThatParsesAsNull) {
  const std::string message =
      "the policy must be a map of keys (version, listeners, clusters, ...), but the document parses as null";
  EXPECT_TRUE(OnlyError(load("null\n"), 1, 1, message));
  EXPECT_TRUE(OnlyError(load("# comment\n  ~\n"), 2, 3, message));
  // yaml-cpp 0.7's LoadAll never returns on these (jbeder/yaml-cpp#1040); the loader must.
  EXPECT_TRUE(OnlyError(load(",\n"), 1, 1, message));
  EXPECT_TRUE(OnlyError(load("--- , a\n"), 1, 5, message));
  EXPECT_TRUE(loaded(load(std::string(kMinimal) + "---\n,\n")).listeners.size() == 1u);
}

TEST(YamlSyntax, ErrorsCarryYamlCppsPosition) {
  // An unquoted IPv6 address starts a flow sequence that never closes properly.
  auto result = load(replaced(kMinimal, "127.0.0.1:0", "[::1]:15001"));
  ASSERT_EQ(result.errors.size(), 1u) << describe(result);
  EXPECT_EQ(result.errors[0].to_string(), "policy.yaml:4:19: invalid YAML: end of map not found");
  EXPECT_TRUE(OnlyError(load("version: 1\n  bad: indent\n"), 2, 6, "invalid YAML: illegal map value"));
  EXPECT_TRUE(OnlyError(load("version: 1\nservice: x\n\tworkers: 2\n"), 3, 1,
                        "invalid YAML: illegal tab when looking for indentation"));
}

TEST(YamlSyntax, AnUnclosedBracketIsReportedWhereItOpened) {
  // yaml-cpp notices at the end of the file (5:1 here); the mistake is at 4:14.
  EXPECT_TRUE(OnlyError(load("version: 1\nlisteners:\n  - name: a\n    address: [127.0.0.1:15001\n"), 4, 14,
                        "invalid YAML: the '[' opened here is never closed (end of sequence flow not found)"));
  EXPECT_TRUE(OnlyError(load("version: 1\nlisteners:\n  - {name: a, address: 127.0.0.1:1\nclusters: []\n"), 3, 5,
                        "invalid YAML: the '{' opened here is never closed (end of map flow not found)"));
  // Brackets in comments and quotes are not brackets; the inner of two open ones is named.
  EXPECT_TRUE(OnlyError(load("version: 1 # [\nservice: 'a[b'\nlisteners: [{name: a, routes: [x, \"]\"\n"), 3, 31,
                        "invalid YAML: the '[' opened here is never closed (end of sequence flow not found)"));
}

TEST(YamlSyntax, QuotesAndBracketsOnlyOpenWhereANodeBegins) {
  const std::string never_closed = "invalid YAML: the '[' opened here is never closed";
  // The apostrophe of a plain word is no quote, so it hides no bracket after it.
  EXPECT_TRUE(OnlyError(load("service: o'brien\nlisteners: [1\n"), 2, 12, never_closed));
  // Nor is a '[' inside a plain word of block context a bracket.
  EXPECT_TRUE(OnlyError(load("service: a[b\nlisteners: {c: 1\n"), 2, 12, "invalid YAML: the '{' opened here"));
  // The text of a block scalar is text, whatever it holds, up to the first line indented no
  // more than its key.
  EXPECT_TRUE(OnlyError(load("service: |\n  'quoted [\n\n  more\nlisteners: [1\n"), 5, 12, never_closed));
  EXPECT_TRUE(OnlyError(load("- key: >-\n    don't \"[\n  next: [1\n"), 3, 9, never_closed));
  // An anchor may stand before the bracket.
  EXPECT_TRUE(OnlyError(load("listeners: &l [1\n"), 1, 15, never_closed));
}

TEST(YamlSyntax, AnUnclosedQuoteIsReportedWhereItOpened) {
  // yaml-cpp 0.7 ends such a quote at the end of the file without a word, and the walk then
  // reported what the runaway string did to the rest: keys "missing", a port that "is not a
  // number". The one problem is the quote.
  const std::string text = replaced(kMinimal, "address: 127.0.0.1:0", "address: \"127.0.0.1:0");
  EXPECT_TRUE(OnlyError(load(text), 4, 14, "invalid YAML: the '\"' opened here is never closed"));
  EXPECT_TRUE(OnlyError(load(replaced(kMinimal, "- cluster: app", "- cluster: 'app")), 6, 18,
                        "invalid YAML: the \"'\" opened here is never closed"));
  // Last in the file too, after quotes that do close ('' and \" are quotes inside quotes).
  EXPECT_TRUE(OnlyError(load(std::string(kMinimal) + "service: 'it''s'\naccess_log: \"a\\\"b\nx: 1\n"), 11, 13,
                        "invalid YAML: the '\"' opened here is never closed"));
  // A quote inside an unclosed bracket is the innermost mistake: it swallowed the ']'.
  EXPECT_TRUE(OnlyError(load("listeners: [a, \"b]\n"), 1, 16, "invalid YAML: the '\"' opened here is never closed"));
}

TEST(YamlSyntax, QuotesThatYamlReadsAsTextAreNoError) {
  // Where the scan could take text for a quote, yaml-cpp has the last word: a policy that
  // parses is never refused for a quote yaml-cpp did not read as one.
  const Policy p = loaded(load(std::string(kMinimal) + "service: >-\n  'payments\n"));
  EXPECT_EQ(p.service, "'payments");
  EXPECT_EQ(loaded(load(std::string(kMinimal) + "service: it's\n")).service, "it's");
  EXPECT_EQ(loaded(load(std::string(kMinimal) + "service: \"#[it's]\" # '\n")).service, "#[it's]");
}

TEST(YamlSyntax, DeepNestingIsAnErrorNotACrash) {
  auto result = load("a: " + std::string(5000, '[') + std::string(5000, ']') + "\n");
  ASSERT_EQ(result.errors.size(), 1u) << describe(result);
  EXPECT_NE(result.errors[0].message.find("invalid YAML: nested more than"), std::string::npos) << describe(result);
}

// ---------------------------------------------------------------------------------------------
// Durations, addresses, numbers and enums in place

TEST(Durations, BadValuesPointAtTheValue) {
  EXPECT_TRUE(OnlyError(load(with_listener("    header_timeout: 10\n")), 5, 21,
                        "listeners[0].header_timeout: '10' has no unit (write 10s or 10ms)"));
  EXPECT_TRUE(OnlyError(load(with_listener("    header_timeout: 0\n")), 5, 21,
                        "listeners[0].header_timeout: must be more than 0"));
  EXPECT_TRUE(OnlyError(load(with_listener("    idle_timeout: 1.5s\n")), 5, 19,
                        "listeners[0].idle_timeout: '1.5s' is not a duration"));
  EXPECT_TRUE(OnlyError(load(with_cluster("    connect_timeout: -250ms\n")), 10, 22,
                        "clusters[0].connect_timeout: '-250ms' is negative"));
  EXPECT_TRUE(OnlyError(load(with_cluster("    timeout: 99999999999999999999h\n")), 10, 14,
                        "clusters[0].timeout: '99999999999999999999h' is too large"));
  EXPECT_TRUE(OnlyError(load(with_cluster("    retry: {backoff: {base: 25}}\n")), 10, 29,
                        "clusters[0].retry.backoff.base: '25' has no unit"));
  EXPECT_TRUE(OnlyError(load(with_cluster("    timeout: [5s]\n")), 10, 14,
                        "clusters[0].timeout: expected a duration such as 250ms or 5s, got a list"));
  // 0 means "none" where the reference says so.
  EXPECT_EQ(loaded(load(with_listener("    body_timeout: 0\n"))).listeners[0].body_timeout, Duration{0});
  EXPECT_EQ(loaded(load(with_cluster("    retry: {per_try_timeout: 0}\n"))).clusters[0].retry.per_try_timeout,
            Duration{0});
}

TEST(Addresses, BadValuesPointAtTheValue) {
  EXPECT_TRUE(OnlyError(load(replaced(kMinimal, "127.0.0.1:0", "127.0.0.1:70000")), 4, 14,
                        "listeners[0].address: port 70000 is out of range 1-65535"));
  EXPECT_TRUE(OnlyError(load(replaced(kMinimal, "127.0.0.1:0", "web:80")), 4, 14,
                        "listeners[0].address: 'web:80' is not a numeric IPv4 or [IPv6] address"));
  EXPECT_TRUE(OnlyError(load(replaced(kMinimal, "127.0.0.1:0", "[::1]")), 4, 14,
                        "listeners[0].address: expected HOST:PORT, got a list (quote an IPv6 address"));
  EXPECT_TRUE(OnlyError(load(replaced(kMinimal, "[127.0.0.1:8080]", "[127.0.0.1]")), 9, 17,
                        "clusters[0].endpoints[0]: '127.0.0.1': missing :PORT"));
  EXPECT_TRUE(OnlyError(load(replaced(kMinimal, "[127.0.0.1:8080]", "[127.0.0.1:0]")), 9, 17,
                        "clusters[0].endpoints[0]: port 0 is out of range 1-65535"));
  EXPECT_TRUE(OnlyError(load(with_cluster("    vips: [10.96.0.1:0]\n")), 10, 12,
                        "clusters[0].vips[0]: port 0 is out of range 1-65535"));
  const Policy& v6 = loaded(load(replaced(replaced(kMinimal, "127.0.0.1:0", "\"[::1]:15001\""), "[127.0.0.1:8080]",
                                          "[\"[::1]:8080\", localhost:8081]")));
  EXPECT_EQ(v6.listeners[0].address.text, "[::1]:15001");
  EXPECT_EQ(v6.clusters[0].endpoints[0].text, "[::1]:8080");
  EXPECT_EQ(v6.clusters[0].endpoints[1].text, "127.0.0.1:8081");
}

TEST(Numbers, RangesAndHugeValues) {
  EXPECT_TRUE(OnlyError(load(with_listener("    max_header_bytes: 4294967296\n")), 5, 23,
                        "listeners[0].max_header_bytes: 4294967296 is out of range 1-4294967295"));
  EXPECT_TRUE(OnlyError(load(with_listener("    max_header_bytes: 0\n")), 5, 23,
                        "listeners[0].max_header_bytes: 0 is out of range 1-4294967295"));
  EXPECT_TRUE(OnlyError(load(with_listener("    max_body_bytes: 99999999999999999999999999\n")), 5, 21,
                        "listeners[0].max_body_bytes: 999999999999999999999999... is out of range"));
  EXPECT_TRUE(OnlyError(load(with_listener("    max_header_bytes: 0x100\n")), 5, 23,
                        "listeners[0].max_header_bytes: expected an integer, got '0x100'"));
  EXPECT_TRUE(OnlyError(load(with_listener("    max_header_bytes: 1e3\n")), 5, 23,
                        "listeners[0].max_header_bytes: expected an integer, got '1e3'"));
  EXPECT_EQ(loaded(load(with_listener("    max_header_bytes: 1024\n"))).listeners[0].max_header_bytes, 1024u);
}

TEST(Numbers, StatusCodesRatioAndEjectionPercent) {
  EXPECT_TRUE(
      OnlyError(load(with_cluster("    retry:\n      on: [retriable-status-codes]\n      status_codes: [503, 600]\n")),
                12, 27, "clusters[0].retry.status_codes[1]: 600 is out of range 100-599"));
  EXPECT_TRUE(
      OnlyError(load(with_cluster("    retry:\n      on: [retriable-status-codes]\n      status_codes: [99]\n")), 12,
                22, "clusters[0].retry.status_codes[0]: 99 is out of range 100-599"));
  EXPECT_TRUE(OnlyError(load(with_cluster("    retry:\n      budget: {ratio: 1.5}\n")), 11, 23,
                        "clusters[0].retry.budget.ratio: 1.5 is out of range 0-1"));
  EXPECT_TRUE(OnlyError(load(with_cluster("    retry:\n      budget: {ratio: -0.1}\n")), 11, 23,
                        "clusters[0].retry.budget.ratio: -0.1 is out of range 0-1"));
  EXPECT_TRUE(OnlyError(load(with_cluster("    retry:\n      budget: {ratio: .nan}\n")), 11, 23,
                        "clusters[0].retry.budget.ratio: expected a number, got '.nan'"));
  EXPECT_TRUE(OnlyError(load(with_cluster("    retry:\n      budget: {min_per_second: lots}\n")), 11, 32,
                        "clusters[0].retry.budget.min_per_second: expected a number, got 'lots'"));
  EXPECT_TRUE(OnlyError(load(with_cluster("    outlier_detection:\n      max_ejection_percent: 101\n")), 11, 29,
                        "clusters[0].outlier_detection.max_ejection_percent: 101 is out of range 0-100"));
  EXPECT_TRUE(OnlyError(load(with_cluster("    outlier_detection:\n      consecutive_failures: 0\n")), 11, 29,
                        "clusters[0].outlier_detection.consecutive_failures: 0 is out of range 1-4294967295"));
  EXPECT_TRUE(OnlyError(load(with_cluster("    circuit_breaker: {max_connections: 0}\n")), 10, 40,
                        "clusters[0].circuit_breaker.max_connections: 0 is out of range 1-4294967295"));

  const Policy p = loaded(load(with_cluster(
      "    retry: {retries: 0, on: [5xx], budget: {ratio: 1, min_per_second: 0.5}}\n"
      "    circuit_breaker: {max_connections: 1, max_pending_requests: 0, max_requests: 7, max_retries: 0}\n"
      "    outlier_detection: {consecutive_failures: 2, base_ejection_time: 1s, max_ejection_time: 1s, "
      "max_ejection_percent: 0}\n")));
  const Cluster& c = p.clusters.at(0);
  EXPECT_EQ(c.retry.retries, 0u);
  EXPECT_EQ(c.retry.on, static_cast<uint32_t>(kRetry5xx));
  EXPECT_DOUBLE_EQ(c.retry.budget_ratio, 1.0);
  EXPECT_DOUBLE_EQ(c.retry.budget_min_per_second, 0.5);
  EXPECT_EQ(c.circuit_breaker.max_connections, 1u);
  EXPECT_EQ(c.circuit_breaker.max_pending_requests, 0u);
  EXPECT_EQ(c.circuit_breaker.max_requests, 7u);
  EXPECT_EQ(c.circuit_breaker.max_retries, 0u);
  EXPECT_EQ(c.outlier_detection.consecutive_failures, 2u);
  EXPECT_EQ(c.outlier_detection.base_ejection_time, Duration{1'000});
  EXPECT_EQ(c.outlier_detection.max_ejection_percent, 0u);
}

TEST(Enums, EveryChoiceAndTheErrors) {
  EXPECT_TRUE(OnlyError(load(with_listener("    protocol: udp\n")), 5, 15,
                        "listeners[0].protocol: 'udp' is not one of http or tcp"));
  EXPECT_TRUE(OnlyError(load(with_listener("    intercept: sideways\n")), 5, 16,
                        "listeners[0].intercept: 'sideways' is not one of none, inbound or outbound"));
  EXPECT_TRUE(
      OnlyError(load(with_listener("    intercept: inbond\n")), 5, 16,
                "listeners[0].intercept: 'inbond' is not one of none, inbound or outbound (did you mean 'inbound'?)"));
  EXPECT_TRUE(OnlyError(load(with_cluster("    lb: fastest\n")), 10, 9,
                        "clusters[0].lb: 'fastest' is not one of round_robin, least_request or random"));
  EXPECT_TRUE(OnlyError(load(with_cluster("    retry: {on: [5xx, timeout]}\n")), 10, 23,
                        "clusters[0].retry.on[1]: 'timeout' is not one of connect-failure, reset, 5xx, gateway-error, "
                        "retriable-status-codes, cancelled, deadline-exceeded, resource-exhausted, internal or "
                        "unavailable"));
  EXPECT_TRUE(OnlyError(load(with_cluster("    protocol: http3\n")), 10, 15,
                        "clusters[0].protocol: 'http3' is not one of http1, http2 or auto"));
  EXPECT_TRUE(OnlyError(load(with_cluster("    protocol: auto\n")), 10, 15,
                        "clusters[0].protocol: auto needs mtls on this cluster (the endpoint picks h2 or http/1.1 in "
                        "ALPN); write http2 for h2c with prior knowledge"));
  EXPECT_TRUE(
      OnlyError(load(with_cluster("    retry: {on: []}\n")), 10, 17, "clusters[0].retry.on: must not be empty"));

  EXPECT_EQ(loaded(load(with_listener("    intercept: none\n"))).listeners[0].intercept, Intercept::none);
  EXPECT_EQ(loaded(load(with_listener("    intercept: outbound\n"))).listeners[0].intercept, Intercept::outbound);
  EXPECT_EQ(loaded(load(with_listener("    protocol: http\n"))).listeners[0].protocol, Protocol::http);
  EXPECT_EQ(loaded(load(with_cluster("    lb: random\n"))).clusters[0].lb, LbPolicy::random);
  EXPECT_EQ(loaded(load(with_cluster("    lb: round_robin\n"))).clusters[0].lb, LbPolicy::round_robin);
  EXPECT_EQ(loaded(load(with_cluster("    retry: {on: [connect-failure, reset, 5xx, gateway-error, "
                                     "retriable-status-codes], status_codes: [503]}\n")))
                .clusters[0]
                .retry.on,
            static_cast<uint32_t>(kRetryConnectFailure | kRetryReset | kRetry5xx | kRetryGatewayError |
                                  kRetryRetriableStatusCodes));
}

// ---------------------------------------------------------------------------------------------
// Names, duplicates and references across sections

constexpr const char* kTwoListeners =
    "listeners:\n"                          // 1
    "  - name: a\n"                         // 2
    "    address: 127.0.0.1:15000\n"        // 3
    "    routes: [{cluster: app}]\n"        // 4
    "  - name: NAME_B\n"                    // 5
    "    address: ADDRESS_B\n"              // 6
    "    routes: [{cluster: CLUSTER_B}]\n"  // 7
    "clusters:\n"                           // 8
    "  - name: app\n"                       // 9
    "    endpoints: [127.0.0.1:8080]\n";    // 10

std::string two_listeners(const std::string& name_b, const std::string& address_b,
                          const std::string& cluster_b = "app") {
  return replaced(replaced(replaced(kTwoListeners, "NAME_B", name_b), "ADDRESS_B", address_b), "CLUSTER_B", cluster_b);
}

TEST(Listeners, DuplicateNames) {
  EXPECT_TRUE(OnlyError(load(two_listeners("a", "127.0.0.1:15001")), 5, 11,
                        "listeners[1].name: 'a' is already the name of listeners[0]"));
  EXPECT_TRUE(OnlyError(load(two_listeners("'bad name'", "127.0.0.1:15001")), 5, 11,
                        "listeners[1].name: 'bad name' is not a valid name"));
  EXPECT_TRUE(OnlyError(load(two_listeners("''", "127.0.0.1:15001")), 5, 11, "listeners[1].name: must not be empty"));
  EXPECT_TRUE(OnlyError(load(replaced(kMinimal, "  - name: web\n    address", "  - address")), 3, 5,
                        "listeners[0].name: missing"));
}

TEST(Listeners, DuplicateAndClashingAddresses) {
  EXPECT_TRUE(OnlyError(load(two_listeners("b", "127.0.0.1:15000")), 6, 14,
                        "listeners[1].address: 127.0.0.1:15000 is already used by listeners[0].address"));
  EXPECT_TRUE(OnlyError(load(two_listeners("b", "localhost:15000")), 6, 14,
                        "listeners[1].address: 127.0.0.1:15000 is already used by listeners[0].address"));
  EXPECT_TRUE(OnlyError(load(two_listeners("b", "0.0.0.0:15000")), 6, 14,
                        "listeners[1].address: 0.0.0.0:15000 clashes with listeners[0].address (127.0.0.1:15000)"));
  EXPECT_TRUE(OnlyError(load("admin: {address: 127.0.0.1:15000}\n" + two_listeners("b", "127.0.0.1:15001")), 4, 14,
                        "listeners[0].address: 127.0.0.1:15000 is already used by admin.address"));
  EXPECT_TRUE(OnlyError(load(two_listeners("b", "127.0.0.1:9901")), 6, 14,
                        "listeners[1].address: 127.0.0.1:9901 is already used by admin.address"));
  // "[::]" takes IPv4 as well, so it clashes with an IPv4 address of its port.
  EXPECT_TRUE(OnlyError(load(two_listeners("b", "\"[::]:15000\"")), 6, 14,
                        "listeners[1].address: [::]:15000 clashes with listeners[0].address (127.0.0.1:15000)"));
  // Different addresses, another family, or port 0 (the kernel picks) never clash.
  loaded(load(two_listeners("b", "127.0.0.2:15000")));
  loaded(load(two_listeners("b", "\"[::1]:15000\"")));
  loaded(load(replaced(two_listeners("b", "127.0.0.1:0"), "127.0.0.1:15000", "127.0.0.1:0")));
}

TEST(Listeners, AtMostOneInterceptorPerDirection) {
  std::string text =
      replaced(two_listeners("b", "127.0.0.1:15001"), "    routes: [{cluster: app}]\n  - name: b\n",
               "    intercept: inbound\n    routes: [{cluster: app}]\n  - name: b\n    intercept: inbound\n");
  EXPECT_TRUE(
      OnlyError(load(text), 7, 16,
                "listeners[1].intercept: only one listener may intercept inbound traffic; listeners[0] already does"));
  std::string both = replaced(text, "    intercept: inbound\n    address: 127.0.0.1:15001",
                              "    intercept: outbound\n    address: 127.0.0.1:15001");
  loaded(load(both));
  std::string none =
      replaced(replaced(text, "intercept: inbound", "intercept: none"), "intercept: inbound", "intercept: none");
  loaded(load(none));
}

TEST(Routes, UndefinedClusterWithSuggestion) {
  EXPECT_TRUE(OnlyError(load(two_listeners("b", "127.0.0.1:15001", "ap")), 7, 24,
                        "listeners[1].routes[0].cluster: no cluster is named 'ap' (did you mean 'app'?)"));
  EXPECT_TRUE(OnlyError(load(two_listeners("b", "127.0.0.1:15001", "zebra")), 7, 24,
                        "listeners[1].routes[0].cluster: no cluster is named 'zebra'"));
  EXPECT_EQ(load(two_listeners("b", "127.0.0.1:15001", "zebra")).errors[0].message,
            "listeners[1].routes[0].cluster: no cluster is named 'zebra'");
  EXPECT_TRUE(OnlyError(load(replaced(kMinimal, "      - cluster: app\n", "      - match: {path_prefix: /}\n")), 6, 9,
                        "listeners[0].routes[0].cluster: missing"));
}

TEST(Routes, EmptyOrMissing) {
  EXPECT_TRUE(OnlyError(load(replaced(kMinimal, "    routes:\n      - cluster: app\n", "    routes: []\n")), 5, 13,
                        "listeners[0].routes: must list at least one route"));
  auto missing = load(replaced(kMinimal, "    routes:\n      - cluster: app\n", ""));
  EXPECT_TRUE(OnlyError(missing, 3, 5, "listeners[0].routes: missing; every listener needs at least one route"));
  EXPECT_TRUE(HasWarning(missing, "clusters[0]: cluster 'app' is not used by any route"));
  EXPECT_TRUE(OnlyError(
      load(replaced(kMinimal,
                    "listeners:\n  - name: web\n    address: 127.0.0.1:0\n    routes:\n      - cluster: app\n",
                    "listeners: []\n")),
      2, 12, "listeners: must list at least one listener"));
}

TEST(Routes, MatchIsNormalised) {
  const Policy& p = loaded(load(replaced(kMinimal, "      - cluster: app\n",
                                         "      - match:\n"
                                         "          host: Example.COM\n"
                                         "          method: get\n"
                                         "          path_prefix: /Users/\n"
                                         "          headers: {X-Canary: \"1\", x-empty: '', X-Num: 42}\n"
                                         "        cluster: app\n")));
  const RouteMatch& m = p.listeners.at(0).routes.at(0).match;
  EXPECT_EQ(m.host, "example.com");
  EXPECT_EQ(m.method, "GET");
  EXPECT_EQ(m.path_prefix, "/Users/");  // paths are case-sensitive
  ASSERT_EQ(m.headers.size(), 3u);
  EXPECT_EQ(m.headers[0].name, "x-canary");
  EXPECT_EQ(m.headers[0].value, "1");
  EXPECT_EQ(m.headers[1].name, "x-empty");
  EXPECT_EQ(m.headers[1].value, "");
  EXPECT_EQ(m.headers[2].name, "x-num");
  EXPECT_EQ(m.headers[2].value, "42");
}

TEST(Routes, MatchErrors) {
  auto route = [](const std::string& match) {
    return load(replaced(kMinimal, "      - cluster: app\n", "      - cluster: app\n        match: " + match + "\n"));
  };
  // "        match: {" puts '{' at column 16 of line 7.
  EXPECT_TRUE(OnlyError(route("{path_prefix: users}"), 7, 30,
                        "listeners[0].routes[0].match.path_prefix: 'users' must start with '/'"));
  EXPECT_TRUE(
      OnlyError(route("{host: 'a.b:80'}"), 7, 23, "listeners[0].routes[0].match.host: 'a.b:80' must not have a port"));
  EXPECT_TRUE(OnlyError(route("{host: '[::1]:80'}"), 7, 23,
                        "listeners[0].routes[0].match.host: '[::1]:80' must not have a port"));
  EXPECT_EQ(loaded(route("{host: '[::1]'}")).listeners[0].routes[0].match.host, "[::1]");
  EXPECT_TRUE(OnlyError(route("{host: 'a b'}"), 7, 23, "listeners[0].routes[0].match.host: 'a b' is not a host name"));
  EXPECT_TRUE(
      OnlyError(route("{method: 'G T'}"), 7, 25, "listeners[0].routes[0].match.method: 'G T' is not an HTTP method"));
  EXPECT_TRUE(OnlyError(route("{headers: {'x y': 1}}"), 7, 27,
                        "listeners[0].routes[0].match.headers.x y: 'x y' is not a valid header name"));
  EXPECT_TRUE(OnlyError(route("{headers: {X-A: 1, x-a: 2}}"), 7, 35,
                        "listeners[0].routes[0].match.headers.x-a: header 'x-a' is matched twice"));
  EXPECT_TRUE(
      OnlyError(route("{headers: {x-a: [1]}}"), 7, 32,
                "listeners[0].routes[0].match.headers.x-a: expected the header's value as a string, got a list"));
  EXPECT_TRUE(OnlyError(route("{headers: [x-a]}"), 7, 26,
                        "listeners[0].routes[0].match.headers: expected a map of header name to value, got a list"));
  EXPECT_TRUE(OnlyError(route("[]"), 7, 16, "listeners[0].routes[0].match: expected a map, got a list"));
}

TEST(Routes, FirstMatchWinsSoRoutesAfterACatchAllWarn) {
  auto result = load(replaced(kMinimal, "      - cluster: app\n",
                              "      - cluster: app\n      - match: {path_prefix: /x}\n        cluster: app\n"));
  loaded(result);
  EXPECT_TRUE(HasWarning(result, "listeners[0].routes[1]: never used: listeners[0].routes[0] has no match"));
}

constexpr const char* kTcpListener =
    "listeners:\n"                        // 1
    "  - name: db\n"                      // 2
    "    address: 127.0.0.1:15432\n"      // 3
    "    protocol: tcp\n"                 // 4
    "    routes:\n"                       // 5
    "      - cluster: postgres\n"         // 6
    "clusters:\n"                         // 7
    "  - name: postgres\n"                // 8
    "    endpoints: [127.0.0.1:5432]\n";  // 9

TEST(TcpListener, TakesExactlyOneRouteWithoutMatch) {
  EXPECT_EQ(loaded(load(kTcpListener)).listeners[0].protocol, Protocol::tcp);
  EXPECT_TRUE(OnlyError(load(replaced(kTcpListener, "      - cluster: postgres\n",
                                      "      - cluster: postgres\n        match: {path_prefix: /}\n")),
                        7, 16, "listeners[0].routes[0].match: a tcp listener's route cannot have a match"));
  EXPECT_TRUE(OnlyError(load(replaced(kTcpListener, "      - cluster: postgres\n",
                                      "      - cluster: postgres\n      - cluster: postgres\n")),
                        7, 9, "listeners[0].routes[1]: a tcp listener takes exactly one route"));
  auto http_keys = load(replaced(kTcpListener, "    protocol: tcp\n", "    protocol: tcp\n    header_timeout: 1s\n"));
  loaded(http_keys);
  EXPECT_TRUE(HasWarning(http_keys, "listeners[0].header_timeout: has no effect on a tcp listener"));
}

TEST(Clusters, DuplicateNamesEmptyEndpointsAndMissingKeys) {
  EXPECT_TRUE(OnlyError(load(with_cluster("  - name: app\n    endpoints: [127.0.0.1:8081]\n")), 10, 11,
                        "clusters[1].name: 'app' is already the name of clusters[0]"));
  EXPECT_TRUE(
      OnlyError(load(replaced(kMinimal, "[127.0.0.1:8080]", "[]")), 9, 16, "clusters[0].endpoints: must not be empty"));
  EXPECT_TRUE(OnlyError(load(replaced(kMinimal, "    endpoints: [127.0.0.1:8080]\n", "")), 8, 5,
                        "clusters[0].endpoints: missing; every cluster needs at least one endpoint"));
  auto no_clusters =
      load(replaced(kMinimal, "clusters:\n  - name: app\n    endpoints: [127.0.0.1:8080]\n", "clusters: []\n"));
  EXPECT_EQ(no_clusters.errors.size(), 2u) << describe(no_clusters);  // and the route's cluster is unknown
  EXPECT_TRUE(HasError(no_clusters, 7, 11, "clusters: must list at least one cluster"));
  auto twice = load(replaced(kMinimal, "[127.0.0.1:8080]", "[127.0.0.1:8080, 127.0.0.1:8080]"));
  EXPECT_EQ(loaded(twice).clusters[0].endpoints.size(), 2u);
  EXPECT_TRUE(HasWarning(twice, "clusters[0].endpoints[1]: 127.0.0.1:8080 is listed twice"));
}

TEST(Clusters, UnusedClusterWarns) {
  auto result = load(with_cluster("  - name: spare\n    endpoints: [127.0.0.1:9000]\n"));
  loaded(result);
  EXPECT_TRUE(HasWarning(result, "clusters[1]: cluster 'spare' is not used by any route"));
}

TEST(Clusters, VipsAreUniqueAcrossClusters) {
  auto result = load(with_cluster(
      "    vips: [10.96.0.1:80]\n  - name: other\n    endpoints: [127.0.0.1:9000]\n    vips: [10.96.0.1:80]\n"));
  EXPECT_TRUE(OnlyError(result, 13, 12, "clusters[1].vips[0]: 10.96.0.1:80 is already a vip of clusters[0]"));
  auto unused = load(with_cluster("    vips: [10.96.0.1:80]\n"));
  EXPECT_EQ(loaded(unused).clusters[0].vips.at(0).text, "10.96.0.1:80");
  EXPECT_TRUE(HasWarning(unused, "clusters[0].vips: no listener has intercept: outbound"));
}

// ---------------------------------------------------------------------------------------------
// mTLS

TEST(Mtls, ListenerNeedsIdentity) {
  EXPECT_TRUE(OnlyError(load(with_listener("    mtls: true\n")), 5, 11,
                        "listeners[0].mtls: mtls needs the top-level identity block"));
  EXPECT_TRUE(loaded(load(with_listener("    mtls: true\n") + kIdentityAtEnd)).listeners[0].mtls);
  EXPECT_FALSE(loaded(load(with_listener("    mtls: false\n"))).listeners[0].mtls);
  EXPECT_TRUE(
      OnlyError(load(with_listener("    mtls: yes\n")), 5, 11, "listeners[0].mtls: expected true or false, got 'yes'"));
}

TEST(Mtls, ClusterNeedsIdentityAndAServerIdentityMap) {
  EXPECT_TRUE(OnlyError(load(with_cluster("    mtls: {server_identity: spiffe://shop.local/sa/x}\n")), 10, 11,
                        "clusters[0].mtls: mtls needs the top-level identity block"));
  const Policy p =
      loaded(load(with_cluster("    mtls: {server_identity: spiffe://shop.local/sa/x}\n") + kIdentityAtEnd));
  const Cluster& c = p.clusters.at(0);
  EXPECT_TRUE(c.mtls.enabled);
  EXPECT_EQ(c.mtls.server_identity, "spiffe://shop.local/sa/x");
  EXPECT_FALSE(loaded(load(with_cluster("    mtls: false\n"))).clusters[0].mtls.enabled);
  EXPECT_TRUE(OnlyError(load(with_cluster("    mtls: true\n") + kIdentityAtEnd), 10, 11,
                        "clusters[0].mtls: expected false or a map {server_identity: spiffe://...}, got 'true'"));
  EXPECT_TRUE(OnlyError(load(with_cluster("    mtls: {server_identity: https://x}\n") + kIdentityAtEnd), 10, 29,
                        "clusters[0].mtls.server_identity: 'https://x' must start with spiffe://"));
  EXPECT_TRUE(OnlyError(load(with_cluster("    mtls: {server_identity: spiffe://x/*}\n") + kIdentityAtEnd), 10, 29,
                        "clusters[0].mtls.server_identity: 'spiffe://x/*': '*' is not allowed here"));
}

TEST(Mtls, ClusterSniDefaultsToNothingAndMustBeADnsName) {
  const Policy p = loaded(
      load(with_cluster("    mtls: {server_identity: spiffe://shop.local/sa/x, sni: users.shop.local}\n") +
           kIdentityAtEnd));
  EXPECT_EQ(p.clusters.at(0).mtls.sni, "users.shop.local");
  EXPECT_EQ(loaded(load(with_cluster("    mtls: {server_identity: spiffe://shop.local/sa/x}\n") + kIdentityAtEnd))
                .clusters.at(0)
                .mtls.sni,
            "");
  EXPECT_TRUE(OnlyError(
      load(with_cluster("    mtls: {server_identity: spiffe://shop.local/sa/x, sni: 'a b'}\n") + kIdentityAtEnd), 10,
      60, "clusters[0].mtls.sni: 'a b' is not a DNS name"));
}

TEST(Mtls, AllowListEntries) {
  const Policy& p = loaded(
      load(with_listener("    mtls: true\n    allow: [spiffe://a/b, spiffe://a/c-*, spiffe://*]\n") + kIdentityAtEnd));
  EXPECT_EQ(p.listeners[0].allow, (std::vector<std::string>{"spiffe://a/b", "spiffe://a/c-*", "spiffe://*"}));

  auto bad = load(with_listener("    mtls: true\n    allow: [spiffe://a/b, http://x, spiffe://a/*/b, spiffe://]\n") +
                  kIdentityAtEnd);
  EXPECT_EQ(bad.errors.size(), 3u) << describe(bad);
  EXPECT_TRUE(HasError(bad, 6, 27, "listeners[0].allow[1]: 'http://x' must start with spiffe://"));
  EXPECT_TRUE(
      HasError(bad, 6, 37, "listeners[0].allow[2]: 'spiffe://a/*/b': '*' is allowed only as the last character"));
  EXPECT_TRUE(HasError(bad, 6, 53, "listeners[0].allow[3]: 'spiffe://' names no trust domain"));

  EXPECT_TRUE(OnlyError(load(with_listener("    allow: [spiffe://a/b]\n")), 5, 12,
                        "listeners[0].allow: needs mtls: true on this listener"));
  EXPECT_TRUE(OnlyError(load(with_listener("    mtls: true\n    allow: []\n") + kIdentityAtEnd), 6, 12,
                        "listeners[0].allow: must not be empty"));
}

// ---------------------------------------------------------------------------------------------
// Retry details

TEST(Retry, StatusCodesGoWithRetriableStatusCodes) {
  EXPECT_TRUE(
      OnlyError(load(with_cluster("    retry:\n      on: [retriable-status-codes]\n")), 11, 11,
                "clusters[0].retry.status_codes: missing; retriable-status-codes in retry.on needs the list of codes"));
  EXPECT_TRUE(OnlyError(load(with_cluster("    retry:\n      on: [retriable-status-codes]\n      status_codes: []\n")),
                        12, 21, "clusters[0].retry.status_codes: must not be empty"));
  auto unused = load(with_cluster("    retry:\n      status_codes: [503]\n"));
  EXPECT_EQ(loaded(unused).clusters[0].retry.status_codes, std::vector<int>{503});
  EXPECT_TRUE(HasWarning(unused, "clusters[0].retry.status_codes: has no effect"));
}

TEST(Retry, BackoffAndEjectionMaximaAreNotBelowTheirBase) {
  EXPECT_TRUE(OnlyError(load(with_cluster("    retry: {backoff: {base: 1s, max: 500ms}}\n")), 10, 38,
                        "clusters[0].retry.backoff.max: 500ms is less than base 1s"));
  EXPECT_TRUE(OnlyError(load(with_cluster("    retry: {backoff: {base: 1s}}\n")), 10, 22,
                        "clusters[0].retry.backoff.max: 250ms (the default) is less than base 1s"));
  EXPECT_TRUE(OnlyError(load(with_cluster("    outlier_detection: {base_ejection_time: 10m, max_ejection_time: 1m}\n")),
                        10, 69,
                        "clusters[0].outlier_detection.max_ejection_time: 1m is less than base_ejection_time 10m"));
  const Policy p = loaded(load(with_cluster("    retry: {backoff: {base: 0, max: 0}}\n")));
  const Cluster& c = p.clusters.at(0);
  EXPECT_EQ(c.retry.backoff_base, Duration{0});
  EXPECT_EQ(c.retry.backoff_max, Duration{0});
}

TEST(Retry, PerTryTimeoutLongerThanTheClusterTimeoutWarns) {
  auto result = load(with_cluster("    timeout: 1s\n    retry: {per_try_timeout: 2s}\n"));
  loaded(result);
  EXPECT_TRUE(HasWarning(result, "clusters[0].retry.per_try_timeout: 2s is longer than the cluster timeout 1s"));
}

// ---------------------------------------------------------------------------------------------
// All errors at once, YAML aliases and merges

TEST(AllErrors, AreReportedTogetherInFileOrder) {
  const std::string text =
      "version: 1\n"                        // 1
      "workers: many\n"                     // 2  workers
      "listeners:\n"                        // 3
      "  - name: web\n"                     // 4
      "    address: 127.0.0.1:70000\n"      // 5  port
      "    protocl: http\n"                 // 6  unknown key
      "    routes:\n"                       // 7
      "      - cluster: ap\n"               // 8  undefined cluster
      "clusters:\n"                         // 9
      "  - name: app\n"                     // 10
      "    endpoints: []\n"                 // 11 empty
      "    lb: fastest\n"                   // 12 enum
      "    retry: {backoff: {base: 5}}\n";  // 13 duration
  auto result = load(text);
  EXPECT_FALSE(result.policy);
  ASSERT_EQ(result.errors.size(), 7u) << describe(result);
  EXPECT_EQ(result.errors[0].to_string(),
            "policy.yaml:2:10: workers: expected a positive integer or 'auto', got 'many'");
  EXPECT_EQ(result.errors[1].to_string(),
            "policy.yaml:5:14: listeners[0].address: port 70000 is out of range 1-65535 (or 0 for any free port)");
  EXPECT_EQ(result.errors[2].to_string(),
            "policy.yaml:6:5: listeners[0].protocl: unknown key (did you mean 'protocol'?)");
  EXPECT_EQ(result.errors[3].to_string(),
            "policy.yaml:8:18: listeners[0].routes[0].cluster: no cluster is named 'ap' (did you mean 'app'?)");
  EXPECT_EQ(result.errors[4].to_string(), "policy.yaml:11:16: clusters[0].endpoints: must not be empty");
  EXPECT_EQ(result.errors[5].to_string(),
            "policy.yaml:12:9: clusters[0].lb: 'fastest' is not one of round_robin, least_request or random");
  EXPECT_EQ(result.errors[6].to_string(),
            "policy.yaml:13:29: clusters[0].retry.backoff.base: '5' has no unit (write 5s or 5ms)");
  for (const auto& e : result.errors) EXPECT_EQ(e.file, kFile);
}

TEST(Aliases, AnchorsAndMergeKeysShareSettings) {
  const std::string text = std::string(kMinimal) +
                           "  - name: b\n"
                           "    endpoints: [127.0.0.1:8081]\n"
                           "    retry: &shared_retry {retries: 3, on: [5xx]}\n"
                           "    <<: &timeouts {connect_timeout: 100ms, timeout: 2s}\n"
                           "  - name: c\n"
                           "    endpoints: [127.0.0.1:8082]\n"
                           "    retry: *shared_retry\n"
                           "    <<: *timeouts\n"
                           "    timeout: 9s\n";  // written keys win over merged ones
  auto result = load(text);
  const Policy& p = loaded(result);
  ASSERT_EQ(p.clusters.size(), 3u);
  EXPECT_EQ(p.clusters[1].retry.retries, 3u);
  EXPECT_EQ(p.clusters[2].retry.retries, 3u);
  EXPECT_EQ(p.clusters[2].retry.on, static_cast<uint32_t>(kRetry5xx));
  EXPECT_EQ(p.clusters[1].connect_timeout, Duration{100});
  EXPECT_EQ(p.clusters[1].timeout, Duration{2'000});
  EXPECT_EQ(p.clusters[2].connect_timeout, Duration{100});
  EXPECT_EQ(p.clusters[2].timeout, Duration{9'000});
}

TEST(Aliases, SelfReferenceIsAnErrorNotARecursion) {
  EXPECT_TRUE(HasError(load("listeners: &l [*l]\n"), 1, 12, "listeners[0]: expected a map, got a list"));
  EXPECT_TRUE(HasError(load(with_cluster("    retry: &r {backoff: *r}\n")), 10, 16,
                       "clusters[0].retry.backoff.backoff: unknown key"));
  EXPECT_TRUE(HasError(load(with_cluster("    retry: &r {<<: *r}\n")), 10, 16,
                       "clusters[0].retry.<<: merges nested more than"));
}

TEST(Aliases, ExpansionThroughAliasesIsBounded) {
  // A route matching 2000 headers, listed 2000 times through an alias: 4 million values to walk
  // from about 30 KB of YAML. The walk stops at its node budget instead of running for minutes.
  std::string headers;
  for (int i = 0; i < 2000; ++i) headers += (i ? ", h" : "h") + std::to_string(i) + ": v";
  std::string aliases;
  for (int i = 0; i < 2000; ++i) aliases += ", *route";
  const std::string text =
      "clusters:\n  - name: app\n    endpoints: [127.0.0.1:8080]\n"
      "listeners:\n  - name: web\n    address: 127.0.0.1:0\n"
      "    routes: [&route {cluster: app, match: {headers: {" +
      headers + "}}}" + aliases + "]\n";
  auto result = load(text);
  EXPECT_FALSE(result.policy);
  ASSERT_FALSE(result.errors.empty());
  EXPECT_NE(result.errors.back().message.find("expands to more than 2000000 values"), std::string::npos)
      << describe(result);
}

// ---------------------------------------------------------------------------------------------
// Files

std::filesystem::path make_temp_dir() {
  std::string pattern = (std::filesystem::temp_directory_path() / "pilotfish-policy-XXXXXX").string();
  char* made = mkdtemp(pattern.data());
  EXPECT_NE(made, nullptr);
  return made ? std::filesystem::path(made) : std::filesystem::temp_directory_path();
}

TEST(LoadPolicyFile, MissingFileIsOneErrorWithoutPosition) {
  auto result = load_policy_file("/nonexistent/pilotfish/policy.yaml");
  EXPECT_FALSE(result.policy);
  ASSERT_EQ(result.errors.size(), 1u);
  EXPECT_EQ(result.errors[0].line, 0);
  EXPECT_EQ(result.errors[0].to_string(), "/nonexistent/pilotfish/policy.yaml: cannot read: No such file or directory");
}

TEST(LoadPolicyFile, AFolderIsNotAPolicy) {
  auto dir = make_temp_dir();
  auto result = load_policy_file(dir.string());
  ASSERT_EQ(result.errors.size(), 1u);
  EXPECT_EQ(result.errors[0].to_string(), dir.string() + ": cannot read: Is a directory");
  std::filesystem::remove_all(dir);
}

TEST(LoadPolicyFile, ResolvesRelativePathsBesideTheFileAndHashesItsBytes) {
  auto dir = make_temp_dir();
  const std::string path = (dir / "policy.yaml").string();
  const std::string text = std::string(kMinimal) + "access_log: logs/access.log\n" + kIdentityAtEnd;
  {
    std::ofstream out(path, std::ios::binary);
    out << text;
  }
  // The identity files do not exist: a file load checks them (the text load does not), and
  // says so at the keys that name them, with the paths resolved beside the policy file.
  auto checked = load_policy_file(path);
  ASSERT_EQ(checked.errors.size(), 3u) << describe(checked);
  EXPECT_NE(checked.errors[0].to_string().find("identity.cert: cannot read " + (dir / "certs/me.pem").string()),
            std::string::npos)
      << describe(checked);
  EXPECT_NE(checked.errors[1].to_string().find("identity.key: cannot read /keys/me-key.pem"), std::string::npos);
  EXPECT_NE(checked.errors[2].to_string().find("identity.ca: cannot read " + (dir / "ca.pem").string()),
            std::string::npos);
  auto result = load_policy_text(text, path, dir.string());
  const Policy& p = loaded(result);
  EXPECT_EQ(p.source_path, path);
  EXPECT_EQ(p.access_log.path, (dir / "logs/access.log").string());
  ASSERT_TRUE(p.identity.has_value());
  EXPECT_EQ(p.identity->cert, (dir / "certs/me.pem").string());
  EXPECT_EQ(p.identity->key, "/keys/me-key.pem");
  // The same bytes give the same hash however they were loaded.
  EXPECT_EQ(checked.sha256, p.sha256);
  EXPECT_EQ(p.sha256, loaded(load_policy_text(text, "other", "")).sha256);

  // Errors name the file as given.
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << "version: 3\n";
  }
  auto bad = load_policy_file(path);
  ASSERT_FALSE(bad.errors.empty());
  EXPECT_EQ(bad.errors[0].to_string(), path + ":1:1: listeners: missing; a policy needs at least one listener");
  std::filesystem::remove_all(dir);
}

TEST(PolicyError, ToStringLeavesOutAMissingPosition) {
  EXPECT_EQ((PolicyError{"p.yaml", 3, 7, "x: y"}).to_string(), "p.yaml:3:7: x: y");
  EXPECT_EQ((PolicyError{"p.yaml", 0, 0, "cannot read: gone"}).to_string(), "p.yaml: cannot read: gone");
}

// ---------------------------------------------------------------------------------------------
// Fuzz-ish: the loader answers every input with a policy or at least one error, and never throws.

void expect_an_answer(const std::string& text, const std::string& what) {
  PolicyLoadResult result;
  EXPECT_NO_THROW(result = load(text)) << what;
  EXPECT_NE(result.policy != nullptr, !result.errors.empty()) << what << describe(result);
  for (const auto& e : result.errors) {
    EXPECT_FALSE(e.message.empty()) << what;
    EXPECT_GE(e.line, 0) << what;
  }
}

TEST(Fuzz, MutatedReferencePoliciesAlwaysGetAnAnswer) {
  const std::string reference = kReferencePolicy;
  std::mt19937 random(20240611);  // fixed: a failure must reproduce
  auto pick = [&](size_t n) { return n == 0 ? 0 : std::uniform_int_distribution<size_t>(0, n - 1)(random); };
  // Characters that change YAML structure the most.
  const std::string structural = ":-[]{},&*!|>'\"#%@`? \n\t0123456789x";

  int variants = 0;
  // Truncations at 50 points spread over the file.
  for (int i = 0; i < 50; ++i, ++variants) {
    size_t cut = reference.size() * i / 50;
    expect_an_answer(reference.substr(0, cut), "truncated at " + std::to_string(cut));
  }
  // 50 variants with whole lines removed or duplicated.
  std::vector<std::string> lines;
  for (size_t start = 0; start < reference.size();) {
    size_t end = reference.find('\n', start);
    if (end == std::string::npos) end = reference.size();
    lines.push_back(reference.substr(start, end - start + 1));
    start = end + 1;
  }
  for (int i = 0; i < 50; ++i, ++variants) {
    std::vector<std::string> mutated = lines;
    for (int k = 0; k < 1 + i % 4; ++k) {
      size_t at = pick(mutated.size());
      if (k % 2 == 0)
        mutated.erase(mutated.begin() + static_cast<long>(at));
      else
        mutated.insert(mutated.begin() + static_cast<long>(at), mutated[pick(mutated.size())]);
    }
    std::string text;
    for (const auto& line : mutated) text += line;
    expect_an_answer(text, "lines mutated, variant " + std::to_string(i));
  }
  // 100 variants with characters replaced, inserted or deleted.
  for (int i = 0; i < 100; ++i, ++variants) {
    std::string text = reference;
    for (int k = 0; k < 1 + i % 8; ++k) {
      size_t at = pick(text.size());
      char c = structural[pick(structural.size())];
      switch (pick(3)) {
        case 0:
          text[at] = c;
          break;
        case 1:
          text.insert(at, 1, c);
          break;
        default:
          text.erase(at, 1);
          break;
      }
    }
    expect_an_answer(text, "characters mutated, variant " + std::to_string(i));
  }
  EXPECT_GE(variants, 200);
}

TEST(Fuzz, HostileInputsGetAnAnswer) {
  expect_an_answer(std::string("version: 1\0\0\0listeners: []\n", 27), "NUL bytes");
  expect_an_answer("\xef\xbb\xbf" + std::string(kMinimal), "UTF-8 byte order mark");
  expect_an_answer(std::string(kMinimal) + "service: \"\xff\xfe\"\n", "invalid UTF-8");
  expect_an_answer(std::string(100000, 'a') + ": 1\n", "a huge key");
  expect_an_answer("workers: " + std::string(100000, '9') + "\n", "a huge number");
  expect_an_answer(std::string(3000, '-') + "\n", "dashes");
  std::string nested_blocks;
  for (int i = 0; i < 1000; ++i) nested_blocks += std::string(static_cast<size_t>(i), ' ') + "a:\n";
  expect_an_answer(nested_blocks, "deep block maps");
  expect_an_answer("{" + std::string(3000, '{'), "unclosed flow maps");
  expect_an_answer("!!binary aGVsbG8=\n", "a tagged scalar");
  expect_an_answer("*undefined_alias\n", "an undefined alias");
  expect_an_answer(", " + std::string(kMinimal), "a leading comma");
  expect_an_answer(std::string(kMinimal) + "---\n, , ,\n---\n,", "commas in later documents");
  expect_an_answer("listeners: !!map {}\nclusters: !custom []\n", "tags");
  std::mt19937 random(7);
  for (int i = 0; i < 20; ++i) {
    std::string bytes(static_cast<size_t>(1 + i * 37), '\0');
    for (char& c : bytes) c = static_cast<char>(random() & 0xff);
    expect_an_answer(bytes, "random bytes " + std::to_string(i));
  }
}

}  // namespace
}  // namespace pilotfish
