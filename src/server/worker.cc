#include "server/worker.h"

#include <unistd.h>

#include "http/http_session.h"
#include "log/logger.h"
#include "net/stream.h"
#include "net/tcp_proxy.h"

namespace pilotfish {

Worker::Worker(unsigned index, PolicyPtr policy, std::vector<int> listen_fds, AccessLogWriter* access_log,
               MetricsRegistry& metrics)
    : EventLoop(&loop_), index_(index), policy_(std::move(policy)), listen_fds_(std::move(listen_fds)) {
  uv_loop_init(&loop_);
  loop_.data = this;
  uv_async_init(&loop_, &async_, on_async);
  async_.data = this;
  access_log_.init(&loop_, access_log);
  uv_timer_init(&loop_, &heartbeat_);
  heartbeat_.data = this;
  heartbeat_ms_.store(uv_now(&loop_), std::memory_order_relaxed);
  WorkerStats& stats = metrics.bind_worker(index, *policy_);
  for (const auto& l : policy_->listeners) listener_stats_.push_back(stats.listeners.at(l.name));
  route_stats_.assign(policy_->listeners.size(), std::vector<RouteStats*>(policy_->clusters.size() + 1, nullptr));
  clusters_.resize(policy_->clusters.size());
  for (size_t i = 0; i < policy_->clusters.size(); ++i) {
    const Cluster& c = policy_->clusters[i];
    ClusterState& cs = clusters_[i];
    cs.config = &c;
    cs.stats = stats.clusters.at(c.name);
    cs.balancer = std::make_unique<Balancer>(c.lb, c.endpoints.size(), &random_);
    for (const auto& ep : c.endpoints)
      cs.pools.push_back(std::make_unique<EndpointPool>(*this, ep, c, cs.stats.get()));
  }
  for (size_t i = 0; i < policy_->listeners.size(); ++i) {
    auto h = std::make_unique<ListenerHandle>();
    h->worker = this;
    h->config = &policy_->listeners[i];
    h->index = i;
    uv_tcp_init(&loop_, &h->tcp);
    h->tcp.data = h.get();
    uv_tcp_open(&h->tcp, listen_fds_[i]);
    // Listen now, on the constructing thread, so that connections queue in the backlog from
    // the moment the process says it is ready, before this worker's loop runs.
    int rc = uv_listen(reinterpret_cast<uv_stream_t*>(&h->tcp), 1024, on_connection);
    if (rc != 0) log_error("worker " + std::to_string(index_) + ": listen on " + h->config->name + ": " + uv_strerror(rc));
    listeners_.push_back(std::move(h));
  }
}

Worker::~Worker() {
  // The loop has ended with every handle closed (see close_everything); a handle still open
  // here is a leak worth a loud line.
  if (uv_loop_close(&loop_) != 0) log_error("worker " + std::to_string(index_) + ": loop closed with handles still open");
}

void Worker::start_with_callback(std::function<void()> done) {
  done_ = std::move(done);
  thread_ = std::thread([this] {
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
}

RouteStats& Worker::route_stats(size_t listener, size_t cluster) {
  std::vector<RouteStats*>& row = route_stats_[listener];
  size_t slot = cluster == SIZE_MAX ? row.size() - 1 : cluster;
  if (row[slot] == nullptr)
    row[slot] = listener_stats_[listener]->route(cluster == SIZE_MAX ? std::string() : policy_->clusters[cluster].name);
  return *row[slot];
}

void Worker::on_connection(uv_stream_t* server, int status) {
  auto* h = static_cast<ListenerHandle*>(server->data);
  Worker* w = h->worker;
  if (status < 0 || w->draining_) return;
  Stream* s;
  if (h->config->protocol == Protocol::tcp)
    s = new TcpProxySession(*w, *h->config, h->index, w->policy_);
  else
    s = new HttpSession(*w, *h->config, h->index, w->policy_);
  if (uv_accept(server, s->stream()) != 0) {
    s->close();
    return;
  }
  if (h->config->protocol == Protocol::tcp)
    static_cast<TcpProxySession*>(s)->start();
  else
    static_cast<HttpSession*>(s)->start();
}

void Worker::remove_downstream() {
  if (downstream_count_) --downstream_count_;
  if (draining_) maybe_finish_drain();
}

void Worker::begin_drain() {
  int expected = 0;
  command_.compare_exchange_strong(expected, 1);
  uv_async_send(&async_);
}

void Worker::force_stop() {
  command_.store(2);
  uv_async_send(&async_);
}

void Worker::on_async(uv_async_t* a) {
  auto* w = static_cast<Worker*>(a->data);
  int cmd = w->command_.load();
  if (cmd == 2) {
    w->draining_ = true;
    w->close_everything();
    return;
  }
  if (cmd == 1 && !w->draining_) {
    w->draining_ = true;
    w->stop_listening();
    // Idle connections close now; busy ones after their response (drain() decides).
    w->for_each_stream([](Stream* s) { s->drain(); });
    w->maybe_finish_drain();
  }
}

void Worker::stop_listening() {
  for (auto& l : listeners_) {
    if (!uv_is_closing(reinterpret_cast<uv_handle_t*>(&l->tcp)))
      uv_close(reinterpret_cast<uv_handle_t*>(&l->tcp), nullptr);
  }
}

void Worker::maybe_finish_drain() {
  if (!draining_ || stopping_ || downstream_count_ != 0) return;
  close_everything();
}

void Worker::close_everything() {
  if (stopping_) return;
  stopping_ = true;
  stop_listening();
  for_each_stream([](Stream* s) { s->close(); });
  for (auto& c : clusters_) c.pools.clear();
  access_log_.close();
  uv_close(reinterpret_cast<uv_handle_t*>(&heartbeat_), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&async_), nullptr);
}

}  // namespace pilotfish
