#include "server/worker.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include <map>
#include <set>

#include "proxy/http_session.h"
#include "log/logger.h"
#include "net/descriptor_budget.h"
#include "proxy/intercept.h"
#include "net/stream.h"
#include "proxy/tcp_proxy.h"
#include "pilotfish/route_matcher.h"

namespace pilotfish {

namespace {

// One limiter per limit, shared by every worker: keyed by where it is and what it says, so a
// reload that keeps a limit keeps its buckets and one that changes it starts afresh.
std::shared_ptr<RateLimiter> shared_limiter(const std::string& where, const RateLimitPolicy& p) {
  static std::mutex mutex;
  static std::map<std::string, std::weak_ptr<RateLimiter>> limiters;
  std::string key = where + "|" + std::to_string(p.rate) + "|" + std::to_string(p.burst) + "|" +
                    std::to_string(static_cast<int>(p.key)) + "|" + p.header;
  std::lock_guard<std::mutex> lock(mutex);
  std::erase_if(limiters, [](const auto& e) { return e.second.expired(); });
  auto& slot = limiters[key];
  auto limiter = slot.lock();
  if (!limiter) {
    limiter = std::make_shared<RateLimiter>(p.rate, p.burst);
    slot = limiter;
  }
  return limiter;
}

// A client accepted past the descriptor budget, or with no descriptor to spare: told `503
// overloaded` (HTTP listeners without TLS; others cannot be answered without a handshake) in
// one non-blocking write into the fresh socket's buffer, then closed at once, so that refusing
// a flood of clients holds no descriptor longer than it takes to refuse one.
class RefusedConnection final : public Stream {
 public:
  explicit RefusedConnection(EventLoop& loop) : Stream(loop) {}
  void refuse(bool answer) {
    static constexpr std::string_view kAnswer =
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 15\r\n"
        "x-pilotfish-error: overloaded\r\nx-pilotfish-overloaded: true\r\nconnection: close\r\n\r\n"
        "503 overloaded\n";
    if (answer) {
      uv_buf_t b = uv_buf_init(const_cast<char*>(kAnswer.data()), static_cast<unsigned>(kAnswer.size()));
      uv_try_write(stream(), &b, 1);
    }
    close();  // uv_close closes the socket now; only the memory waits for the callback
  }

