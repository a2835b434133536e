#include "net/event_loop.h"

#include <fcntl.h>
#include <unistd.h>

namespace pilotfish {

void EventLoop::release_spare_descriptor() {
  if (spare_fd_ >= 0) ::close(spare_fd_);
  spare_fd_ = -1;
}

bool EventLoop::reopen_spare_descriptor() {
  if (spare_fd_ < 0) spare_fd_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  return spare_fd_ >= 0;
}

WriteRequest* EventLoop::take_write_request() {
  if (free_writes_.empty()) return new WriteRequest;
  WriteRequest* w = free_writes_.back().release();
  free_writes_.pop_back();
  return w;
}

void EventLoop::give_write_request(WriteRequest* w) {
  constexpr size_t kKeep = 16;
  constexpr size_t kMaxCapacity = 512 * 1024;
  w->owner = nullptr;
  w->data.clear();
  if (free_writes_.size() >= kKeep) {
    delete w;
    return;
  }
  if (w->data.capacity() > kMaxCapacity) w->data.shrink_to_fit();
  free_writes_.emplace_back(w);
}

void EventLoop::defer(Deferred& d) {
  if (d.queued_ || deferral_closed_) return;
  if (!deferral_open_) {
    uv_check_init(loop_, &check_);
    uv_idle_init(loop_, &idle_);
    check_.data = this;
    deferral_open_ = true;
  }
  if (deferred_.empty()) {
    uv_check_start(&check_, on_check);
    uv_idle_start(&idle_, [](uv_idle_t*) {});
  }
  d.queued_ = true;
  deferred_.push_back(&d);
}

void EventLoop::cancel(Deferred& d) {
  if (!d.queued_) return;
  d.queued_ = false;
  for (Deferred*& q : deferred_)
    if (q == &d) q = nullptr;
  for (Deferred*& q : running_)
    if (q == &d) q = nullptr;
}

void EventLoop::on_check(uv_check_t* handle) {
  auto* self = static_cast<EventLoop*>(handle->data);
  self->running_.swap(self->deferred_);
  // What runs may queue again (itself or another): that waits for the next turn.
  for (size_t i = 0; i < self->running_.size(); ++i) {
    Deferred* d = self->running_[i];
    if (d == nullptr) continue;
    d->queued_ = false;
    self->running_[i] = nullptr;
    d->run_deferred();
  }
  self->running_.clear();
  if (self->deferred_.empty()) {
    uv_check_stop(&self->check_);
    uv_idle_stop(&self->idle_);
  }
}

void EventLoop::close_deferred() {
  deferral_closed_ = true;
  for (Deferred* d : deferred_)
    if (d) d->queued_ = false;
  deferred_.clear();
  if (!deferral_open_) return;
  deferral_open_ = false;
  uv_close(reinterpret_cast<uv_handle_t*>(&check_), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&idle_), nullptr);
}

void EventLoop::link_stream(Stream* s) {
  s->list_next = streams_;
  s->list_prev = nullptr;
  if (streams_) streams_->list_prev = s;
  streams_ = s;
}

void EventLoop::unlink_stream(Stream* s) {
  if (s->list_prev)
    s->list_prev->list_next = s->list_next;
  else
    streams_ = s->list_next;
  if (s->list_next) s->list_next->list_prev = s->list_prev;
}

}  // namespace pilotfish
