#include "pilotfish/server.h"

#include <signal.h>
#include <unistd.h>
#include <uv.h>

#include <chrono>
#include <condition_variable>
#include <ctime>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "log/access_log.h"
#include "log/logger.h"
#include "metrics/metrics.h"
#include "net/descriptor_budget.h"
#include "net/listen_socket.h"
#include "pilotfish/policy_loader.h"
#include "policy/policy_diff.h"
#include "policy/policy_json.h"
#include "server/admin_server.h"
#include "server/policy_events.h"
#include "server/worker.h"
#include "gateway/jwt.h"
#include "tls/tls.h"
#include "upstream/resilience.h"

namespace pilotfish {

namespace {

LogLevel parse_level(const std::string& s, LogLevel fallback) {
  if (s == "debug") return LogLevel::debug;
  if (s == "info") return LogLevel::info;
  if (s == "warn") return LogLevel::warn;
  if (s == "error") return LogLevel::error;
  return fallback;
}

// The key under which a listener's bound sockets are kept across reloads: its address as
// written. Port 0 means "any port", so two such listeners are told apart by name.
std::string bind_key(const Listener& l) {
  return l.address.port() == 0 ? l.name + "@" + l.address.text : l.address.text;
}

// "listener web on 127.0.0.1:15000 (http, 2 routes)": logged as each listener is bound.
std::string listener_line(const Listener& l) {
  return "listener " + l.name + " on " + l.address.text + " (" + (l.protocol == Protocol::tcp ? "tcp" : "http") +
         ", " + std::to_string(l.routes.size()) + " route" + (l.routes.size() == 1 ? "" : "s") + ")";
}

void close_fds(std::vector<std::vector<int>>& fds) {
  for (auto& per_worker : fds)
    for (int& fd : per_worker)
      if (fd >= 0) {
        ::close(fd);
        fd = -1;
      }
}

std::string default_history_path(const Policy& p, const std::string& config_path) {
  if (p.history_path) return *p.history_path;
  return config_path + ".history.jsonl";
}

// A TCP connect to an endpoint of a cluster named in wait_for_clusters.
struct Probe {
  struct Process* process;
  size_t cluster;  // index into the wait list
  uint64_t started_ms;
  bool stale;      // the wait list changed since it started
  uv_tcp_t tcp;
  uv_connect_t req;
};

// The process's own loop: signals, reloads, the drain, word from finished workers, and the
// admin endpoints.
struct Process final : AdminBackend {
  RunOptions options;
  uv_loop_t* loop = nullptr;
  PolicyPtr policy;   // running, with the addresses the listeners are bound to
  PolicyPtr loaded;   // running, as the loader read it (reload summaries compare these)
  std::map<std::string, SocketAddress> bound;  // bind_key -> bound address
  int version = 1;
  std::unique_ptr<MetricsRegistry> registry;
  std::unique_ptr<ResilienceRegistry> resilience;
  std::unique_ptr<AdminServer> admin;
  std::unique_ptr<AdminServer> admin_read_only;  // admin.read_only_address, if set
  void close_admin() {
    admin->close();
    if (admin_read_only) admin_read_only->close();
  }
  std::time_t loaded_at = 0;
  bool serving = false;  // every listener bound and every worker started
  PolicyHistory events;
  std::unique_ptr<AccessLogWriter> access_log;
  std::vector<std::unique_ptr<Worker>> workers;
  uv_signal_t sigterm, sigint, sighup, sigusr1;
  uv_timer_t drain_timer, drain_delay_timer;
  uv_async_t worker_done;
  std::atomic<unsigned> finished{0};
  bool draining = false;

  // Reload on file change: the folder is watched (in-place writes and renames into place,
  // such as a ConfigMap's symlink swap), a stat poll backs it up, and bursts are debounced.
  bool watching = false;
  uv_fs_event_t dir_watch;
  uv_fs_poll_t file_poll;
  uv_timer_t debounce;
  // What the policy file looked like when last read: a folder event that did not change it
  // (a log file written next to it, our own history file) is not a reason to reload.
  struct Stamp {
    uint64_t ino = 0, size = 0, mtime_sec = 0, mtime_nsec = 0, ctime_sec = 0, ctime_nsec = 0;
    bool operator==(const Stamp&) const = default;
  };
  Stamp stamp;
  std::string rejected_sha256;  // the last file rejected: not re-read until it changes
  Stamp read_stamp() const { return stamp_of(options.config_path); }
  static Stamp stamp_of(const std::string& path) {
    uv_fs_t req;
    Stamp s;
    if (uv_fs_stat(nullptr, &req, path.c_str(), nullptr) == 0) {
      const uv_stat_t& st = req.statbuf;
      s = {st.st_ino, st.st_size, static_cast<uint64_t>(st.st_mtim.tv_sec), static_cast<uint64_t>(st.st_mtim.tv_nsec),
           static_cast<uint64_t>(st.st_ctim.tv_sec), static_cast<uint64_t>(st.st_ctim.tv_nsec)};
    }
    uv_fs_req_cleanup(&req);
    return s;
  }

