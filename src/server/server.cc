// The process's life: start (load, bind, start the workers), signals, the drain, the exit. The
// process's other parts are listed in server/process.h.
#include "pilotfish/server.h"

#include <signal.h>
#include <uv.h>

#include <ctime>
#include <thread>

#include "log/logger.h"
#include "net/descriptor_budget.h"
#include "pilotfish/policy_loader.h"
#include "server/process.h"

namespace pilotfish {

namespace {

LogLevel parse_level(const std::string& s, LogLevel fallback) {
  if (s == "debug") return LogLevel::debug;
  if (s == "info") return LogLevel::info;
  if (s == "warn") return LogLevel::warn;
  if (s == "error") return LogLevel::error;
  return fallback;
}

}  // namespace

void Process::begin_drain(const char* why) {
  if (draining) return;
  draining = true;
  uint64_t delay = static_cast<uint64_t>(policy->drain_delay.count());
  log_info(std::string("draining (") + why + "), up to " + format_duration(policy->drain_timeout) +
           (delay ? ", listeners accept for " + format_duration(policy->drain_delay) + " more" : std::string()));
  for (auto& w : workers) w->begin_drain(/*stop_accepting=*/delay == 0);
  if (delay) uv_timer_start(&drain_delay_timer, on_drain_delay, delay, 0);
  uv_timer_start(&drain_timer, on_drain_deadline, static_cast<uint64_t>(policy->drain_timeout.count()), 0);
}

void Process::on_drain_delay(uv_timer_t* t) {
  auto* p = static_cast<Process*>(t->data);
  log_info("drain delay over: listeners stop accepting");
  for (auto& w : p->workers) w->stop_accepting();
}

void Process::on_drain_deadline(uv_timer_t* t) {
  auto* p = static_cast<Process*>(t->data);
  log_warn("drain timeout passed: closing the connections still open");
  for (auto& w : p->workers) w->force_stop();
}

void Process::on_signal(uv_signal_t* s, int signum) {
  auto* p = static_cast<Process*>(s->data);
  switch (signum) {
    case SIGTERM: p->begin_drain("SIGTERM"); break;
    case SIGINT: p->begin_drain("SIGINT"); break;
    case SIGHUP: p->reload_policy("sighup", /*quiet_if_unchanged=*/false, nullptr); break;
    case SIGUSR1: {
      std::string err;
      if (!p->access_log->reopen(&err)) log_error(err);
      else log_info("access log reopened");
      break;
    }
  }
}

// Every worker has ended: every handle of this loop closes, and with that uv_run returns.
void Process::on_worker_done(uv_async_t* a) {
  auto* p = static_cast<Process*>(a->data);
  if (p->finished.load() < p->workers.size()) return;
  for (uv_signal_t* s : {&p->sigterm, &p->sigint, &p->sighup, &p->sigusr1})
    uv_close(reinterpret_cast<uv_handle_t*>(s), nullptr);
  for (uv_timer_t* t : {&p->drain_timer, &p->drain_delay_timer, &p->handoff_timer, &p->stats_timer})
    uv_close(reinterpret_cast<uv_handle_t*>(t), nullptr);
  p->finish_handoffs(/*all=*/true);  // an ended worker took (or dropped) every message
  uv_close(reinterpret_cast<uv_handle_t*>(&p->handoff_ack), nullptr);
  p->probes->close();
  p->policy_watch->close();
  p->close_keys();
  uv_close(reinterpret_cast<uv_handle_t*>(&p->worker_done), nullptr);
  p->close_admin();
}

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
  p.options = options;
  p.loaded = loaded.policy;
  p.loop = uv_default_loop();
  p.loaded_at = std::time(nullptr);
  p.registry = std::make_unique<MetricsRegistry>(policy->workers);
  p.tap = std::make_unique<TapHub>(p.registry->process());
  p.resilience = std::make_unique<ResilienceRegistry>(policy->workers);
  p.registry->set_policy_info(1, policy->sha256);
  p.policy = policy;
  p.init_keys();
  // Until the workers run, what stops the start closes this loop's handles before returning.
  auto fail = [&p](const std::string& why) {
    log_error(why);
    if (p.admin) p.close_admin();
    p.close_keys();
    uv_run(p.loop, UV_RUN_NOWAIT);
    return 1;
  };
  std::string err;
  FileStamps material_stamps;
  if (policy->identity) {
    TlsMaterialPtr material = p.material_for(*policy->identity, &material_stamps, &err);
    if (!material) return fail("identity: " + err + "; not starting");
    p.use_material(material);
    log_info("identity " + material->spiffe_id() + ", certificate valid until " + iso_time(material->cert_not_after()));
  }
  p.use_jwks(*policy, loaded.jwks);
  p.access_log = std::make_unique<AccessLogWriter>(policy->access_log);
  if (!p.access_log->open(&err)) return fail(err);
  // The admin listener comes first: /ready answers 503 until every listener is bound.
  p.admin = std::make_unique<AdminServer>(p.loop, p);
  if (policy->admin_read_only_address)
    p.admin_read_only = std::make_unique<AdminServer>(p.loop, p, /*read_only=*/true);
  if (!p.admin->listen(policy->admin_address, &err) ||
      (p.admin_read_only && !p.admin_read_only->listen(*policy->admin_read_only_address, &err)))
    return fail("admin: " + err);
  log_info("admin on " + p.admin->address().text);
  if (p.admin_read_only) log_info("read-only admin (/metrics /stats /ready /live) on " + p.admin_read_only->address().text);

