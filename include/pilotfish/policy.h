#pragma once
// The policy snapshot: everything a worker needs to know about listeners, routes and clusters.
// A Policy is built once by the loader (policy_loader.h), validated, and then never changed: the
// server hands every worker a shared_ptr<const Policy>, and a request keeps the snapshot it
// started with, so a hot reload is a pointer swap and never a lock on the request path.

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "pilotfish/socket_address.h"

namespace pilotfish {

using Duration = std::chrono::milliseconds;

enum class LogLevel { debug, info, warn, error };
enum class Protocol { http, tcp };
enum class Intercept { none, inbound, outbound };
enum class LbPolicy { round_robin, least_request, random };
// What a cluster's endpoints are spoken to in: HTTP/1.1; HTTP/2 (h2c with prior knowledge, or
// ALPN h2 with mtls); or, on mtls clusters, h2 when the endpoint picks it in ALPN.
enum class UpstreamProtocol { http1, http2, automatic };
enum class AccessLogTarget { off, stdout_stream, file };

// Retry conditions, as bits so that a check on the data path is one AND.
enum RetryOn : uint32_t {
  kRetryConnectFailure = 1u << 0,
  kRetryReset = 1u << 1,
  kRetry5xx = 1u << 2,
  kRetryGatewayError = 1u << 3,
  kRetryRetriableStatusCodes = 1u << 4,
  // gRPC statuses of a trailers-only response (the call failed before any message came back).
  kRetryGrpcCancelled = 1u << 5,          // 1 CANCELLED
  kRetryGrpcDeadlineExceeded = 1u << 6,   // 4 DEADLINE_EXCEEDED
  kRetryGrpcResourceExhausted = 1u << 7,  // 8 RESOURCE_EXHAUSTED
  kRetryGrpcInternal = 1u << 8,           // 13 INTERNAL
  kRetryGrpcUnavailable = 1u << 9,        // 14 UNAVAILABLE
};

struct HeaderMatch {
  std::string name;   // lower case
  std::string value;  // exact
};

struct RouteMatch {
  std::optional<std::string> host;         // lower case, without port
  std::optional<std::string> path_prefix;  // matched against the normalised path
  std::optional<std::string> method;       // upper case
  std::vector<HeaderMatch> headers;
};

// `auth` on a listener or route: a bearer JWT verified against a JWKS file.
struct AuthPolicy {
  std::string jwks;                    // path, resolved by the loader; watched and reloaded
  std::string issuer;                  // empty: not checked
  std::vector<std::string> audiences;  // empty: not checked; else `aud` must hold one of them
  std::string subject_header = "x-auth-subject";  // the verified `sub` goes to the upstream here
  Duration clock_skew{30'000};
  bool operator==(const AuthPolicy&) const = default;
};

// `rate_limit` on a listener or route: a token bucket per client key, over all workers.
struct RateLimitPolicy {
  enum class Key { client_address, peer_identity, header };
  double rate = 0;      // tokens per second
  uint32_t burst = 0;   // bucket size
  Key key = Key::client_address;
  std::string header;   // Key::header: its name, lower case
  bool operator==(const RateLimitPolicy&) const = default;
};

struct RetryPolicy {
  uint32_t retries = 1;
  uint32_t on = kRetryConnectFailure;
  std::vector<int> status_codes;
  Duration per_try_timeout{0};  // 0 = only the cluster timeout applies
  Duration backoff_base{25};
  Duration backoff_max{250};
  double budget_ratio = 0.2;
  double budget_min_per_second = 10;
  bool nested = false;  // also retry requests that another pilotfish sent (x-pilotfish-attempt)
};

struct CircuitBreakerLimits {
  uint32_t max_connections = 1024;
  uint32_t max_pending_requests = 1024;
  uint32_t max_requests = 1024;
  uint32_t max_retries = 3;
};

struct OutlierDetection {
  uint32_t consecutive_failures = 5;
  Duration base_ejection_time{30'000};
  Duration max_ejection_time{300'000};
  uint32_t max_ejection_percent = 50;
};

struct ClusterMtls {
  bool enabled = false;
  std::string server_identity;
  std::string sni;  // server name sent in the handshake; empty: the cluster's name
  bool operator==(const ClusterMtls&) const = default;
};

struct Cluster {
  std::string name;
  std::vector<SocketAddress> endpoints;
  std::vector<SocketAddress> vips;
  ClusterMtls mtls;
  LbPolicy lb = LbPolicy::round_robin;
  UpstreamProtocol protocol = UpstreamProtocol::http1;
  Duration connect_timeout{1'000};
  Duration timeout{15'000};        // whole request, every retry included
  Duration idle_timeout{30'000};   // pooled upstream connection unused this long is closed
  RetryPolicy retry;
  CircuitBreakerLimits circuit_breaker;
  OutlierDetection outlier_detection;
};

// `authorization` on a listener or route: who may make which requests. A rule matches when
// every field it gives matches (a field matches when any of its values does).
struct AuthzPath {
  std::string path;  // normalised, as the request's path is
  bool prefix = false;
  bool operator==(const AuthzPath&) const = default;
};
struct AuthzRule {
  std::vector<std::string> principals;  // SPIFFE ids; a trailing '*' matches any rest
  std::vector<std::string> methods;     // upper case
  std::vector<AuthzPath> paths;
  // JWT claims (sub, scope, aud) of the token `auth` verified: the claim holds one of the values.
  std::vector<std::pair<std::string, std::vector<std::string>>> claims;
  bool operator==(const AuthzRule&) const = default;
};
struct Authorization {
  std::vector<AuthzRule> deny;   // any match: refused
  std::vector<AuthzRule> allow;  // when given: refused unless one matches
  bool operator==(const Authorization&) const = default;
};

// `request_headers` / `response_headers` on a route. Values may hold ${peer_identity},
// ${request_id} and ${route}.
struct HeaderRules {
  std::vector<std::pair<std::string, std::string>> set;  // lower-case name: replaces any the message has
  std::vector<std::pair<std::string, std::string>> add;  // added beside any the message has
  std::vector<std::string> remove;                       // lower case
  bool operator==(const HeaderRules&) const = default;
};

// `respond` on a route: pilotfish answers itself, no cluster.
struct DirectResponse {
  int status = 200;
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // lower-case names, as written
  bool operator==(const DirectResponse&) const = default;
};

// `redirect` on a route: the answer's location is the request's URL with what is given here
// instead (its query is kept).
struct Redirect {
  std::string scheme;  // "" = the request's
  std::string host;    // "" = the request's (host[:port])
  std::string path;    // "" = the request's
  int status = 301;    // 301, 302, 307 or 308
  bool operator==(const Redirect&) const = default;
};

// One cluster of a route's weighted split (`routes[].clusters`).
struct WeightedCluster {
  std::string name;
  uint32_t weight = 0;
  size_t index = 0;  // into Policy::clusters, resolved by the loader
  bool operator==(const WeightedCluster&) const = default;
};

// `routes[].hash_on`: what keeps a caller on one cluster of a split.
struct HashOn {
  enum class Kind { none, header, peer_identity };
  Kind kind = Kind::none;
  std::string header;  // Kind::header: its name, lower case
  bool operator==(const HashOn&) const = default;
};

// `fault` on a route: delays and aborts injected into a share of its requests.
struct FaultPolicy {
  double delay_percent = 0;
  Duration delay{0};
  double abort_percent = 0;
  int abort_status = 0;
  std::string header;  // lower case; "" = every request may get a fault, else only one with this header
  bool operator==(const FaultPolicy&) const = default;
};

// `mirror` on a route: a copy of a share of its requests, sent to another cluster and its answer
// dropped. Bounded: copies in flight to the cluster, and the body a copy may carry; a copy over
// either is dropped, never queued.
struct MirrorPolicy {
  std::string cluster;
  size_t cluster_index = 0;  // resolved by the loader
  double percent = 100;
  uint32_t max_in_flight = 100;     // copies in flight to the cluster, over every worker
  uint64_t max_body_bytes = 65536;  // a request with a longer body is not copied
  bool operator==(const MirrorPolicy&) const = default;
};

struct Route {
  std::string name;             // optional: the access log's and the metrics' `route`
  RouteMatch match;
  // Where the route's requests go: one cluster, a weighted split over several, or pilotfish's
  // own answer (respond, redirect).
  std::string cluster;          // name, as written; "" with a split or when the route answers itself
  size_t cluster_index = 0;     // index into Policy::clusters, resolved by the loader
  std::vector<WeightedCluster> clusters;  // a split: each request goes to one, by weight
  uint64_t split_total = 0;               // the sum of the split's weights (above 0)
  HashOn hash_on;                         // a split: the same key, the same cluster
  std::optional<DirectResponse> respond;
  std::optional<Redirect> redirect;
  std::optional<FaultPolicy> fault;
  std::optional<MirrorPolicy> mirror;
  std::optional<Authorization> authorization;  // checked after the listener's
  std::optional<HeaderRules> request_headers;
  std::optional<HeaderRules> response_headers;
  // Overrides of the cluster's timeout and retry for this route's requests.
  std::optional<Duration> timeout;
  std::optional<RetryPolicy> retry;
  // With an override: each target cluster (the one, or each of the split, in order) as this
  // route's requests see it, built by the loader; empty without.
  std::vector<std::shared_ptr<const Cluster>> tuned;
  bool answers_itself() const { return respond.has_value() || redirect.has_value(); }
  // The listener's auth and rate_limit apply unless the route has its own, or turns them off.
  std::optional<AuthPolicy> auth;
  bool auth_off = false;
  std::optional<RateLimitPolicy> rate_limit;
  bool rate_limit_off = false;
};

struct Listener {
  std::string name;
  SocketAddress address;
  Intercept intercept = Intercept::none;
  Protocol protocol = Protocol::http;
  bool mtls = false;
  std::vector<std::string> allow;  // SPIFFE ids; a trailing '*' matches any rest
  // intercept: outbound only: an original destination no cluster's vips claim is passed
  // through to it as plain TCP (true), or the connection is closed (false).
  bool passthrough = true;
  std::optional<AuthPolicy> auth;
  std::optional<RateLimitPolicy> rate_limit;
  std::optional<Authorization> authorization;  // every request of the listener, then its route's
  // Every subject_header its auth (listener or routes) writes, lower case: removed from every
  // request of the listener. Filled by the loader.
  std::vector<std::string> subject_headers;
  Duration header_timeout{10'000};
  Duration body_timeout{30'000};   // 0 = none
  Duration idle_timeout{60'000};
  uint32_t max_header_bytes = 65536;
  uint64_t max_body_bytes = 0;     // 0 = unlimited; more is answered 413
  // Paths that servers resolve differently ("%2F", "\\", "/..;/") are answered 400 unless true.
  bool allow_ambiguous_paths = false;
  // HTTP/2 on a protocol: http listener: prior knowledge (the connection preface first), and
  // ALPN h2 beside http/1.1 with mtls. `http2: false` turns it off.
  bool http2 = true;
  uint32_t http2_max_concurrent_streams = 100;
  std::vector<Route> routes;
};

struct Identity {
  std::string cert;  // absolute or relative to the working directory, resolved by the loader
  std::string key;
  std::string ca;
  // Read from the files when the loader checks them (load_policy_file).
  std::string spiffe_id;
  int64_t cert_not_after = 0;  // Unix seconds
  int64_t ca_not_after = 0;    // the earliest certificate of the bundle
};

struct AccessLog {
  AccessLogTarget target = AccessLogTarget::stdout_stream;
  std::string path;  // for AccessLogTarget::file
};

struct Policy {
  int version = 1;
  std::string service;
  SocketAddress admin_address;
  // A second admin listener serving only GET /metrics, /ready and /live, for probes and
  // scrapers on the pod network while admin_address stays on loopback.
  std::optional<SocketAddress> admin_read_only_address;
  unsigned workers = 0;  // 0 = auto: one per CPU
  LogLevel log_level = LogLevel::info;
  Duration drain_timeout{30'000};
  Duration drain_delay{0};  // after a drain begins, listeners keep accepting this long
  // Where applied and rejected policies are recorded (JSON lines). nullopt: next to the policy
  // file, as <file>.history.jsonl; "": off.
  std::optional<std::string> history_path;
  bool watch = true;  // reload when the policy file changes (SIGHUP and POST /reload always do)
  // /ready stays 503 until an endpoint of each of these clusters accepts a TCP connection.
  std::vector<std::string> wait_for_clusters;
  AccessLog access_log;
  std::optional<Identity> identity;
  std::vector<Listener> listeners;
  std::vector<Cluster> clusters;

  // Where it came from, for /config and history.
  std::string source_path;
  std::string sha256;

  const Cluster* find_cluster(const std::string& name) const {
    for (const auto& c : clusters)
      if (c.name == name) return &c;
    return nullptr;
  }
};

using PolicyPtr = std::shared_ptr<const Policy>;

}  // namespace pilotfish