 protected:
  void on_data(char*, size_t) override {}
  void on_read_end(int) override {}
};

}  // namespace

RouteStats& WorkerSnapshot::route(size_t listener, size_t route, size_t cluster) {
  std::vector<std::shared_ptr<RouteStats>>& table = route_stats[listener];
  size_t columns = policy->clusters.size() + 1;
  size_t slot = (route == SIZE_MAX ? 0 : route + 1) * columns + (cluster == SIZE_MAX ? columns - 1 : cluster);
  if (table[slot] == nullptr) {
    const Listener& l = policy->listeners[listener];
    table[slot] = listener_stats[listener]->route(route == SIZE_MAX ? std::string() : l.routes[route].name,
                                                  cluster == SIZE_MAX ? std::string() : policy->clusters[cluster].name);
  }
  return *table[slot];
}

Worker::Worker(unsigned index, PolicyPtr policy, WorkerKeys keys, std::vector<std::string> listen_keys,
               std::vector<int> listen_fds, AccessLogWriter* access_log, TapHub* tap, MetricsRegistry& metrics,
               ResilienceRegistry& resilience)
    : WorkerContext(&loop_, index), metrics_(metrics), resilience_(resilience) {
  tap_ = tap;
  uv_loop_init(&loop_);
  loop_.data = this;
  uv_async_init(&loop_, &async_, on_async);
  async_.data = this;
  access_log_.init(&loop_, access_log);
  uv_timer_init(&loop_, &heartbeat_);
  heartbeat_.data = this;
  heartbeat_ms_.store(uv_now(&loop_), std::memory_order_relaxed);
  snapshot_ = build_snapshot(std::move(policy), std::move(keys));
  // Listen now, on the constructing thread, so that connections queue in the backlog from the
  // moment the process says it is ready, before this worker's loop runs.
  for (size_t i = 0; i < snapshot_->policy->listeners.size(); ++i) open_listener(i, listen_keys[i], listen_fds[i]);
}

Worker::~Worker() {
  // The loop has ended with every handle closed (see close_everything); a handle still open
  // here is a leak worth a loud line.
  if (uv_loop_close(&loop_) != 0) log_error("worker " + std::to_string(index_) + ": loop closed with handles still open");
}

SnapshotPtr Worker::build_snapshot(PolicyPtr policy, WorkerKeys keys) {
  auto next = std::make_shared<WorkerSnapshot>();
  next->keys = std::move(keys);
  WorkerStats& stats = metrics_.bind_worker(index_, *policy);
  for (const auto& l : policy->listeners) next->listener_stats.push_back(stats.listeners.at(l.name));
  for (const auto& l : policy->listeners)
    next->route_stats.emplace_back((l.routes.size() + 1) * (policy->clusters.size() + 1));

  // What the current snapshot has, by cluster name and by (cluster, endpoint).
  std::map<std::string, std::shared_ptr<ClusterState>> old_clusters;
  std::map<std::pair<std::string, std::string>, std::shared_ptr<EndpointPool>> old_pools;
  if (snapshot_) {
    for (const auto& cs : snapshot_->clusters) {
      old_clusters[cs->name] = cs;
      for (const auto& pool : cs->pools) old_pools[{cs->name, pool->address().text}] = pool;
    }
  }
  std::set<EndpointPool*> kept;
  for (const Cluster& c : policy->clusters) {
    std::shared_ptr<ClusterState> cs;
    auto found = old_clusters.find(c.name);
    if (found != old_clusters.end() && found->second->lb == c.lb && found->second->endpoints == c.endpoints &&
        found->second->mtls == c.mtls && found->second->protocol == c.protocol) {
      cs = found->second;  // same endpoints: balancer and pools carry over as they are
    } else {
      cs = std::make_shared<ClusterState>();
      cs->name = c.name;
      cs->endpoints = c.endpoints;
      cs->lb = c.lb;
      cs->mtls = c.mtls;
      cs->protocol = c.protocol;
      cs->stats = stats.clusters.at(c.name);
      cs->shared = resilience_.cluster(c.name);
      for (const auto& ep : c.endpoints) cs->health.push_back(resilience_.endpoint(c.name, ep.text));
      cs->balancer = std::make_unique<Balancer>(c.lb, c.endpoints.size(), &random_);
      bool same_tls = found != old_clusters.end() && found->second->mtls == c.mtls &&
                      found->second->protocol == c.protocol;
      for (const auto& ep : c.endpoints) {
        auto pool = old_pools.find({c.name, ep.text});
        if (pool != old_pools.end() && same_tls)
          cs->pools.push_back(pool->second);  // an endpoint that stays keeps its connections
        else
          cs->pools.push_back(std::make_shared<EndpointPool>(*this, ep, c, cs->stats, cs->shared));
      }
    }
    for (const auto& pool : cs->pools) {
      pool->configure(c);
      kept.insert(pool.get());
    }
    next->clusters.push_back(std::move(cs));
  }
  // Endpoints that left the policy: their idle connections close now, busy ones when released.
  for (const auto& [key, pool] : old_pools)
    if (!kept.count(pool.get())) pool->retire();
  for (const auto& l : policy->listeners) {
    next->listener_limiters.push_back(l.rate_limit ? shared_limiter(l.name, *l.rate_limit) : nullptr);
    auto& row = next->route_limiters.emplace_back();
    for (size_t r = 0; r < l.routes.size(); ++r)
      // By what the route matches, not by its place in the list: a reload that reorders routes
      // moves each route's buckets with it.
      row.push_back(l.routes[r].rate_limit
                        ? shared_limiter(l.name + " route " + describe_match(l.routes[r].match), *l.routes[r].rate_limit)
                        : nullptr);
  }
  next->policy = std::move(policy);
  return next;
}

void Worker::open_listener(size_t index, const std::string& key, int fd) {
  const Listener& l = snapshot_->policy->listeners[index];
  auto* h = new ListenHandle();
  h->worker = this;
  h->slot = std::make_shared<ListenerSlot>();
  h->slot->index = index;
  h->slot->protocol = l.protocol;
  h->slot->intercept = l.intercept;
  h->key = key;
  uv_tcp_init(&loop_, &h->tcp);
  h->tcp.data = h;
  // Set once here, Nagle's algorithm stays off for every connection accepted from this socket:
  // Linux copies TCP_NODELAY from the listening socket to each accepted one, which saves a
  // setsockopt per connection.
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  uv_tcp_open(&h->tcp, fd);
  int rc = uv_listen(reinterpret_cast<uv_stream_t*>(&h->tcp), 1024, on_connection);
  if (rc != 0) log_error("worker " + std::to_string(index_) + ": listen on " + l.name + ": " + uv_strerror(rc));
  listeners_.push_back(h);
}

void Worker::close_listener(ListenHandle* h) {
  h->slot->index = SIZE_MAX;
  uv_close(reinterpret_cast<uv_handle_t*>(&h->tcp), [](uv_handle_t* handle) {
    delete static_cast<ListenHandle*>(handle->data);
  });
}

void Worker::start_with_callback(std::function<void()> done) {
  done_ = std::move(done);
  thread_ = std::thread([this] {
    // "pf-worker-3" in top -H, perf and /proc/PID/task/*/comm (at most 15 characters).
    std::string name = "pf-worker-" + std::to_string(index_ % 100000);
    pthread_setname_np(pthread_self(), name.c_str());
    run();
    finished_.store(true, std::memory_order_release);
    if (done_) done_();
  });
}

void Worker::join() {
  if (thread_.joinable()) thread_.join();
}

void Worker::run() {
  uv_timer_start(&heartbeat_, on_heartbeat, 1000, 1000);
  uv_run(&loop_, UV_RUN_DEFAULT);
}

void Worker::on_heartbeat(uv_timer_t* t) {
  auto* w = static_cast<Worker*>(t->data);
  w->heartbeat_ms_.store(uv_now(&w->loop_), std::memory_order_relaxed);
  w->for_each_stream([](Stream* s) { s->release_idle_memory(); });
  for (auto& spare : w->spare_exchanges()) static_cast<Exchange&>(*spare).forget_snapshot();
}

void Worker::on_connection(uv_stream_t* server, int status) {
  auto* h = static_cast<ListenHandle*>(server->data);
  Worker* w = h->worker;
  DescriptorBudget& budget = DescriptorBudget::process();
  if (status == UV_EMFILE || status == UV_ENFILE) {
    // The kernel had no descriptor for a client waiting in the backlog, although the budget
    // leaves a reserve: something else holds them (see EventLoop::release_spare_descriptor).
    budget.count_refused_accept();
    w->release_spare_descriptor();
    return;
  }
  bool spare = w->reopen_spare_descriptor();
  if (status < 0 || w->stopping_ || h->slot->index == SIZE_MAX) return;
  if (!spare || !budget.try_take_downstream()) {
    budget.count_refused_accept();
    auto* refused = new RefusedConnection(*w);
    if (uv_accept(server, refused->stream()) != 0) {
      refused->close();
      return;
    }
    const Listener* l = h->slot->index < w->snapshot_->policy->listeners.size()
                            ? &w->snapshot_->policy->listeners[h->slot->index] : nullptr;
    w->log_refusal(l ? l->name : std::string("(removed)"));
    refused->refuse(l && l->protocol == Protocol::http && !l->mtls && h->slot->intercept == Intercept::none);
    w->reopen_spare_descriptor();
    return;
  }
  Stream* s;
  if (h->slot->intercept != Intercept::none)
    s = new InterceptSession(*w, h->slot);
  else if (h->slot->protocol == Protocol::tcp)
    s = new TcpProxySession(*w, h->slot);
  else
    s = new HttpSession(*w, h->slot);
  s->hold_descriptor(Stream::Descriptor::downstream);  // given back when the stream is gone
  if (uv_accept(server, s->stream()) != 0) {
    s->close();
    return;
  }
  if (h->slot->intercept != Intercept::none)
    static_cast<InterceptSession*>(s)->start();
  else if (h->slot->protocol == Protocol::tcp)
    static_cast<TcpProxySession*>(s)->start();
  else
    static_cast<HttpSession*>(s)->start();
}

bool Worker::close_idle_upstream() {
  if (!snapshot_) return false;
  for (const auto& cluster : snapshot_->clusters)
    for (const auto& pool : cluster->pools)
      if (pool->close_oldest_idle()) return true;
  return false;
}

void Worker::log_refusal(const std::string& listener) {
  // One line a second at most: a flood of refusals must not become a flood of log lines.
  uint64_t now = uv_now(&loop_);
  if (now - last_refusal_log_ms_ < 1000 && last_refusal_log_ms_ != 0) return;
  last_refusal_log_ms_ = now;
  log_warn("listener " + listener + ": out of file descriptors (" + std::to_string(DescriptorBudget::process().in_use()) +
           " of " + std::to_string(DescriptorBudget::process().limit()) +
           " in use by connections): new connections are answered 503 overloaded and closed");
}

void Worker::remove_downstream() {
  if (downstream_count_) --downstream_count_;
  if (draining_) maybe_finish_drain();
}

void Worker::post(Command command) {
  {
    std::lock_guard<std::mutex> lock(command_mutex_);
    if (!async_closed_) {
      commands_.push_back(std::move(command));
      uv_async_send(&async_);
      return;
    }
  }
  // The loop has ended (or is ending): nothing will take the command.
  for (int fd : command.fds)
    if (fd >= 0) ::close(fd);
  if (command.done) command.done();
}

void Worker::begin_drain(bool stop_accepting) {
  post({Command::drain});
  if (stop_accepting) post({Command::stop_accepting});
}

void Worker::force_stop() { post({Command::force_stop}); }

void Worker::reload(PolicyPtr policy, WorkerKeys keys, std::vector<std::string> listen_keys, std::vector<int> new_fds,
                    std::function<void()> done) {
  post({Command::reload, std::move(policy), std::move(keys), std::move(listen_keys), std::move(new_fds),
        std::move(done)});
}

void Worker::on_async(uv_async_t* a) {
  auto* w = static_cast<Worker*>(a->data);
  std::vector<Command> commands;
  {
    std::lock_guard<std::mutex> lock(w->command_mutex_);
    commands.swap(w->commands_);
  }
  for (Command& c : commands) {
    switch (c.kind) {
      case Command::force_stop:
        w->draining_ = true;
        w->close_everything();
        break;
      case Command::drain:
        if (w->draining_) break;
        w->draining_ = true;
        // Idle connections close now; busy ones after their response (drain() decides).
        w->for_each_stream([](Stream* s) { s->drain(); });
        break;
      case Command::stop_accepting:
        w->accepting_stopped_ = true;
        // The local app's outbound traffic keeps working until the process ends.
        w->stop_listening(/*keep_outbound=*/true);
        w->maybe_finish_drain();
        break;
      case Command::reload:
        w->apply_reload(c);
        break;
      case Command::keys:
        // The same policy with other keys: connections and requests that start next use them.
        if (w->snapshot_) {
          auto next = std::make_shared<WorkerSnapshot>(*w->snapshot_);
          next->keys = std::move(c.new_keys);
          w->snapshot_ = std::move(next);
        }
        break;
    }
  }
}

void Worker::apply_reload(Command& command) {
  if (stopping_) {
    for (int fd : command.fds)
      if (fd >= 0) ::close(fd);
    if (command.done) command.done();
    return;
  }
  snapshot_ = build_snapshot(std::move(command.policy), std::move(command.new_keys));
  const Policy& p = *snapshot_->policy;
  std::map<std::string, ListenHandle*> by_key;
  for (ListenHandle* h : listeners_) by_key[h->key] = h;
  std::vector<ListenHandle*> live;
  std::vector<size_t> to_open;
  for (size_t i = 0; i < p.listeners.size(); ++i) {
    const Listener& l = p.listeners[i];
    if (i < command.fds.size() && command.fds[i] >= 0) {
      to_open.push_back(i);
      continue;
    }
    auto found = by_key.find(command.listen_keys[i]);
    if (found == by_key.end()) {
      // Only after a drain stopped this worker's listeners (reloads are refused while draining).
      if (!accepting_stopped_) log_error("worker " + std::to_string(index_) + ": no socket for listener " + l.name);
      continue;
    }
    ListenHandle* h = found->second;
    by_key.erase(found);
    // The socket and its connections stay; new connections get the new listener.
    h->slot->index = i;
    h->slot->protocol = l.protocol;
    h->slot->intercept = l.intercept;
    live.push_back(h);
  }
  for (auto& [key, h] : by_key) close_listener(h);
  listeners_ = std::move(live);
  for (size_t i : to_open) {
    if (draining_ && accepting_stopped_ && p.listeners[i].intercept != Intercept::outbound) {
      ::close(command.fds[i]);
      continue;
    }
    open_listener(i, command.listen_keys[i], command.fds[i]);
  }
  // Connections of a removed listener finish their request and close.
  for_each_stream([](Stream* s) { s->on_policy_changed(); });
  if (command.done) command.done();
}

void Worker::stop_listening(bool keep_outbound) {
  std::vector<ListenHandle*> live;
  for (ListenHandle* h : listeners_) {
    if (keep_outbound && h->slot->intercept == Intercept::outbound)
      live.push_back(h);
    else
      close_listener(h);
  }
  listeners_ = std::move(live);
}

void Worker::maybe_finish_drain() {
  if (!draining_ || !accepting_stopped_ || stopping_ || downstream_count_ != 0) return;
  close_everything();
}

void Worker::close_everything() {
  if (stopping_) return;
  stopping_ = true;
  stop_listening(/*keep_outbound=*/false);
  for_each_stream([](Stream* s) { s->close(); });
  // The snapshot (and with it the pools) goes once the last connection has let go of it; spare
  // exchanges hold it too.
  spare_exchanges_.clear();
  snapshot_.reset();
  access_log_.close();
  close_deferred();
  uv_close(reinterpret_cast<uv_handle_t*>(&heartbeat_), nullptr);
  std::vector<Command> left;
  {
    std::lock_guard<std::mutex> lock(command_mutex_);
    async_closed_ = true;
    left.swap(commands_);
  }
  for (Command& c : left) {
    for (int fd : c.fds)
      if (fd >= 0) ::close(fd);
    if (c.done) c.done();
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&async_), nullptr);
}

}  // namespace pilotfish
