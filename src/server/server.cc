#include "pilotfish/server.h"

#include <signal.h>
#include <unistd.h>
#include <uv.h>

#include <chrono>
#include <ctime>
#include <memory>
#include <thread>
#include <vector>

#include "log/access_log.h"
#include "metrics/metrics.h"
#include "policy/policy_json.h"
#include "server/admin_server.h"
#include "log/logger.h"
#include "net/listen_socket.h"
#include "pilotfish/policy_loader.h"
#include "server/worker.h"

namespace pilotfish {

namespace {

LogLevel parse_level(const std::string& s, LogLevel fallback) {
  if (s == "debug") return LogLevel::debug;
  if (s == "info") return LogLevel::info;
  if (s == "warn") return LogLevel::warn;
  if (s == "error") return LogLevel::error;
  return fallback;
}

std::string iso_time(std::time_t t) {
  std::tm tm;
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// The process's own loop: signals, the drain deadline, word from finished workers, and the
// admin endpoints.
struct Process final : AdminBackend {
  uv_loop_t* loop = nullptr;
  PolicyPtr policy;
  std::unique_ptr<MetricsRegistry> registry;
  std::unique_ptr<AdminServer> admin;
  std::time_t loaded_at = 0;
  bool serving = false;  // every listener bound and every worker started
  std::string history_events;  // JSON objects, comma-separated, oldest first
  std::unique_ptr<AccessLogWriter> access_log;
  std::vector<std::unique_ptr<Worker>> workers;
  uv_signal_t sigterm, sigint, sighup, sigusr1;
  uv_timer_t drain_timer;
  uv_async_t worker_done;
  std::atomic<unsigned> finished{0};
  bool draining = false;

  Answer metrics() override {
    return {200, "text/plain; version=0.0.4; charset=utf-8", registry->render()};
  }
  Answer ready() override {
    if (serving && !draining) return {200, "text/plain", "ready\n"};
    return {503, "text/plain", draining ? "draining\n" : "starting\n"};
  }
  Answer live() override {
    // Each worker's loop stamps a heartbeat every second; a loop stuck for 5 s is not live.
    uv_update_time(loop);
    uint64_t now = uv_now(loop);  // libuv loops share one monotonic clock
    for (auto& w : workers) {
      if (w->finished()) continue;
      uint64_t beat = w->heartbeat_ms();
      if (now > beat && now - beat > 5000)
        return {503, "text/plain", "worker " + std::to_string(w->index()) + " has not answered for 5 s\n"};
    }
    return {200, "text/plain", "live\n"};
  }
  Answer config() override {
    std::string body = "{\"version\":1,\"sha256\":";
    json_string(body, policy->sha256);
    body += ",\"loaded_at\":";
    json_string(body, iso_time(loaded_at));
    body += ",\"source\":";
    json_string(body, policy->source_path);
    body += ",\"policy\":" + policy_to_json(*policy) + "}\n";
    return {200, "application/json", body};
  }
  Answer clusters() override {
    std::string body = "{\"clusters\":[";
    bool first = true;
    for (const auto& c : policy->clusters) {
      if (!first) body += ',';
      first = false;
      body += "{\"name\":";
      json_string(body, c.name);
      body += ",\"endpoints\":[";
      for (size_t i = 0; i < c.endpoints.size(); ++i) {
        if (i) body += ',';
        body += "{\"address\":";
        json_string(body, c.endpoints[i].text);
        body += ",\"health\":\"ok\"}";
      }
      body += "],\"open_connections\":" + std::to_string(registry->cluster_open_connections(c.name));
      body += ",\"circuit_breaker\":{\"max_connections\":" + std::to_string(c.circuit_breaker.max_connections) +
              ",\"max_pending_requests\":" + std::to_string(c.circuit_breaker.max_pending_requests) +
              ",\"max_requests\":" + std::to_string(c.circuit_breaker.max_requests) +
              ",\"max_retries\":" + std::to_string(c.circuit_breaker.max_retries) + "}}";
    }
    body += "]}\n";
    return {200, "application/json", body};
  }
  Answer history() override { return {200, "application/json", "{\"events\":[" + history_events + "]}\n"}; }
  Answer reload() override {
    return {503, "application/json",
            "{\"outcome\":\"unavailable\",\"reason\":\"hot reload is not in this build; the running policy "
            "stays\"}\n"};
  }
  Answer drain() override {
    begin_drain("POST /drain");
    return {202, "application/json", "{\"draining\":true}\n"};
  }

  void begin_drain(const char* why) {
    if (draining) return;
    draining = true;
    log_info(std::string("draining (") + why + "), up to " + format_duration(policy->drain_timeout));
    for (auto& w : workers) w->begin_drain();
    uv_timer_start(&drain_timer, on_drain_deadline, static_cast<uint64_t>(policy->drain_timeout.count()), 0);
  }

  static void on_drain_deadline(uv_timer_t* t) {
    auto* p = static_cast<Process*>(t->data);
    log_warn("drain timeout passed: closing the connections still open");
    for (auto& w : p->workers) w->force_stop();
  }

  static void on_signal(uv_signal_t* s, int signum) {
    auto* p = static_cast<Process*>(s->data);
    switch (signum) {
      case SIGTERM: p->begin_drain("SIGTERM"); break;
      case SIGINT: p->begin_drain("SIGINT"); break;
      case SIGHUP: log_warn("SIGHUP: policy reload is not available in this build; the running policy stays"); break;
      case SIGUSR1: {
        std::string err;
        if (!p->access_log->reopen(&err)) log_error(err);
        else log_info("access log reopened");
        break;
      }
    }
  }

  static void on_worker_done(uv_async_t* a) {
    auto* p = static_cast<Process*>(a->data);
    if (p->finished.load() < p->workers.size()) return;
    uv_close(reinterpret_cast<uv_handle_t*>(&p->sigterm), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&p->sigint), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&p->sighup), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&p->sigusr1), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&p->drain_timer), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&p->worker_done), nullptr);
    p->admin->close();
  }
};

}  // namespace

