#include "pilotfish/server.h"

#include <signal.h>
#include <unistd.h>
#include <uv.h>

#include <memory>
#include <thread>
#include <vector>

#include "log/access_log.h"
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

// The process's own loop: signals, the drain deadline, and word from finished workers.
struct Process {
  uv_loop_t* loop = nullptr;
  PolicyPtr policy;
  std::unique_ptr<AccessLogWriter> access_log;
  std::vector<std::unique_ptr<Worker>> workers;
  uv_signal_t sigterm, sigint, sighup, sigusr1;
  uv_timer_t drain_timer;
  uv_async_t worker_done;
  std::atomic<unsigned> finished{0};
  bool draining = false;

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
  p.access_log = std::make_unique<AccessLogWriter>(policy->access_log);
  std::string err;
  if (!p.access_log->open(&err)) {
    log_error(err);
    return 1;
  }

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
        return 1;
      }
      if (w == 0) address = bound_address(fd);
      fds[w].push_back(fd);
    }
    l.address = address;
    log_info("listener " + l.name + " on " + address.text + " (" + (l.protocol == Protocol::tcp ? "tcp" : "http") +
             ", " + std::to_string(l.routes.size()) + " route" + (l.routes.size() == 1 ? "" : "s") + ")");
  }

  p.loop = uv_default_loop();
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
    p.workers.push_back(std::make_unique<Worker>(w, snapshot, fds[w], p.access_log.get()));
  for (auto& w : p.workers) w->start_with_callback([&p] {
    p.finished.fetch_add(1);
    uv_async_send(&p.worker_done);
  });
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
