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
