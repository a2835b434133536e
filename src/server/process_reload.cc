// Policy reloads: on a change of the policy file, SIGHUP or POST /reload. A new policy is read,
// checked, bound (new listening sockets) and given its identity before anything switches; then
// every worker gets it as a message and switches on its own thread. Whoever asked is answered
// once every worker has switched, so the next request sees the new policy; the admin loop does
// not wait for that and keeps answering /live, /ready and /metrics meanwhile.
#include <thread>

#include "json/json_writer.h"
#include "log/logger.h"
#include "pilotfish/policy_loader.h"
#include "policy/policy_diff.h"
#include "server/process.h"

namespace pilotfish {

namespace {

constexpr uint64_t kHandoffWarnMs = 5000;

}  // namespace

std::string policy_history_path(const Policy& p, const std::string& config_path) {
  if (p.history_path) return *p.history_path;
  return config_path + ".history.jsonl";
}

void Process::init_reload() {
  policy_watch = std::make_unique<FileWatch>(loop, "policy", 2000, [this] {
    if (!draining && policy->watch) reload_policy("file", /*quiet_if_unchanged=*/true, nullptr);
  });
  policy_watch->watch({options.config_path}, stamps_of({options.config_path}));
  uv_async_init(loop, &handoff_ack, on_handoff_ack);
  handoff_ack.data = this;
  uv_timer_init(loop, &handoff_timer);
  handoff_timer.data = this;
}

void Process::reload_policy(const char* trigger, bool quiet_if_unchanged, Reply reply) {
  auto answer = [&reply](Answer a) {
    if (reply) reply(std::move(a));
  };
  if (draining) {
    log_warn(std::string("policy reload (") + trigger + ") ignored: draining");
    return answer(json_answer(503, [&](JsonWriter& w) { w.key("outcome").str("draining").key("version").integer(version); }));
  }
  policy_watch->seen(policy_watch->read());
  PolicyLoadResult result = load_policy_file(options.config_path);
  if (quiet_if_unchanged && result.sha256 == rejected_sha256) return;
  PolicyEvent event;
  event.version = version;
  event.time_ms = unix_time_ms();
  event.trigger = trigger;
  if (!result.ok()) {
    for (const auto& e : result.errors) event.errors.push_back(e.to_string());
    event.sha256 = result.sha256;
    // The watch leaves this content alone until it changes (a bind failure is not the
    // content's fault, so only a file that does not load is remembered).
    rejected_sha256 = result.sha256;
    return answer(reject(event, "policy " + options.config_path + " did not load"));
  }
  event.sha256 = result.policy->sha256;
  if (event.sha256 == loaded->sha256) {
    std::string msg = std::string("policy reload (") + trigger + "): unchanged (sha256 " + event.sha256.substr(0, 12) + ")";
    if (quiet_if_unchanged) log_debug(msg);
    else log_info(msg);
    return answer(json_answer(200, [&](JsonWriter& w) {
      w.key("outcome").str("unchanged").key("version").integer(version).key("sha256").str(event.sha256);
    }));
  }
  for (const auto& w : result.warnings) {
    log_warn(options.config_path + ": " + w);
    event.warnings.push_back(w);
  }

  Policy next = *result.policy;
  // What a running process cannot change: kept as it is, and said.
  auto keep = [&](bool changed, const std::string& what) {
    if (!changed) return;
    std::string note = what + " changes need a restart; the running value stays";
    log_warn("policy reload: " + note);
    event.warnings.push_back(note);
  };
  unsigned wanted_workers = next.workers == 0 ? std::max(1u, std::thread::hardware_concurrency()) : next.workers;
  keep(options.workers_override <= 0 && wanted_workers != policy->workers, "workers");
  next.workers = policy->workers;
  keep(next.admin_address.text != loaded->admin_address.text, "admin.address");
  next.admin_address = policy->admin_address;
  auto text_of = [](const std::optional<SocketAddress>& a) { return a ? a->text : std::string(); };
  keep(text_of(next.admin_read_only_address) != text_of(loaded->admin_read_only_address), "admin.read_only_address");
  next.admin_read_only_address = policy->admin_read_only_address;
  keep(next.access_log.target != loaded->access_log.target || next.access_log.path != loaded->access_log.path,
       "access_log");
  next.access_log = policy->access_log;
  if (!options.log_level_override.empty()) next.log_level = policy->log_level;

  // Listeners at an address already bound keep their sockets; others are bound now, by every
  // worker's count, before anything is switched: a port that cannot be bound rejects the whole
  // policy and the running one stays.
  std::string err;
  std::optional<BoundListeners> listeners = bind_listeners(next.listeners, workers.size(), bound, &err);
  if (!listeners) {
    event.errors.push_back(options.config_path + ": " + err);
    return answer(reject(event, "policy " + options.config_path + " rejected"));
  }

  // The identity is made before anything switches: a listener that turns mtls on must find it
  // on its first connection.
  TlsMaterialPtr material;
  FileStamps material_stamps;
  if (next.identity) {
    material = material_for(*next.identity, &material_stamps, &err);
    if (!material) {
      event.errors.push_back(options.config_path + ": identity: " + err);
      return answer(reject(event, "policy " + options.config_path + " rejected"));
    }
  }
  use_material(material);
  use_jwks(next, result.jwks);

  PolicyDiff diff = diff_policies(*loaded, *result.policy);
  auto snapshot = std::make_shared<const Policy>(std::move(next));
  policy = snapshot;
  loaded = result.policy;
  rejected_sha256.clear();
  resilience->keep_only(*policy);
  probes->policy_changed(policy);
  bound = listeners->bound;
  ++version;
  loaded_at = event.time_ms / 1000;
  set_log_level(policy->log_level);
  registry->set_policy_info(version, policy->sha256);
  registry->process().policy_reloads_applied.add();
  watch_identity(std::move(material_stamps));
  events.set_path(policy_history_path(*policy, options.config_path));
  event.version = version;
  event.outcome = "applied";
  event.changes_json = diff_to_json(diff);
  events.record(event);
  std::string summary = diff_to_text(diff);
  for (char& c : summary)
    if (c == '\n') c = ';';
  for (const auto& line : listeners->opened) log_info(line);
  log_info(std::string("policy reload (") + trigger + "): applied version " + std::to_string(version) + ", sha256 " +
           event.sha256.substr(0, 12) + ": " + summary);
  Answer applied = json_answer(200, [&](JsonWriter& w) {
    w.key("outcome").str("applied").key("version").integer(version).key("sha256").str(event.sha256);
    w.key("changes").raw(event.changes_json);
  });
  hand_to_workers(snapshot, *listeners, [reply = std::move(reply), applied = std::move(applied)] {
    if (reply) reply(applied);
  });
}

AdminBackend::Answer Process::reject(PolicyEvent& event, const std::string& what) {
  for (const auto& e : event.errors) log_error(e);
  log_error(what + " (" + event.trigger + "); the running policy (version " + std::to_string(version) + ") stays");
  event.outcome = "rejected";
  registry->process().policy_reloads_rejected.add();
  events.record(event);
  return json_answer(422, [&](JsonWriter& w) {
    w.key("outcome").str("rejected").key("version").integer(version).key("errors").strings(event.errors);
  });
}

// Every worker gets the snapshot as a message; each acknowledges on its own thread, which wakes
// this loop. Workers take messages in order, so a second reload handed over before the first
// is acknowledged simply follows it.
void Process::hand_to_workers(const PolicyPtr& snapshot, BoundListeners& listeners, std::function<void()> done) {
  auto handoff = std::make_shared<Handoff>();
  handoff->expected = workers.size();
  handoff->version = version;
  handoff->done = std::move(done);
  uv_update_time(loop);
  handoff->deadline_ms = uv_now(loop) + kHandoffWarnMs;
  handoffs.push_back(handoff);
  for (size_t w = 0; w < workers.size(); ++w) {
    workers[w]->reload(snapshot, keys(), listeners.keys, listeners.release(w), [this, handoff] {
      handoff->acks.fetch_add(1, std::memory_order_acq_rel);
      uv_async_send(&handoff_ack);
    });
  }
  finish_handoffs(false);
}

void Process::finish_handoffs(bool all) {
  uint64_t now = uv_now(loop);
  for (auto it = handoffs.begin(); it != handoffs.end();) {
    Handoff& h = **it;
    bool acked = h.acks.load(std::memory_order_acquire) == h.expected;
    if (!acked && !all && now < h.deadline_ms) {
      ++it;
      continue;
    }
    if (!acked)
      log_warn("policy reload: a worker took more than 5 s to switch to version " + std::to_string(h.version) +
               "; it switches when its loop turns");
    auto done = std::move(h.done);
    it = handoffs.erase(it);
    if (done) done();
  }
  if (handoffs.empty()) {
    uv_timer_stop(&handoff_timer);
    return;
  }
  uint64_t next = handoffs.front()->deadline_ms;
  for (const auto& h : handoffs) next = std::min(next, h->deadline_ms);
  uv_timer_start(&handoff_timer, on_handoff_timer, next > now ? next - now : 0, 0);
}

void Process::on_handoff_ack(uv_async_t* a) { static_cast<Process*>(a->data)->finish_handoffs(false); }

void Process::on_handoff_timer(uv_timer_t* t) {
  auto* p = static_cast<Process*>(t->data);
  uv_update_time(p->loop);
  p->finish_handoffs(false);
}

}  // namespace pilotfish
