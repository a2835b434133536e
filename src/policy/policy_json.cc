#include "policy/policy_json.h"

#include "log/access_log.h"
#include "pilotfish/policy_loader.h"

namespace pilotfish {

void json_string(std::string& out, std::string_view s) { append_json_string(out, s); }

void json_string_array(std::string& out, const std::vector<std::string>& items) {
  out += '[';
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) out += ',';
    append_json_string(out, items[i]);
  }
  out += ']';
}

namespace {

class JsonWriter {
 public:
  explicit JsonWriter(std::string& out) : out_(out) {}
  JsonWriter& key(std::string_view k) {
    comma();
    json_string(out_, k);
    out_ += ':';
    fresh_ = true;
    return *this;
  }
  JsonWriter& str(std::string_view v) {
    comma();
    json_string(out_, v);
    return *this;
  }
  JsonWriter& num(double v) {
    comma();
    char buf[32];
    snprintf(buf, sizeof buf, "%.17g", v);
    out_ += buf;
    return *this;
  }
  JsonWriter& boolean(bool v) {
    comma();
    out_ += v ? "true" : "false";
    return *this;
  }
  JsonWriter& dur(Duration d) { return str(format_duration(d)); }
  JsonWriter& begin_object() {
    comma();
    out_ += '{';
    fresh_ = true;
    return *this;
  }
  JsonWriter& end_object() {
    out_ += '}';
    fresh_ = false;
    return *this;
  }
  JsonWriter& begin_array() {
    comma();
    out_ += '[';
    fresh_ = true;
    return *this;
  }
  JsonWriter& end_array() {
    out_ += ']';
    fresh_ = false;
    return *this;
  }

 private:
  void comma() {
    if (!fresh_) out_ += ',';
    fresh_ = false;
  }
  std::string& out_;
  bool fresh_ = true;
};

const char* name_of(LbPolicy p) {
  switch (p) {
    case LbPolicy::round_robin: return "round_robin";
    case LbPolicy::least_request: return "least_request";
    case LbPolicy::random: return "random";
  }
  return "";
}
const char* name_of(Protocol p) { return p == Protocol::tcp ? "tcp" : "http"; }
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

}  // namespace

std::string policy_to_json(const Policy& p) {
  std::string out;
  JsonWriter w(out);
  w.begin_object();
  w.key("version").num(p.version);
  w.key("service").str(p.service);
  w.key("admin").begin_object().key("address").str(p.admin_address.text).end_object();
  w.key("workers").num(p.workers);
  w.key("log_level").str(name_of(p.log_level));
  w.key("drain_timeout").dur(p.drain_timeout);
  w.key("drain_delay").dur(p.drain_delay);
  w.key("policy_history").str(p.history_path ? (p.history_path->empty() ? std::string("off") : *p.history_path)
                                             : p.source_path + ".history.jsonl");
  w.key("policy_watch").boolean(p.watch);
  w.key("wait_for_clusters").begin_array();
  for (const auto& c : p.wait_for_clusters) w.str(c);
  w.end_array();
  w.key("access_log").str(p.access_log.target == AccessLogTarget::off ? "off"
                          : p.access_log.target == AccessLogTarget::stdout_stream ? "stdout"
                                                                                   : p.access_log.path);
  if (p.identity) {
    w.key("identity").begin_object();
    w.key("cert").str(p.identity->cert).key("key").str(p.identity->key).key("ca").str(p.identity->ca);
    w.end_object();
  }
  w.key("listeners").begin_array();
  for (const auto& l : p.listeners) {
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
    w.key("header_timeout").dur(l.header_timeout).key("body_timeout").dur(l.body_timeout);
    w.key("idle_timeout").dur(l.idle_timeout);
    w.key("max_header_bytes").num(l.max_header_bytes).key("max_body_bytes").num(static_cast<double>(l.max_body_bytes));
    w.key("routes").begin_array();
    for (const auto& r : l.routes) {
      w.begin_object();
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
      w.key("cluster").str(r.cluster);
      w.end_object();
    }
    w.end_array();
    w.end_object();
  }
  w.end_array();
  w.key("clusters").begin_array();
  for (const auto& c : p.clusters) {
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
    w.key("lb").str(name_of(c.lb));
    w.key("connect_timeout").dur(c.connect_timeout).key("timeout").dur(c.timeout).key("idle_timeout").dur(c.idle_timeout);
    const RetryPolicy& r = c.retry;
    w.key("retry").begin_object();
    w.key("retries").num(r.retries);
    w.key("on").begin_array();
    static constexpr std::pair<uint32_t, const char*> kOn[] = {{kRetryConnectFailure, "connect-failure"},
                                                               {kRetryReset, "reset"},
                                                               {kRetry5xx, "5xx"},
                                                               {kRetryGatewayError, "gateway-error"},
                                                               {kRetryRetriableStatusCodes, "retriable-status-codes"}};
    for (auto [bit, name] : kOn)
      if (r.on & bit) w.str(name);
    w.end_array();
    w.key("status_codes").begin_array();
    for (int code : r.status_codes) w.num(code);
    w.end_array();
    w.key("per_try_timeout").dur(r.per_try_timeout);
    w.key("backoff").begin_object().key("base").dur(r.backoff_base).key("max").dur(r.backoff_max).end_object();
    w.key("budget").begin_object().key("ratio").num(r.budget_ratio).key("min_per_second").num(r.budget_min_per_second);
    w.end_object();
    w.key("nested").boolean(r.nested);
    w.end_object();
    const CircuitBreakerLimits& b = c.circuit_breaker;
    w.key("circuit_breaker").begin_object();
    w.key("max_connections").num(b.max_connections).key("max_pending_requests").num(b.max_pending_requests);
    w.key("max_requests").num(b.max_requests).key("max_retries").num(b.max_retries);
    w.end_object();
    const OutlierDetection& o = c.outlier_detection;
    w.key("outlier_detection").begin_object();
    w.key("consecutive_failures").num(o.consecutive_failures);
    w.key("base_ejection_time").dur(o.base_ejection_time).key("max_ejection_time").dur(o.max_ejection_time);
    w.key("max_ejection_percent").num(o.max_ejection_percent);
    w.end_object();
    w.end_object();
  }
  w.end_array();
  w.end_object();
  return out;
}

}  // namespace pilotfish