  // Startup ordering: /ready waits for these clusters to accept connections.
  std::vector<std::string> wait_for;
  std::vector<bool> reachable;
  std::vector<Probe*> probes;
  uv_timer_t probe_timer;
  bool app_ready = true;

  // ---- admin ---------------------------------------------------------------------------------
  Answer metrics() override {
    for (const auto& c : policy->clusters) {
      auto shared = resilience->find_cluster(c.name);
      registry->set_endpoints_ejected(c.name, shared ? shared->ejected.load() : 0);
    }
    return {200, "text/plain; version=0.0.4; charset=utf-8", registry->render()};
  }
  Answer ready() override {
    if (draining) return {503, "text/plain", "draining\n"};
    if (!serving) return {503, "text/plain", "starting\n"};
    if (!app_ready) {
      std::string waiting;
      for (size_t i = 0; i < wait_for.size(); ++i)
        if (!reachable[i]) waiting += (waiting.empty() ? "" : ", ") + wait_for[i];
      return {503, "text/plain", "waiting for cluster " + waiting + " to accept connections\n"};
    }
    return {200, "text/plain", "ready\n"};
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
  // An admin answer written with the JSON writer, ending with a newline.
  template <typename Write>
  static Answer json_answer(int status, Write write) {
    Answer a{status, "application/json", {}};
    JsonWriter w(a.body);
    w.begin_object();
    write(w);
    w.end_object();
    a.body += '\n';
    return a;
  }
  Answer config() override {
    return json_answer(200, [&](JsonWriter& w) {
      w.key("version").integer(version).key("sha256").str(policy->sha256);
      w.key("loaded_at").str(iso_time(loaded_at)).key("source").str(policy->source_path);
      w.key("last_reload").raw(events.last_reload_json()).key("policy").raw(policy_to_json(*policy));
    });
  }
  Answer clusters() override {
    return json_answer(200, [&](JsonWriter& w) {
      w.key("clusters").begin_array();
      for (const auto& c : policy->clusters) {
        w.begin_object().key("name").str(c.name).key("endpoints").begin_array();
        for (const auto& endpoint : c.endpoints) {
          auto health = resilience->find_endpoint(c.name, endpoint.text);
          uint32_t state = health ? health->state.load() : EndpointHealth::ok;
          w.begin_object().key("address").str(endpoint.text);
          w.key("health").str(state == EndpointHealth::ok        ? "ok"
                              : state == EndpointHealth::ejected ? "ejected"
                                                                 : "probing");
          w.key("ejected_until");
          if (state == EndpointHealth::ok) w.null();
          else w.str(iso_time_ms(health->ejected_until_unix_ms.load()));
          w.key("ejections").integer(health ? health->ejections.load() : 0);
          w.key("consecutive_failures").integer(health ? health->consecutive_failures.load() : 0);
          w.end_object();
        }
        w.end_array();
        w.key("open_connections").integer(static_cast<int64_t>(registry->cluster_open_connections(c.name)));
        const CircuitBreakerLimits& b = c.circuit_breaker;
        w.key("circuit_breaker").begin_object();
        w.key("max_connections").integer(b.max_connections).key("max_pending_requests").integer(b.max_pending_requests);
        w.key("max_requests").integer(b.max_requests).key("max_retries").integer(b.max_retries);
        w.end_object();
        auto shared = resilience->find_cluster(c.name);
        auto count = [&](std::atomic<int64_t> ClusterShared::*field) {
          return shared ? (shared.get()->*field).load() : 0;
        };
        w.key("in_flight").begin_object();
        w.key("connections").integer(count(&ClusterShared::connections));
        w.key("pending_requests").integer(count(&ClusterShared::pending));
        w.key("requests").integer(count(&ClusterShared::requests)).key("retries").integer(count(&ClusterShared::retries));
        w.end_object();
        w.key("endpoints_ejected").integer(count(&ClusterShared::ejected));
        w.end_object();
      }
      w.end_array();
    });
  }
  Answer history() override { return {200, "application/json", events.to_json()}; }
  Answer reload() override { return reload_policy("admin", /*quiet_if_unchanged=*/false); }
  Answer drain() override {
    begin_drain("POST /drain");
    return json_answer(202, [](JsonWriter& w) { w.key("draining").boolean(true); });
  }

  // ---- JWKS files (auth) ----------------------------------------------------------------------
  // Polled every second: a changed file is loaded again; one that does not parse is refused and
  // the keys in use stay. The loader loaded every file the policy names when it read it.
  uv_timer_t jwks_timer;
  std::map<std::string, Stamp> jwks_stamps;
  void watch_jwks() {
    std::map<std::string, Stamp> next;
    for (const auto& l : policy->listeners) {
      if (l.auth) next[l.auth->jwks] = stamp_of(l.auth->jwks);
      for (const auto& r : l.routes)
        if (r.auth) next[r.auth->jwks] = stamp_of(r.auth->jwks);
    }
    jwks_stamps = std::move(next);
  }
  static void on_jwks_timer(uv_timer_t* t) {
    auto* p = static_cast<Process*>(t->data);
    for (auto& [path, stamp] : p->jwks_stamps) {
      Stamp now = stamp_of(path);
      if (now == stamp) continue;
      stamp = now;
      std::string err;
      std::vector<std::string> skipped;
      if (JwksRegistry::instance().load(path, &err, &skipped)) {
        log_info("jwks " + path + " reloaded: new requests are checked against its keys");
        for (const auto& w : skipped) log_warn("jwks " + path + ": " + w);
      } else
        log_error("jwks " + path + " changed but is refused: " + err + "; the keys in use stay");
    }
  }

  // ---- workload identity -------------------------------------------------------------------------
  // The material new handshakes use: made at startup, on a reload, and when the identity files
  // change (a rotation). Connections keep the material they were made with.
  TlsMaterialPtr tls;

  // cert_expiry_timestamp_seconds follows the material in use.
  void publish_identity() {
    registry->clear_cert_expiry();
    if (!tls) return;
    registry->set_cert_expiry("identity", static_cast<double>(tls->cert_not_after()));
    registry->set_cert_expiry("ca", static_cast<double>(tls->ca_not_after()));
  }
  void use_material(TlsMaterialPtr material) {
    tls = std::move(material);
    tls_publish(tls);
    publish_identity();
  }

  // Rotation: the cert, key and CA files are polled (stat, every second) and their folders
  // watched, so an in-place write and a Kubernetes secret's symlink swap are both seen; bursts
  // (a cert written before its key) are debounced, and files that do not make a usable identity
  // are refused with the current material kept, until they change again.
  std::vector<uv_handle_t*> identity_handles;
  uv_timer_t identity_debounce;
  uv_timer_t identity_retry;
  std::vector<Stamp> identity_stamps;  // of the files the material in use (or refused) was made from
  std::string last_refusal;
  static std::vector<Stamp> stamps_of(const Identity* identity) {
    std::vector<Stamp> out;
    if (!identity) return out;
    for (const std::string* path : {&identity->cert, &identity->key, &identity->ca}) out.push_back(stamp_of(*path));
    return out;
  }
  std::vector<Stamp> read_identity_stamps() const {
    return stamps_of(policy->identity ? &*policy->identity : nullptr);
  }
  // The material for `identity`: the one in use when it was made from the same files as they
  // are now (a reload that keeps the identity keeps its resumable sessions), else a new one.
  // `stamps` is set to the files' stamps read before they were read for the material, so a
  // change while it is made is seen by the watch.
  TlsMaterialPtr material_for(const Identity& identity, std::vector<Stamp>* stamps, std::string* err) {
    *stamps = stamps_of(&identity);
    if (tls && tls->identity().cert == identity.cert && tls->identity().key == identity.key &&
        tls->identity().ca == identity.ca && *stamps == identity_stamps)
      return tls;
    return TlsMaterial::build(identity, err);
  }
  // `stamps`: those of the files the material in use was made from.
  void start_identity_watch(std::vector<Stamp> stamps) {
    stop_identity_watch();
    identity_stamps = std::move(stamps);
    uv_timer_stop(&identity_retry);
    if (!policy->identity) return;
    std::set<std::string> dirs;
    for (const std::string* path : {&policy->identity->cert, &policy->identity->key, &policy->identity->ca}) {
      std::string dir = std::filesystem::path(*path).parent_path().string();
      dirs.insert(dir.empty() ? "." : dir);
      auto* poll = new uv_fs_poll_t;
      uv_fs_poll_init(loop, poll);
      poll->data = this;
      uv_fs_poll_start(poll, on_identity_poll, path->c_str(), 1000);
      identity_handles.push_back(reinterpret_cast<uv_handle_t*>(poll));
    }
    for (const std::string& dir : dirs) {
      auto* event = new uv_fs_event_t;
      uv_fs_event_init(loop, event);
      event->data = this;
      identity_handles.push_back(reinterpret_cast<uv_handle_t*>(event));
      int rc = uv_fs_event_start(event, on_identity_dir, dir.c_str(), 0);
      if (rc != 0) log_warn("identity watch: cannot watch " + dir + ": " + uv_strerror(rc) + "; polling every second");
    }
    identity_maybe_changed();  // a change while the material was being made
  }
  void stop_identity_watch() {
    for (uv_handle_t* h : identity_handles)
      uv_close(h, [](uv_handle_t* handle) {
        if (uv_handle_get_type(handle) == UV_FS_POLL) delete reinterpret_cast<uv_fs_poll_t*>(handle);
        else delete reinterpret_cast<uv_fs_event_t*>(handle);
      });
    identity_handles.clear();
  }
  void identity_maybe_changed() {
    if (draining || read_identity_stamps() == identity_stamps) return;
    uv_timer_start(&identity_debounce, on_identity_debounce, 150, 0);
  }
  static void on_identity_poll(uv_fs_poll_t* h, int, const uv_stat_t*, const uv_stat_t*) {
    static_cast<Process*>(h->data)->identity_maybe_changed();
  }
  static void on_identity_dir(uv_fs_event_t* h, const char*, int, int status) {
    if (status == 0) static_cast<Process*>(h->data)->identity_maybe_changed();
  }
  static void on_identity_debounce(uv_timer_t* t) { static_cast<Process*>(t->data)->rotate_identity(false); }
  static void on_identity_retry(uv_timer_t* t) { static_cast<Process*>(t->data)->rotate_identity(true); }
  // `retry`: the files did not change since they were refused, but what refused them may have
  // (a certificate not valid yet, a CA bundle that arrives later): tried again every 5 s.
  void rotate_identity(bool retry) {
    std::vector<Stamp> now = read_identity_stamps();
    if ((!retry && now == identity_stamps) || !policy->identity || draining) return;
    identity_stamps = now;
    std::string err;
    TlsMaterialPtr next = TlsMaterial::build(*policy->identity, &err);
    if (!next) {
      // Said once per reason; the retries that fail the same way are quiet.
      if (!retry || err != last_refusal) {
        registry->process().identity_rotations_rejected.add();
        log_error("identity files changed but are refused: " + err + "; new handshakes keep using " +
                  (tls ? tls->spiffe_id() + " (certificate valid until " + iso_time(tls->cert_not_after()) + ")"
                       : std::string("no identity")));
      }
      last_refusal = err;
      uv_timer_start(&identity_retry, on_identity_retry, 5000, 0);
      return;
    }
    last_refusal.clear();
    uv_timer_stop(&identity_retry);
    std::string before = tls ? tls->spiffe_id() : std::string("none");
    use_material(next);
    registry->process().identity_rotations_applied.add();
    log_info("identity rotated: " + next->spiffe_id() + (before != next->spiffe_id() ? " (was " + before + ")" : "") +
             ", certificate valid until " + iso_time(next->cert_not_after()) +
             "; new handshakes use it, open connections continue");
  }

  // ---- reload --------------------------------------------------------------------------------
  Answer reload_policy(const char* trigger, bool quiet_if_unchanged) {
    if (draining) {
      log_warn(std::string("policy reload (") + trigger + ") ignored: draining");
      return json_answer(503, [&](JsonWriter& w) { w.key("outcome").str("draining").key("version").integer(version); });
    }
    stamp = read_stamp();
    PolicyLoadResult result = load_policy_file(options.config_path);
    if (quiet_if_unchanged && result.sha256 == rejected_sha256) return {};
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
      return reject(event, "policy " + options.config_path + " did not load");
    }
    event.sha256 = result.policy->sha256;
    if (event.sha256 == loaded->sha256) {
      std::string msg = std::string("policy reload (") + trigger + "): unchanged (sha256 " + event.sha256.substr(0, 12) + ")";
      if (quiet_if_unchanged) log_debug(msg);
      else log_info(msg);
      return json_answer(200, [&](JsonWriter& w) {
        w.key("outcome").str("unchanged").key("version").integer(version).key("sha256").str(event.sha256);
      });
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
    // worker's count, before anything is switched: a port that cannot be bound rejects the
    // whole policy and the running one stays.
    size_t n = workers.size();
    std::vector<std::vector<int>> fds(n, std::vector<int>(next.listeners.size(), -1));
    std::vector<std::string> keys;
    std::map<std::string, SocketAddress> next_bound;
    for (Listener& l : next.listeners) {
      keys.push_back(bind_key(l));
      auto found = bound.find(keys.back());
      if (found != bound.end()) {
        l.address = found->second;
        next_bound[keys.back()] = found->second;
      }
    }
    std::vector<std::string> opened;
    for (size_t i = 0; i < next.listeners.size(); ++i) {
      Listener& l = next.listeners[i];
      if (next_bound.count(keys[i])) continue;
      // SO_REUSEPORT would let a second socket onto a port a kept listener holds (one whose
      // port 0 was resolved to it): that is a clash, not a new listener.
      for (size_t k = 0; k < next.listeners.size(); ++k) {
        if (k == i || !next_bound.count(keys[k]) || next.listeners[k].address.text != l.address.text) continue;
        close_fds(fds);
        event.errors.push_back(options.config_path + ": listener " + l.name + ": " + l.address.text +
                               " is already the address of listener " + next.listeners[k].name);
        return reject(event, "policy " + options.config_path + " rejected");
      }
      SocketAddress address = l.address;
      for (size_t w = 0; w < n; ++w) {
        std::string err;
        int fd = open_listen_socket(address, &err);
        if (fd < 0) {
          close_fds(fds);
          event.errors.push_back(options.config_path + ": listener " + l.name + ": " + err);
          return reject(event, "policy " + options.config_path + " rejected");
        }
        if (w == 0) address = bound_address(fd);
        fds[w][i] = fd;
      }
      l.address = address;
      next_bound[keys[i]] = address;
      opened.push_back(listener_line(l));
    }

    // The identity is made before anything switches: a listener that turns mtls on must find
    // it on its first connection.
    TlsMaterialPtr material;
    std::vector<Stamp> material_stamps;
    if (next.identity) {
      std::string err;
      material = material_for(*next.identity, &material_stamps, &err);
      if (!material) {
        close_fds(fds);
        event.errors.push_back(options.config_path + ": identity: " + err);
        return reject(event, "policy " + options.config_path + " rejected");
      }
    }
    use_material(material);

    PolicyDiff diff = diff_policies(*loaded, *result.policy);
    auto snapshot = std::make_shared<const Policy>(std::move(next));
    hand_to_workers(snapshot, keys, fds);
    for (const auto& line : opened) log_info(line);

    policy = snapshot;
    loaded = std::make_shared<const Policy>(*result.policy);
    rejected_sha256.clear();
    resilience->keep_only(*policy);
    if (!app_ready) update_wait_list();
    bound = std::move(next_bound);
    ++version;
    loaded_at = event.time_ms / 1000;
    set_log_level(policy->log_level);
    registry->set_policy_info(version, policy->sha256);
    registry->process().policy_reloads_applied.add();
    start_identity_watch(std::move(material_stamps));
    watch_jwks();
    events.set_path(default_history_path(*policy, options.config_path));
    event.version = version;
    event.outcome = "applied";
    event.changes_json = diff_to_json(diff);
    events.record(event);
    std::string summary = diff_to_text(diff);
    for (char& c : summary)
      if (c == '\n') c = ';';
    log_info(std::string("policy reload (") + trigger + "): applied version " + std::to_string(version) + ", sha256 " +
             event.sha256.substr(0, 12) + ": " + summary);
    return json_answer(200, [&](JsonWriter& w) {
      w.key("outcome").str("applied").key("version").integer(version).key("sha256").str(event.sha256);
      w.key("changes").raw(event.changes_json);
    });
  }

  Answer reject(PolicyEvent& event, const std::string& what) {
    for (const auto& e : event.errors) log_error(e);
    log_error(what + " (" + event.trigger + "); the running policy (version " + std::to_string(version) + ") stays");
    event.outcome = "rejected";
    registry->process().policy_reloads_rejected.add();
    events.record(event);
    return json_answer(422, [&](JsonWriter& w) {
      w.key("outcome").str("rejected").key("version").integer(version).key("errors").strings(event.errors);
    });
  }

  // Gives every worker the new snapshot and waits (bounded) until each has switched, so that
  // whoever asked for the reload sees it in effect on the next request.
  void hand_to_workers(const PolicyPtr& snapshot, const std::vector<std::string>& keys,
                       std::vector<std::vector<int>>& fds) {
    struct Acks {
      std::mutex mutex;
      std::condition_variable cv;
      size_t count = 0;
    };
    auto acks = std::make_shared<Acks>();
    for (size_t w = 0; w < workers.size(); ++w) {
      workers[w]->reload(snapshot, keys, fds[w], [acks] {
        std::lock_guard<std::mutex> lock(acks->mutex);
        ++acks->count;
        acks->cv.notify_all();
      });
    }
    std::unique_lock<std::mutex> lock(acks->mutex);
    if (!acks->cv.wait_for(lock, std::chrono::seconds(5), [&] { return acks->count == workers.size(); }))
      log_warn("policy reload: a worker took more than 5 s to switch; it switches when its loop turns");
  }

  // ---- file watch ------------------------------------------------------------------------------
  void start_watch() {
    std::filesystem::path path(options.config_path);
    std::string dir = path.parent_path().string();
    if (dir.empty()) dir = ".";
    stamp = read_stamp();
    uv_timer_init(loop, &debounce);
    debounce.data = this;
    uv_fs_event_init(loop, &dir_watch);
    dir_watch.data = this;
    int rc = uv_fs_event_start(&dir_watch, on_dir_event, dir.c_str(), 0);
    if (rc != 0) log_warn("policy watch: cannot watch " + dir + ": " + uv_strerror(rc) + "; polling every 2 s instead");
    uv_fs_poll_init(loop, &file_poll);
    file_poll.data = this;
    uv_fs_poll_start(&file_poll, on_poll, options.config_path.c_str(), 2000);
    watching = true;
  }
  void stop_watch() {
    if (!watching) return;
    watching = false;
    uv_close(reinterpret_cast<uv_handle_t*>(&dir_watch), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&file_poll), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&debounce), nullptr);
  }
  void schedule_reload() {
    // Editors and ConfigMap updates write in bursts: reload once they are quiet.
    if (watching && !draining && policy->watch) uv_timer_start(&debounce, on_debounce, 150, 0);
  }
  static void on_dir_event(uv_fs_event_t* h, const char*, int, int status) {
    auto* p = static_cast<Process*>(h->data);
    if (status < 0 || p->read_stamp() == p->stamp) return;
    p->schedule_reload();
  }
  static void on_poll(uv_fs_poll_t* h, int status, const uv_stat_t*, const uv_stat_t*) {
    auto* p = static_cast<Process*>(h->data);
    if (status == 0 && p->read_stamp() != p->stamp) p->schedule_reload();
  }
  static void on_debounce(uv_timer_t* t) {
    auto* p = static_cast<Process*>(t->data);
    p->reload_policy("file", /*quiet_if_unchanged=*/true);
  }

