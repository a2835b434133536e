#pragma once
// The process: the main thread's loop, next to the workers' loops. It owns what outlives one
// policy (metrics, resilience state, the access-log writer, the policy history), answers the
// admin endpoints, reloads the policy, keeps the identity and the JWKS keys current, waits for
// the app's clusters at startup, and drains. Its parts, one file each:
//   server.cc           startup, signals, drain, exit
//   process_admin.cc    the admin endpoints' answers
//   process_reload.cc   policy reloads, and handing a new policy to the workers without waiting
//   process_keys.cc     the identity's TLS material (rotation) and the JWKS key sets
//   cluster_probes.cc   /ready waits for the clusters named in wait_for_clusters
//   file_watch.cc       how any of them notices that a file changed
//   listener_binding.cc the listening sockets, bound before anything switches
// Workers get what they read per request (the policy and the keys) as messages, never through a
// global: see Worker::reload and Worker::update_keys.

#include <uv.h>

#include <atomic>
#include <ctime>
#include <list>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "log/access_log.h"
#include "metrics/metrics.h"
#include "server/golden_signals.h"
#include "pilotfish/server.h"
#include "server/admin_server.h"
#include "server/cluster_probes.h"
#include "server/file_watch.h"
#include "server/listener_binding.h"
#include "server/policy_events.h"
#include "server/worker.h"
#include "upstream/resilience.h"

namespace pilotfish {

// policy_history.path, or the policy file's path + ".history.jsonl".
std::string policy_history_path(const Policy& p, const std::string& config_path);

struct Process final : AdminBackend {
  RunOptions options;
  uv_loop_t* loop = nullptr;
  PolicyPtr policy;   // running, with the addresses the listeners are bound to
  PolicyPtr loaded;   // running, as the loader read it (reload summaries compare these)
  std::map<std::string, SocketAddress> bound;  // bind_key -> bound address
  int version = 1;
  std::time_t loaded_at = 0;
  bool serving = false;  // every listener bound and every worker started
  bool draining = false;
  std::unique_ptr<MetricsRegistry> registry;
  std::unique_ptr<ResilienceRegistry> resilience;
  std::unique_ptr<AccessLogWriter> access_log;
  PolicyHistory events;
  std::unique_ptr<TapHub> tap;  // GET /tap's; outlives the workers and the admin servers (declared after)
  std::vector<std::unique_ptr<Worker>> workers;

  // ---- lifecycle (server.cc) -------------------------------------------------------------------
  uv_signal_t sigterm, sigint, sighup, sigusr1;
  uv_timer_t drain_timer, drain_delay_timer;
  uv_async_t worker_done;
  std::atomic<unsigned> finished{0};
  void begin_drain(const char* why);
  static void on_signal(uv_signal_t* s, int signum);
  static void on_drain_delay(uv_timer_t* t);
  static void on_drain_deadline(uv_timer_t* t);
  static void on_worker_done(uv_async_t* a);

  // ---- admin (process_admin.cc) ------------------------------------------------------------------
  std::unique_ptr<AdminServer> admin;
  std::unique_ptr<AdminServer> admin_read_only;  // admin.read_only_address, if set
  void close_admin();
  Answer metrics() override;
  Answer ready() override;
  Answer live() override;
  Answer config() override;
  Answer clusters() override;
  Answer history() override;
  Answer stats(bool table) override;
  TapHub* tap_hub() override { return tap.get(); }
  Answer status_page() override;
  // The workers' route counters, sampled once a second for /stats.
  GoldenSignals golden;
  uv_timer_t stats_timer;
  static void on_stats_timer(uv_timer_t* t);
  void reload(Reply reply) override;
  Answer drain() override;

  // ---- reload (process_reload.cc) ----------------------------------------------------------------
  // The policy file is watched (see FileWatch); a file that did not load is not read again until
  // it changes.
  std::unique_ptr<FileWatch> policy_watch;
  std::string rejected_sha256;
  // Starts the policy file's watch and what hand-offs need.
  void init_reload();
  // Loads the policy file and, when it loads and binds, switches to it. `reply` (may be null)
  // gets the answer: at once when nothing is handed to the workers, else once every worker has
  // switched (or 5 s have passed). The admin loop keeps serving meanwhile.
  void reload_policy(const char* trigger, bool quiet_if_unchanged, Reply reply);
  Answer reject(PolicyEvent& event, const std::string& what);
  // A new policy on its way to the workers.
  struct Handoff {
    size_t expected = 0;
    std::atomic<size_t> acks{0};  // counted on the workers' threads
    uint64_t deadline_ms = 0;
    int version = 0;
    std::function<void()> done;
  };
  std::list<std::shared_ptr<Handoff>> handoffs;
  uv_async_t handoff_ack;  // a worker switched
  uv_timer_t handoff_timer;
  void hand_to_workers(const PolicyPtr& snapshot, BoundListeners& listeners, std::function<void()> done);
  // Finishes the hand-offs every worker acknowledged, and (`all`, or past their deadline) the
  // others too.
  void finish_handoffs(bool all);
  static void on_handoff_ack(uv_async_t* a);
  static void on_handoff_timer(uv_timer_t* t);

  // ---- keys (process_keys.cc) --------------------------------------------------------------------
  // The material new handshakes use (made at startup, on a reload, and when the identity files
  // change) and the JWKS key sets by path. Connections keep the material they were made with.
  TlsMaterialPtr tls;
  std::shared_ptr<const JwksSet> jwks = std::make_shared<JwksSet>();
  WorkerKeys keys() const { return {tls, jwks}; }
  std::unique_ptr<FileWatch> identity_watch;  // the files `tls` was made from
  uv_timer_t identity_retry;
  std::string last_refusal;
  std::unique_ptr<FileWatch> jwks_watch;
  void init_keys();
  void close_keys();
  // cert_expiry_timestamp_seconds follows the material in use.
  void use_material(TlsMaterialPtr material);
  // The material for `identity`: the one in use when made from the same files as they are now
  // (a reload that keeps the identity keeps its resumable sessions), else a new one. `stamps`:
  // the files' stamps, read before the files are read.
  TlsMaterialPtr material_for(const Identity& identity, FileStamps* stamps, std::string* err);
  void watch_identity(FileStamps stamps);
  void rotate_identity(bool retry);
  // The JWKS files of `p`, with the keys `loaded` holds for them (the loader read them).
  void use_jwks(const Policy& p, const JwksSet& loaded);
  void jwks_files_changed();
  void send_keys();

  // ---- startup ordering (cluster_probes.cc) ------------------------------------------------------
  std::unique_ptr<ClusterProbes> probes;
};

}  // namespace pilotfish