  // Every listener is bound once per worker before any worker starts, so a port that cannot be
  // bound stops the start cleanly.
  unsigned n = policy->workers;
  std::optional<BoundListeners> listeners = bind_listeners(policy->listeners, n, {}, &err);
  if (!listeners) return fail(err);
  for (const auto& line : listeners->opened) log_info(line);
  p.bound = listeners->bound;
  p.policy = policy;

  for (uv_signal_t* s : {&p.sigterm, &p.sigint, &p.sighup, &p.sigusr1}) {
    uv_signal_init(p.loop, s);
    s->data = &p;
  }
  uv_signal_start(&p.sigterm, Process::on_signal, SIGTERM);
  uv_signal_start(&p.sigint, Process::on_signal, SIGINT);
  uv_signal_start(&p.sighup, Process::on_signal, SIGHUP);
  uv_signal_start(&p.sigusr1, Process::on_signal, SIGUSR1);
  for (uv_timer_t* t : {&p.drain_timer, &p.drain_delay_timer, &p.stats_timer}) {
    uv_timer_init(p.loop, t);
    t->data = &p;
  }
  uv_timer_start(&p.stats_timer, Process::on_stats_timer, 0, 1000);
  uv_async_init(p.loop, &p.worker_done, Process::on_worker_done);
  p.worker_done.data = &p;

  PolicyPtr snapshot = policy;
  for (unsigned w = 0; w < n; ++w)
    p.workers.push_back(std::make_unique<Worker>(w, snapshot, p.keys(), listeners->keys, listeners->release(w),
                                                 p.access_log.get(), p.tap.get(), *p.registry, *p.resilience));
  for (auto& w : p.workers) w->start_with_callback([&p] {
    p.finished.fetch_add(1);
    uv_async_send(&p.worker_done);
  });
  p.serving = true;

  p.events.set_path(policy_history_path(*policy, options.config_path));
  PolicyEvent startup;
  startup.version = 1;
  startup.time_ms = static_cast<int64_t>(p.loaded_at) * 1000;
  startup.trigger = "startup";
  startup.sha256 = policy->sha256;
  startup.outcome = "applied";
  startup.warnings = loaded.warnings;
  p.events.record(startup);
  p.init_reload();
  p.watch_identity(std::move(material_stamps));
  p.probes = std::make_unique<ClusterProbes>(p.loop);
  p.probes->start(policy);
  // Connections may take every descriptor but a reserve (see DescriptorBudget::init).
  DescriptorBudget::process().init(32);
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