  // ---- startup ordering ------------------------------------------------------------------------
  void start_probes() {
    uv_timer_init(loop, &probe_timer);
    probe_timer.data = this;
    wait_for = policy->wait_for_clusters;
    reachable.assign(wait_for.size(), false);
    if (wait_for.empty()) return;
    app_ready = false;
    uv_timer_start(&probe_timer, on_probe_timer, 0, 250);
  }
  // A reload before the app came up: the clusters to wait for are the new policy's; one that
  // was reached stays reached, one no longer listed is no longer waited for.
  void update_wait_list() {
    std::vector<std::string> next = policy->wait_for_clusters;
    std::vector<bool> next_reachable(next.size(), false);
    for (size_t i = 0; i < next.size(); ++i)
      for (size_t k = 0; k < wait_for.size(); ++k)
        if (wait_for[k] == next[i] && reachable[k]) next_reachable[i] = true;
    // Probes in flight carry an index into the old list: they are closed, and tried again.
    for (Probe* probe : probes) {
      probe->stale = true;
      close_probe(probe);
    }
    wait_for = std::move(next);
    reachable = std::move(next_reachable);
    check_all_reachable();
  }
  void check_all_reachable() {
    for (bool r : reachable)
      if (!r) return;
    app_ready = true;
    uv_timer_stop(&probe_timer);
    if (!wait_for.empty()) log_info("every cluster in wait_for_clusters is up: ready");
  }
  static void on_probe_timer(uv_timer_t* t) {
    auto* p = static_cast<Process*>(t->data);
    uint64_t now = uv_now(p->loop);
    // A probe that has not connected within a second is given up and tried again.
    for (Probe* probe : p->probes)
      if (now - probe->started_ms > 1000) close_probe(probe);
    for (size_t i = 0; i < p->wait_for.size(); ++i) {
      if (p->reachable[i]) continue;
      bool in_flight = false;
      for (Probe* probe : p->probes) in_flight |= !probe->stale && probe->cluster == i;
      if (in_flight) continue;
      const Cluster* c = p->policy->find_cluster(p->wait_for[i]);
      if (!c || c->endpoints.empty()) continue;
      auto* probe = new Probe{p, i, now, false, {}, {}};
      uv_tcp_init(p->loop, &probe->tcp);
      probe->tcp.data = probe;
      probe->req.data = probe;
      const SocketAddress& ep = c->endpoints[p->random.below(c->endpoints.size())];
      p->probes.push_back(probe);
      if (uv_tcp_connect(&probe->req, &probe->tcp, ep.sa(), on_probe_connect) != 0) close_probe(probe);
    }
  }
  static void on_probe_connect(uv_connect_t* req, int status) {
    auto* probe = static_cast<Probe*>(req->data);
    Process* p = probe->process;
    bool current = probe->cluster < p->reachable.size() && !probe->stale;
    if (status == 0 && current && !p->reachable[probe->cluster]) {
      p->reachable[probe->cluster] = true;
      log_info("cluster " + p->wait_for[probe->cluster] + " accepts connections");
      p->check_all_reachable();
    }
    close_probe(probe);
  }
  static void close_probe(Probe* probe) {
    if (!uv_is_closing(reinterpret_cast<uv_handle_t*>(&probe->tcp)))
      uv_close(reinterpret_cast<uv_handle_t*>(&probe->tcp), on_probe_closed);
  }
  static void on_probe_closed(uv_handle_t* h) {
    auto* probe = static_cast<Probe*>(h->data);
    auto& list = probe->process->probes;
    list.erase(std::find(list.begin(), list.end(), probe));
    delete probe;
  }
  FastRandom random;

