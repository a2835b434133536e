#include "policy/policy_json.h"

#include "json/json_writer.h"
#include "pilotfish/policy_loader.h"

namespace pilotfish {

namespace {

// Durations as an operator writes them ("250ms").
std::string dur(Duration d) { return format_duration(d); }

const char* name_of(LbPolicy p) {
  switch (p) {
    case LbPolicy::round_robin: return "round_robin";
    case LbPolicy::least_request: return "least_request";
    case LbPolicy::random: return "random";
  }
  return "";
}
const char* name_of(Protocol p) { return p == Protocol::tcp ? "tcp" : "http"; }
const char* name_of(UpstreamProtocol p) {
  switch (p) {
    case UpstreamProtocol::http1: return "http1";
    case UpstreamProtocol::http2: return "http2";
    case UpstreamProtocol::automatic: return "auto";
  }
  return "";
}
const char* name_of(Intercept i) {
  switch (i) {
    case Intercept::none: return "none";
    case Intercept::inbound: return "inbound";
    case Intercept::outbound: return "outbound";
  }
  return "";
}
const char* name_of(LogLevel l) {
  switch (l) {
    case LogLevel::debug: return "debug";
    case LogLevel::info: return "info";
    case LogLevel::warn: return "warn";
    case LogLevel::error: return "error";
  }
  return "";
}

void write_addresses(JsonWriter& w, const std::vector<SocketAddress>& list) {
  w.begin_array();
  for (const auto& a : list) w.str(a.text);
  w.end_array();
}


void write_auth(JsonWriter& w, const std::optional<AuthPolicy>& auth, bool off) {
  if (off) {
    w.key("auth").boolean(false);
    return;
  }
  if (!auth) return;
  w.key("auth").begin_object();
  w.key("jwks").str(auth->jwks).key("issuer").str(auth->issuer);
  w.key("audience").begin_array();
  for (const auto& a : auth->audiences) w.str(a);
  w.end_array();
  w.key("subject_header").str(auth->subject_header).key("clock_skew").str(dur(auth->clock_skew));
  w.end_object();
}

void write_rate_limit(JsonWriter& w, const std::optional<RateLimitPolicy>& limit, bool off) {
  if (off) {
    w.key("rate_limit").boolean(false);
    return;
  }
  if (!limit) return;
  w.key("rate_limit").begin_object();
  w.key("rate").num(limit->rate).key("burst").integer(limit->burst);
  switch (limit->key) {
    case RateLimitPolicy::Key::client_address: w.key("key").str("client_address"); break;
    case RateLimitPolicy::Key::peer_identity: w.key("key").str("peer_identity"); break;
    case RateLimitPolicy::Key::header: w.key("key").str("header:" + limit->header); break;
  }
  w.end_object();
}

void write_authorization(JsonWriter& w, const std::optional<Authorization>& a) {
  if (!a) return;
  w.key("authorization").begin_object();
  for (auto [key, rules] : {std::pair{"deny", &a->deny}, std::pair{"allow", &a->allow}}) {
    if (rules->empty()) continue;
    w.key(key).begin_array();
    for (const AuthzRule& r : *rules) {
      w.begin_object();
      if (!r.principals.empty()) {
        w.key("principals").begin_array();
        for (const auto& p : r.principals) w.str(p);
        w.end_array();
      }
      if (!r.methods.empty()) {
        w.key("methods").begin_array();
        for (const auto& m : r.methods) w.str(m);
        w.end_array();
      }
      if (!r.paths.empty()) {
        w.key("paths").begin_array();
        for (const auto& p : r.paths) w.begin_object().key(p.prefix ? "prefix" : "exact").str(p.path).end_object();
        w.end_array();
      }
      if (!r.claims.empty()) {
        w.key("claims").begin_object();
        for (const auto& [name, values] : r.claims) {
          w.key(name).begin_array();
          for (const auto& v : values) w.str(v);
          w.end_array();
        }
        w.end_object();
      }
      w.end_object();
    }
    w.end_array();
  }
  w.end_object();
}

void write_header_rules(JsonWriter& w, const char* key, const std::optional<HeaderRules>& rules) {
  if (!rules) return;
  w.key(key).begin_object();
  for (auto [name, list] : {std::pair{"set", &rules->set}, std::pair{"add", &rules->add}}) {
    if (list->empty()) continue;
    w.key(name).begin_object();
    for (const auto& [n, v] : *list) w.key(n).str(v);
    w.end_object();
  }
  if (!rules->remove.empty()) {
    w.key("remove").begin_array();
    for (const auto& n : rules->remove) w.str(n);
    w.end_array();
  }
  w.end_object();
}

void write_retry(JsonWriter& w, const RetryPolicy& r) {
  w.key("retry").begin_object();
  w.key("retries").integer(r.retries);
  w.key("on").begin_array();
  static constexpr std::pair<uint32_t, const char*> kOn[] = {{kRetryConnectFailure, "connect-failure"},
                                                             {kRetryReset, "reset"},
                                                             {kRetry5xx, "5xx"},
                                                             {kRetryGatewayError, "gateway-error"},
                                                             {kRetryRetriableStatusCodes, "retriable-status-codes"},
                                                             {kRetryGrpcCancelled, "cancelled"},
                                                             {kRetryGrpcDeadlineExceeded, "deadline-exceeded"},
                                                             {kRetryGrpcResourceExhausted, "resource-exhausted"},
                                                             {kRetryGrpcInternal, "internal"},
                                                             {kRetryGrpcUnavailable, "unavailable"}};
  for (auto [bit, name] : kOn)
    if (r.on & bit) w.str(name);
  w.end_array();
  w.key("status_codes").begin_array();
  for (int code : r.status_codes) w.integer(code);
  w.end_array();
  w.key("per_try_timeout").str(dur(r.per_try_timeout));
  w.key("backoff").begin_object().key("base").str(dur(r.backoff_base)).key("max").str(dur(r.backoff_max)).end_object();
  w.key("budget").begin_object().key("ratio").num(r.budget_ratio).key("min_per_second").num(r.budget_min_per_second);
  w.end_object();
  w.key("nested").boolean(r.nested);
  w.end_object();
}

void write_route(JsonWriter& w, const Route& r) {
  w.begin_object();
  if (!r.name.empty()) w.key("name").str(r.name);
  const RouteMatch& m = r.match;
  if (m.host || m.path_prefix || m.method || !m.headers.empty()) {
    w.key("match").begin_object();
    if (m.host) w.key("host").str(*m.host);
    if (m.path_prefix) w.key("path_prefix").str(*m.path_prefix);
    if (m.method) w.key("method").str(*m.method);
    if (!m.headers.empty()) {
      w.key("headers").begin_object();
      for (const auto& h : m.headers) w.key(h.name).str(h.value);
      w.end_object();
    }
    w.end_object();
  }
  if (!r.cluster.empty()) w.key("cluster").str(r.cluster);
  if (!r.clusters.empty()) {
    w.key("clusters").begin_array();
    for (const auto& c : r.clusters) w.begin_object().key("name").str(c.name).key("weight").integer(c.weight).end_object();
    w.end_array();
  }
  switch (r.hash_on.kind) {
    case HashOn::Kind::none: break;
    case HashOn::Kind::header: w.key("hash_on").str("header:" + r.hash_on.header); break;
    case HashOn::Kind::peer_identity: w.key("hash_on").str("peer_identity"); break;
  }
  if (r.timeout) w.key("timeout").str(dur(*r.timeout));
  if (r.retry) write_retry(w, *r.retry);
  if (r.fault) {
    w.key("fault").begin_object();
    if (r.fault->delay.count() > 0)
      w.key("delay").begin_object().key("percent").num(r.fault->delay_percent).key("duration").str(dur(r.fault->delay)).end_object();
    if (r.fault->abort_status)
      w.key("abort").begin_object().key("percent").num(r.fault->abort_percent).key("status").integer(r.fault->abort_status).end_object();
    if (!r.fault->header.empty()) w.key("header").str(r.fault->header);
    w.end_object();
  }
  if (r.mirror) {
    w.key("mirror").begin_object().key("cluster").str(r.mirror->cluster).key("percent").num(r.mirror->percent);
    w.key("max_in_flight").integer(r.mirror->max_in_flight).key("max_body_bytes").integer(r.mirror->max_body_bytes);
    w.end_object();
  }
  if (r.respond) {
    w.key("respond").begin_object();
    w.key("status").integer(r.respond->status).key("body").str(r.respond->body);
    w.key("headers").begin_object();
    for (const auto& [name, value] : r.respond->headers) w.key(name).str(value);
    w.end_object();
    w.end_object();
  }
  if (r.redirect) {
    w.key("redirect").begin_object();
    if (!r.redirect->scheme.empty()) w.key("scheme").str(r.redirect->scheme);
    if (!r.redirect->host.empty()) w.key("host").str(r.redirect->host);
    if (!r.redirect->path.empty()) w.key("path").str(r.redirect->path);
    w.key("status").integer(r.redirect->status);
    w.end_object();
  }
  write_auth(w, r.auth, r.auth_off);
  write_authorization(w, r.authorization);
  write_header_rules(w, "request_headers", r.request_headers);
  write_header_rules(w, "response_headers", r.response_headers);
  write_rate_limit(w, r.rate_limit, r.rate_limit_off);
  w.end_object();
}

void write_listener(JsonWriter& w, const Listener& l, bool with_routes) {
  w.begin_object();
  w.key("name").str(l.name).key("address").str(l.address.text);
  w.key("protocol").str(name_of(l.protocol)).key("intercept").str(name_of(l.intercept));
  w.key("mtls").boolean(l.mtls);
  if (l.intercept == Intercept::outbound) w.key("passthrough").boolean(l.passthrough);
  if (!l.allow.empty()) {
    w.key("allow").begin_array();
    for (const auto& a : l.allow) w.str(a);
    w.end_array();
  }
  w.key("header_timeout").str(dur(l.header_timeout)).key("body_timeout").str(dur(l.body_timeout));
  w.key("idle_timeout").str(dur(l.idle_timeout));
  w.key("max_header_bytes").integer(l.max_header_bytes).key("max_body_bytes").integer(l.max_body_bytes);
  w.key("allow_ambiguous_paths").boolean(l.allow_ambiguous_paths);
  if (l.protocol == Protocol::http) {
    w.key("http2");
    if (l.http2)
      w.begin_object().key("max_concurrent_streams").integer(l.http2_max_concurrent_streams).end_object();
    else
      w.boolean(false);
  }
  write_auth(w, l.auth, false);
  write_rate_limit(w, l.rate_limit, false);
  write_authorization(w, l.authorization);
  if (with_routes) {
    w.key("routes").begin_array();
    for (const auto& r : l.routes) write_route(w, r);
    w.end_array();
  }
  w.end_object();
}

void write_cluster(JsonWriter& w, const Cluster& c) {
  w.begin_object();
  w.key("name").str(c.name);
  w.key("endpoints");
  write_addresses(w, c.endpoints);
  if (!c.vips.empty()) {
    w.key("vips");
    write_addresses(w, c.vips);
  }
  if (c.mtls.enabled) {
    w.key("mtls").begin_object().key("server_identity").str(c.mtls.server_identity);
    if (!c.mtls.sni.empty()) w.key("sni").str(c.mtls.sni);
    w.end_object();
  }
  w.key("lb").str(name_of(c.lb)).key("protocol").str(name_of(c.protocol));
  w.key("connect_timeout").str(dur(c.connect_timeout)).key("timeout").str(dur(c.timeout)).key("idle_timeout").str(dur(c.idle_timeout));
  write_retry(w, c.retry);
  const CircuitBreakerLimits& b = c.circuit_breaker;
  w.key("circuit_breaker").begin_object();
  w.key("max_connections").integer(b.max_connections).key("max_pending_requests").integer(b.max_pending_requests);
  w.key("max_requests").integer(b.max_requests).key("max_retries").integer(b.max_retries);
  w.end_object();
  const OutlierDetection& o = c.outlier_detection;
  w.key("outlier_detection").begin_object();
  w.key("consecutive_failures").integer(o.consecutive_failures);
  w.key("base_ejection_time").str(dur(o.base_ejection_time)).key("max_ejection_time").str(dur(o.max_ejection_time));
  w.key("max_ejection_percent").integer(o.max_ejection_percent);
  w.end_object();
  w.end_object();
}

template <typename Write>
std::string to_json(Write write) {
  std::string out;
  JsonWriter w(out);
  write(w);
  return out;
}

}  // namespace

std::vector<std::pair<std::string, std::string>> settings_to_json(const Policy& p) {
  std::vector<std::pair<std::string, std::string>> out;
  auto add = [&out](const char* name, auto write) { out.emplace_back(name, to_json(write)); };
  add("version", [&](JsonWriter& w) { w.integer(p.version); });
  add("service", [&](JsonWriter& w) { w.str(p.service); });
  add("admin.address", [&](JsonWriter& w) { w.str(p.admin_address.text); });
  add("admin.read_only_address", [&](JsonWriter& w) {
    if (p.admin_read_only_address) w.str(p.admin_read_only_address->text);
    else w.null();
  });
  add("workers", [&](JsonWriter& w) { w.integer(p.workers); });
  add("log_level", [&](JsonWriter& w) { w.str(name_of(p.log_level)); });
  add("drain_timeout", [&](JsonWriter& w) { w.str(dur(p.drain_timeout)); });
  add("drain_delay", [&](JsonWriter& w) { w.str(dur(p.drain_delay)); });
  add("policy_history", [&](JsonWriter& w) {
    w.str(p.history_path ? (p.history_path->empty() ? std::string("off") : *p.history_path)
                         : p.source_path + ".history.jsonl");
  });
  add("policy_watch", [&](JsonWriter& w) { w.boolean(p.watch); });
  add("wait_for_clusters", [&](JsonWriter& w) {
    w.begin_array();
    for (const auto& c : p.wait_for_clusters) w.str(c);
    w.end_array();
  });
  add("access_log", [&](JsonWriter& w) {
    w.str(p.access_log.target == AccessLogTarget::off             ? "off"
          : p.access_log.target == AccessLogTarget::stdout_stream ? "stdout"
                                                                  : p.access_log.path);
  });
  add("identity", [&](JsonWriter& w) {
    if (!p.identity) {
      w.null();
      return;
    }
    w.begin_object();
    w.key("cert").str(p.identity->cert).key("key").str(p.identity->key).key("ca").str(p.identity->ca);
    w.end_object();
  });
  return out;
}

std::string listener_to_json(const Listener& l, bool with_routes) {
  return to_json([&](JsonWriter& w) { write_listener(w, l, with_routes); });
}

std::string route_to_json(const Route& r) {
  return to_json([&](JsonWriter& w) { write_route(w, r); });
}

std::string cluster_to_json(const Cluster& c) {
  return to_json([&](JsonWriter& w) { write_cluster(w, c); });
}

std::string policy_to_json(const Policy& p) {
  // The settings first, "admin.address" and "admin.read_only_address" inside one "admin"
  // object; a setting that is not set (null) is left out.
  std::string out;
  JsonWriter w(out);
  w.begin_object();
  std::string group;  // the object open now, if any
  for (const auto& [name, value] : settings_to_json(p)) {
    size_t dot = name.find('.');
    std::string prefix = dot == std::string::npos ? std::string() : name.substr(0, dot);
    if (!group.empty() && group != prefix) {
      w.end_object();
      group.clear();
    }
    if (value == "null") continue;
    if (!prefix.empty() && group != prefix) {
      w.key(prefix).begin_object();
      group = prefix;
    }
    w.key(dot == std::string::npos ? name : name.substr(dot + 1)).raw(value);
  }
  if (!group.empty()) w.end_object();
  w.key("listeners").begin_array();
  for (const auto& l : p.listeners) write_listener(w, l, /*with_routes=*/true);
  w.end_array();
  w.key("clusters").begin_array();
  for (const auto& c : p.clusters) write_cluster(w, c);
  w.end_array();
  w.end_object();
  return out;
}

}  // namespace pilotfish
