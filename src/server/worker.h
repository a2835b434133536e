#pragma once
// One worker: one thread, one uv_loop_t, its own listening sockets (SO_REUSEPORT), its own
// snapshot of the policy and its own upstream pools. Nothing on the request path is shared with
// another worker, so nothing on it takes a lock.
//
// A policy reload hands every worker a new Policy, and with it the keys the process holds (the
// identity's TLS material and the JWKS key sets); a rotation or a changed JWKS file hands new
// keys alone. Nothing a request reads comes from a process-wide global. The worker builds a WorkerSnapshot from it on
// its own thread: cluster states (balancer, pools) whose endpoints did not change are carried
// over, so pooled connections survive; listening sockets whose address did not change are kept,
// so their connections survive. A connection holds the snapshot its request started with and
// takes the worker's current one at the start of its next request.

#include <uv.h>

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "log/access_log.h"
#include "metrics/metrics.h"
#include "pilotfish/policy.h"
#include "proxy/worker_context.h"
#include "upstream/resilience.h"

namespace pilotfish {

class Worker final : public WorkerContext {
 public:
  // `listen_fds[i]` is this worker's bound socket for policy->listeners[i], kept under `keys[i]`.
  Worker(unsigned index, PolicyPtr policy, WorkerKeys keys, std::vector<std::string> listen_keys,
         std::vector<int> listen_fds, AccessLogWriter* access_log, TapHub* tap, MetricsRegistry& metrics,
         ResilienceRegistry& resilience);
  ~Worker();

  // Runs the loop on a new thread; `done` is called on that thread when the loop has ended.
  void start_with_callback(std::function<void()> done);
  void join();
  // Thread-safe: answer with `connection: close`, close idle connections; with
  // `stop_accepting`, also stop accepting (except on outbound intercept listeners). The loop
  // ends once accepting has stopped and no downstream connection is left.
  void begin_drain(bool stop_accepting);
  // Thread-safe: the drain delay is over; stop accepting (outbound intercept listeners go on).
  void stop_accepting() { post({Command::stop_accepting}); }
  // Thread-safe: close every connection now and end the loop.
  void force_stop();
  // Thread-safe: switch to `policy`. `keys[i]` names listener i's socket across reloads (its
  // address as written); `new_fds[i]` is a freshly bound socket for it, or -1 where the worker
  // keeps the socket it has under that key. `done` runs once the new snapshot is in place (on
  // the worker's thread, or at once if the worker has ended).
  void reload(PolicyPtr policy, WorkerKeys keys, std::vector<std::string> listen_keys, std::vector<int> new_fds,
              std::function<void()> done);
  // Thread-safe: new TLS material or JWKS keys, for the connections and requests that start next.
  void update_keys(WorkerKeys keys) { post({Command::keys, nullptr, std::move(keys)}); }

  // Closes one idle upstream connection of this worker (the oldest of the first pool that has
  // one), so that its descriptor can serve a connection a request needs; false if none is idle.
  bool close_idle_upstream() override;
  // Milliseconds (steady clock) of this worker's last heartbeat: /live checks the loops answer.
  uint64_t heartbeat_ms() const { return heartbeat_ms_.load(std::memory_order_relaxed); }
  bool finished() const { return finished_.load(std::memory_order_acquire); }

  // A downstream connection finished a request or closed: may end a drain.
  void maybe_finish_drain();
  void remove_downstream() override;

 private:
  void log_refusal(const std::string& listener);
  struct ListenHandle {
    Worker* worker;
    std::shared_ptr<ListenerSlot> slot;
    std::string key;  // the listener's address as written (see Worker::reload)
    uv_tcp_t tcp;
  };
  struct Command {
    enum Kind { drain, stop_accepting, force_stop, reload, keys } kind;
    PolicyPtr policy = nullptr;
    WorkerKeys new_keys = {};
    std::vector<std::string> listen_keys = {};
    std::vector<int> fds = {};
    std::function<void()> done = nullptr;
  };
  static void on_connection(uv_stream_t* server, int status);
  static void on_async(uv_async_t* a);
  static void on_heartbeat(uv_timer_t* t);
  void post(Command command);
  void run();
  SnapshotPtr build_snapshot(PolicyPtr policy, WorkerKeys keys);
  void apply_reload(Command& command);
  void open_listener(size_t index, const std::string& key, int fd);
  void close_listener(ListenHandle* h);
  void stop_listening(bool keep_outbound);
  void close_everything();

  MetricsRegistry& metrics_;
  ResilienceRegistry& resilience_;
  uv_loop_t loop_;
  uv_async_t async_;
  std::mutex command_mutex_;
  std::vector<Command> commands_;
  bool async_closed_ = false;  // under command_mutex_: commands are no longer taken
  std::vector<ListenHandle*> listeners_;
  uv_timer_t heartbeat_;
  std::atomic<uint64_t> heartbeat_ms_{0};
  std::atomic<bool> finished_{false};
  bool accepting_stopped_ = false;
  bool stopping_ = false;
  uint64_t last_refusal_log_ms_ = 0;
  std::thread thread_;
  std::function<void()> done_;
};

}  // namespace pilotfish