  // ---- drain -----------------------------------------------------------------------------------
  void begin_drain(const char* why) {
    if (draining) return;
    draining = true;
    uint64_t delay = static_cast<uint64_t>(policy->drain_delay.count());
    log_info(std::string("draining (") + why + "), up to " + format_duration(policy->drain_timeout) +
             (delay ? ", listeners accept for " + format_duration(policy->drain_delay) + " more" : std::string()));
    for (auto& w : workers) w->begin_drain(/*stop_accepting=*/delay == 0);
    if (delay) uv_timer_start(&drain_delay_timer, on_drain_delay, delay, 0);
    uv_timer_start(&drain_timer, on_drain_deadline, static_cast<uint64_t>(policy->drain_timeout.count()), 0);
  }
  static void on_drain_delay(uv_timer_t* t) {
    auto* p = static_cast<Process*>(t->data);
    log_info("drain delay over: listeners stop accepting");
    for (auto& w : p->workers) w->stop_accepting();
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
      case SIGHUP: p->reload_policy("sighup", /*quiet_if_unchanged=*/false); break;
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
    for (uv_signal_t* s : {&p->sigterm, &p->sigint, &p->sighup, &p->sigusr1})
      uv_close(reinterpret_cast<uv_handle_t*>(s), nullptr);
    for (uv_timer_t* t : {&p->drain_timer, &p->drain_delay_timer, &p->probe_timer, &p->identity_debounce, &p->identity_retry, &p->jwks_timer})
      uv_close(reinterpret_cast<uv_handle_t*>(t), nullptr);
    for (Probe* probe : p->probes) close_probe(probe);
    p->stop_watch();
    p->stop_identity_watch();
    uv_close(reinterpret_cast<uv_handle_t*>(&p->worker_done), nullptr);
    p->close_admin();
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
  p.options = options;
  p.loaded = std::make_shared<const Policy>(*loaded.policy);
  p.loop = uv_default_loop();
  p.loaded_at = std::time(nullptr);
  p.registry = std::make_unique<MetricsRegistry>(policy->workers);
  p.resilience = std::make_unique<ResilienceRegistry>(policy->workers);
  p.registry->set_policy_info(1, policy->sha256);
  p.policy = policy;
  std::string err;
  std::vector<Process::Stamp> material_stamps;
  if (policy->identity) {
    TlsMaterialPtr material = p.material_for(*policy->identity, &material_stamps, &err);
    if (!material) {
      log_error("identity: " + err + "; not starting");
      return 1;
    }
    p.use_material(material);
    log_info("identity " + material->spiffe_id() + ", certificate valid until " + iso_time(material->cert_not_after()));
  }
  p.access_log = std::make_unique<AccessLogWriter>(policy->access_log);
  if (!p.access_log->open(&err)) {
    log_error(err);
    return 1;
  }
  // The admin listener comes first: /ready answers 503 until every listener is bound.
  p.admin = std::make_unique<AdminServer>(p.loop, p);
  if (policy->admin_read_only_address)
    p.admin_read_only = std::make_unique<AdminServer>(p.loop, p, /*read_only=*/true);
  if (!p.admin->listen(policy->admin_address, &err) ||
      (p.admin_read_only && !p.admin_read_only->listen(*policy->admin_read_only_address, &err))) {
    log_error("admin: " + err);
    p.close_admin();
    uv_run(p.loop, UV_RUN_NOWAIT);
    return 1;
  }
  log_info("admin on " + p.admin->address().text);
  if (p.admin_read_only) log_info("read-only admin (/metrics /ready /live) on " + p.admin_read_only->address().text);

  // Bind every listener once per worker before any worker starts, so a port that cannot be
  // bound stops the start cleanly. Port 0 is resolved by the first bind and reused after.
  unsigned n = policy->workers;
  std::vector<std::vector<int>> fds(n);
  std::vector<std::string> keys;
  for (auto& l : policy->listeners) {
    std::string key = bind_key(l);
    keys.push_back(key);
    SocketAddress address = l.address;
    for (unsigned w = 0; w < n; ++w) {
      int fd = open_listen_socket(address, &err);
      if (fd < 0) {
        log_error("listener " + l.name + ": " + err);
        for (auto& v : fds)
          for (int f : v) ::close(f);
        p.close_admin();
        uv_run(p.loop, UV_RUN_NOWAIT);
        return 1;
      }
      if (w == 0) address = bound_address(fd);
      fds[w].push_back(fd);
    }
    l.address = address;
    p.bound[key] = address;
    log_info(listener_line(l));
  }
  p.policy = policy;

  for (uv_signal_t* s : {&p.sigterm, &p.sigint, &p.sighup, &p.sigusr1}) {
    uv_signal_init(p.loop, s);
    s->data = &p;
  }
  uv_signal_start(&p.sigterm, Process::on_signal, SIGTERM);
  uv_signal_start(&p.sigint, Process::on_signal, SIGINT);
  uv_signal_start(&p.sighup, Process::on_signal, SIGHUP);
  uv_signal_start(&p.sigusr1, Process::on_signal, SIGUSR1);
  for (uv_timer_t* t : {&p.drain_timer, &p.drain_delay_timer}) {
    uv_timer_init(p.loop, t);
    t->data = &p;
  }
  uv_async_init(p.loop, &p.worker_done, Process::on_worker_done);
  p.worker_done.data = &p;

  PolicyPtr snapshot = policy;
  for (unsigned w = 0; w < n; ++w)
    p.workers.push_back(std::make_unique<Worker>(w, snapshot, keys, fds[w], p.access_log.get(), *p.registry,
                                                      *p.resilience));
  for (auto& w : p.workers) w->start_with_callback([&p] {
    p.finished.fetch_add(1);
    uv_async_send(&p.worker_done);
  });
  p.serving = true;

  p.events.set_path(default_history_path(*policy, options.config_path));
  PolicyEvent startup;
  startup.version = 1;
  startup.time_ms = static_cast<int64_t>(p.loaded_at) * 1000;
  startup.trigger = "startup";
  startup.sha256 = policy->sha256;
  startup.outcome = "applied";
  startup.warnings = loaded.warnings;
  p.events.record(startup);
  p.start_watch();
  for (uv_timer_t* t : {&p.identity_debounce, &p.identity_retry}) {
    uv_timer_init(p.loop, t);
    t->data = &p;
  }
  p.start_identity_watch(std::move(material_stamps));
  uv_timer_init(p.loop, &p.jwks_timer);
  p.jwks_timer.data = &p;
  p.watch_jwks();
  uv_timer_start(&p.jwks_timer, Process::on_jwks_timer, 1000, 1000);
  p.start_probes();
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
