#include "server/cluster_probes.h"

#include <algorithm>

#include "log/logger.h"

namespace pilotfish {

ClusterProbes::ClusterProbes(uv_loop_t* loop) : loop_(loop), timer_(new uv_timer_t) {
  uv_timer_init(loop_, timer_);
  timer_->data = this;
}

ClusterProbes::~ClusterProbes() { close(); }

void ClusterProbes::start(PolicyPtr policy) {
  policy_ = std::move(policy);
  wait_for_ = policy_->wait_for_clusters;
  reachable_.assign(wait_for_.size(), false);
  if (wait_for_.empty() || !timer_) return;
  all_reachable_ = false;
  uv_timer_start(timer_, on_timer, 0, 250);
}

void ClusterProbes::policy_changed(PolicyPtr policy) {
  policy_ = std::move(policy);
  if (all_reachable_) return;
  std::vector<std::string> next = policy_->wait_for_clusters;
  std::vector<bool> next_reachable(next.size(), false);
  for (size_t i = 0; i < next.size(); ++i)
    for (size_t k = 0; k < wait_for_.size(); ++k)
      if (wait_for_[k] == next[i] && reachable_[k]) next_reachable[i] = true;
  // Probes in flight carry an index into the old list: they are closed, and tried again.
  for (Probe* probe : probes_) {
    probe->stale = true;
    close_probe(probe);
  }
  wait_for_ = std::move(next);
  reachable_ = std::move(next_reachable);
  check_all_reachable();
}

std::string ClusterProbes::waiting_for() const {
  std::string waiting;
  for (size_t i = 0; i < wait_for_.size(); ++i)
    if (!reachable_[i]) waiting += (waiting.empty() ? "" : ", ") + wait_for_[i];
  return waiting;
}

void ClusterProbes::check_all_reachable() {
  for (bool r : reachable_)
    if (!r) return;
  all_reachable_ = true;
  if (timer_) uv_timer_stop(timer_);
  if (!wait_for_.empty()) log_info("every cluster in wait_for_clusters is up: ready");
}

void ClusterProbes::on_timer(uv_timer_t* t) {
  auto* self = static_cast<ClusterProbes*>(t->data);
  uint64_t now = uv_now(self->loop_);
  // A probe that has not connected within a second is given up and tried again.
  for (Probe* probe : self->probes_)
    if (now - probe->started_ms > 1000) close_probe(probe);
  for (size_t i = 0; i < self->wait_for_.size(); ++i) {
    if (self->reachable_[i]) continue;
    bool in_flight = false;
    for (Probe* probe : self->probes_) in_flight |= !probe->stale && probe->cluster == i;
    if (in_flight) continue;
    const Cluster* c = self->policy_->find_cluster(self->wait_for_[i]);
    if (!c || c->endpoints.empty()) continue;
    auto* probe = new Probe{self, i, now, false, {}, {}};
    uv_tcp_init(self->loop_, &probe->tcp);
    probe->tcp.data = probe;
    probe->req.data = probe;
    const SocketAddress& ep = c->endpoints[self->random_.below(c->endpoints.size())];
    self->probes_.push_back(probe);
    if (uv_tcp_connect(&probe->req, &probe->tcp, ep.sa(), on_connect) != 0) close_probe(probe);
  }
}

void ClusterProbes::on_connect(uv_connect_t* req, int status) {
  auto* probe = static_cast<Probe*>(req->data);
  ClusterProbes* self = probe->owner;
  bool current = probe->cluster < self->reachable_.size() && !probe->stale;
  if (status == 0 && current && !self->reachable_[probe->cluster]) {
    self->reachable_[probe->cluster] = true;
    log_info("cluster " + self->wait_for_[probe->cluster] + " accepts connections");
    self->check_all_reachable();
  }
  close_probe(probe);
}

void ClusterProbes::close_probe(Probe* probe) {
  if (!uv_is_closing(reinterpret_cast<uv_handle_t*>(&probe->tcp)))
    uv_close(reinterpret_cast<uv_handle_t*>(&probe->tcp), on_probe_closed);
}

void ClusterProbes::on_probe_closed(uv_handle_t* h) {
  auto* probe = static_cast<Probe*>(h->data);
  auto& list = probe->owner->probes_;
  list.erase(std::find(list.begin(), list.end(), probe));
  delete probe;
}

void ClusterProbes::close() {
  if (!timer_) return;
  uv_close(reinterpret_cast<uv_handle_t*>(timer_), [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
  timer_ = nullptr;
  for (Probe* probe : probes_) close_probe(probe);
}

}  // namespace pilotfish