int run_server(const RunOptions& options) {
  ::signal(SIGPIPE, SIG_IGN);
  auto loaded = load_policy_file(options.config_path);
  if (!loaded.ok()) {
    for (const auto& e : loaded.errors) log_error(e.to_string());
    log_error("policy " + options.config_path + " did not load; not starting");
    return 1;
  }
  for (const auto& w : loaded.warnings) log_warn(options.config_path + ": " + w);
  auto policy = std::make_shared<Policy>(*loaded.policy);
  if (options.workers_override > 0) policy->workers = static_cast<unsigned>(options.workers_override);
  if (!options.log_level_override.empty()) policy->log_level = parse_level(options.log_level_override, policy->log_level);
  if (policy->workers == 0) policy->workers = std::max(1u, std::thread::hardware_concurrency());
  set_log_level(policy->log_level);

  Process p;
  p.policy = policy;
  p.loop = uv_default_loop();
  p.loaded_at = std::time(nullptr);
  p.registry = std::make_unique<MetricsRegistry>(policy->workers);
  p.registry->set_policy_info(1, policy->sha256);
  p.access_log = std::make_unique<AccessLogWriter>(policy->access_log);
  std::string err;
  if (!p.access_log->open(&err)) {
    log_error(err);
    return 1;
  }
  // The admin listener comes first: /ready answers 503 until every listener is bound.
  p.admin = std::make_unique<AdminServer>(p.loop, p);
  if (!p.admin->listen(policy->admin_address, &err)) {
    log_error("admin: " + err);
    p.admin->close();
    uv_run(p.loop, UV_RUN_NOWAIT);
    return 1;
  }
  log_info("admin on " + p.admin->address().text);

  // Bind every listener once per worker before any worker starts, so a port that cannot be
  // bound stops the start cleanly. Port 0 is resolved by the first bind and reused after.
  unsigned n = policy->workers;
  std::vector<std::vector<int>> fds(n);
  for (auto& l : policy->listeners) {
    SocketAddress address = l.address;
    for (unsigned w = 0; w < n; ++w) {
      int fd = open_listen_socket(address, &err);
      if (fd < 0) {
        log_error("listener " + l.name + ": " + err);
        for (auto& v : fds)
          for (int f : v) ::close(f);
        p.admin->close();
        uv_run(p.loop, UV_RUN_NOWAIT);
        return 1;
      }
      if (w == 0) address = bound_address(fd);
      fds[w].push_back(fd);
    }
    l.address = address;
    log_info("listener " + l.name + " on " + address.text + " (" + (l.protocol == Protocol::tcp ? "tcp" : "http") +
             ", " + std::to_string(l.routes.size()) + " route" + (l.routes.size() == 1 ? "" : "s") + ")");
  }

  for (uv_signal_t* s : {&p.sigterm, &p.sigint, &p.sighup, &p.sigusr1}) {
    uv_signal_init(p.loop, s);
    s->data = &p;
  }
  uv_signal_start(&p.sigterm, Process::on_signal, SIGTERM);
  uv_signal_start(&p.sigint, Process::on_signal, SIGINT);
  uv_signal_start(&p.sighup, Process::on_signal, SIGHUP);
  uv_signal_start(&p.sigusr1, Process::on_signal, SIGUSR1);
  uv_timer_init(p.loop, &p.drain_timer);
  p.drain_timer.data = &p;
  uv_async_init(p.loop, &p.worker_done, Process::on_worker_done);
  p.worker_done.data = &p;

  PolicyPtr snapshot = policy;
  for (unsigned w = 0; w < n; ++w)
    p.workers.push_back(std::make_unique<Worker>(w, snapshot, fds[w], p.access_log.get(), *p.registry));
  for (auto& w : p.workers) w->start_with_callback([&p] {
    p.finished.fetch_add(1);
    uv_async_send(&p.worker_done);
  });
  p.serving = true;
  p.history_events = "{\"version\":1,\"time\":";
  json_string(p.history_events, iso_time(p.loaded_at));
  p.history_events += ",\"trigger\":\"startup\",\"sha256\":";
  json_string(p.history_events, policy->sha256);
  p.history_events += ",\"outcome\":\"applied\"}";
  log_info("pilotfish ready: service " + (policy->service.empty() ? std::string("(unnamed)") : policy->service) +
           ", " + std::to_string(n) + " worker" + (n == 1 ? "" : "s"));

  uv_run(p.loop, UV_RUN_DEFAULT);
  for (auto& w : p.workers) w->join();
  p.workers.clear();
  if (uv_loop_close(p.loop) != 0) log_error("main loop closed with handles still open");
  log_info("drained; exiting");
  return 0;
}

}  // namespace pilotfish
