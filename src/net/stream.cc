#include "net/stream.h"

#include <cstdlib>

#include "net/event_loop.h"

namespace pilotfish {

namespace {
constexpr uint64_t kLingerMs = 2000;
}  // namespace

Stream::Stream(EventLoop& event_loop) : event_loop_(event_loop) {
  uv_tcp_init(event_loop.loop(), &tcp_);
  uv_timer_init(event_loop.loop(), &timer_);
  tcp_.data = this;
  timer_.data = this;
  event_loop.link_stream(this);
}

Stream::~Stream() { event_loop_.unlink_stream(this); }

void Stream::alloc_cb(uv_handle_t* handle, size_t, uv_buf_t* buf) {
  auto* self = static_cast<Stream*>(handle->data);
  *buf = self->event_loop_.read_buffer();
}

void Stream::read_cb(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) {
  auto* self = static_cast<Stream*>(s->data);
  if (nread == 0) return;
  if (self->lingering_) {
    if (nread < 0) self->close();
    return;  // discard: nothing more is parsed after an error
  }
  if (nread < 0) {
    self->stop_read();
    self->on_read_end(static_cast<int>(nread));
    return;
  }
  self->on_data(buf->base, static_cast<size_t>(nread));
}

void Stream::start_read() {
  if (reading_ || closing_) return;
  if (uv_read_start(stream(), alloc_cb, read_cb) == 0) reading_ = true;
}

void Stream::stop_read() {
  if (!reading_) return;
  uv_read_stop(stream());
  reading_ = false;
}

size_t Stream::pending_bytes() const {
  return out_.size() + uv_stream_get_write_queue_size(reinterpret_cast<const uv_stream_t*>(&tcp_));
}

int Stream::flush() {
  if (closing_ || out_.empty()) {
    maybe_finish_flush();
    return 0;
  }
  if (uv_stream_get_write_queue_size(stream()) == 0) {
    // Most writes fit in the socket buffer: try it now and skip the request allocation.
    uv_buf_t b = uv_buf_init(out_.data(), static_cast<unsigned>(out_.size()));
    int n = uv_try_write(stream(), &b, 1);
    if (n == static_cast<int>(out_.size())) {
      out_.clear();
      maybe_finish_flush();
      return 0;
    }
    if (n < 0 && n != UV_EAGAIN) {
      out_.clear();
      return n;
    }
    if (n > 0) out_.erase(0, static_cast<size_t>(n));
  }
  // The request's buffer comes from the loop's free list, so its capacity serves again
  // (here as out_'s next buffer, after the swap) instead of a malloc and free per write.
  WriteRequest* w = event_loop_.take_write_request();
  w->owner = this;
  w->data.swap(out_);
  w->req.data = w;
  uv_buf_t b = uv_buf_init(w->data.data(), static_cast<unsigned>(w->data.size()));
  int rc = uv_write(&w->req, stream(), &b, 1, write_cb);
  if (rc != 0) {
    event_loop_.give_write_request(w);
    return rc;
  }
  return 0;
}

void Stream::write_cb(uv_write_t* req, int status) {
  auto* w = static_cast<WriteRequest*>(req->data);
  Stream* self = w->owner;
  self->event_loop_.give_write_request(w);
  if (status == UV_ECANCELED || self->closing_) return;
  self->on_write_done(status);
  if (!self->closing_) self->maybe_finish_flush();
}

void Stream::on_write_done(int status) {
  if (status < 0) close();
}

void Stream::close_after_flush() {
  close_after_flush_ = true;
  shutdown_requested_ = true;
  if (shutdown_done_) {
    // Our FIN went out earlier (a half-close); now the other direction has ended too.
    close();
    return;
  }
  maybe_finish_flush();  // if a shutdown is under way, its callback sees close_after_flush_
}

void Stream::shutdown_after_flush() {
  shutdown_requested_ = true;
  maybe_finish_flush();
}

void Stream::maybe_finish_flush() {
  if (closing_ || !shutdown_requested_ || shutdown_started_) return;
  if (pending_bytes() != 0) return;
  do_shutdown();
}

void Stream::do_shutdown() {
  shutdown_started_ = true;
  shutdown_req_.data = this;
  if (uv_shutdown(&shutdown_req_, stream(), shutdown_cb) != 0) {
    if (close_after_flush_) close();
  }
}

void Stream::shutdown_cb(uv_shutdown_t* req, int status) {
  auto* self = static_cast<Stream*>(req->data);
  if (status == UV_ECANCELED || self->closing_) return;
  self->shutdown_done_ = true;
  if (!self->close_after_flush_) return;
  if (status < 0) {
    self->close();
    return;
  }
  // Linger: read and discard until the peer closes or a short time passes.
  self->lingering_ = true;
  self->start_read();
  self->start_timer(kLingerMs);
}

void Stream::start_timer(uint64_t ms) {
  if (closing_) return;
  uint64_t now = uv_now(event_loop_.loop());
  deadline_ = now + ms;
  timer_due_ = deadline_;
  timer_armed_ = true;
  uv_timer_start(&timer_, timer_cb, ms, 0);
}

void Stream::stop_timer() {
  deadline_ = 0;
  timer_armed_ = false;
  uv_timer_stop(&timer_);
}

void Stream::set_deadline(uint64_t ms) {
  if (closing_) return;
  uint64_t now = uv_now(event_loop_.loop());
  deadline_ = now + ms;
  if (timer_armed_ && timer_due_ <= deadline_) return;  // fires first, then re-arms for the rest
  timer_due_ = deadline_;
  timer_armed_ = true;
  uv_timer_start(&timer_, timer_cb, ms, 0);
}

void Stream::timer_cb(uv_timer_t* t) {
  auto* self = static_cast<Stream*>(t->data);
  self->timer_armed_ = false;
  if (self->lingering_) {
    self->close();
    return;
  }
  if (self->deadline_ == 0) return;
  uint64_t now = uv_now(self->event_loop_.loop());
  if (now < self->deadline_) {
    self->timer_due_ = self->deadline_;
    self->timer_armed_ = true;
    uv_timer_start(&self->timer_, timer_cb, self->deadline_ - now, 0);
    return;
  }
  self->deadline_ = 0;
  self->on_timeout();
}

void Stream::close() {
  if (closing_) return;
  closing_ = true;
  on_close();
  reading_ = false;
  uv_close(reinterpret_cast<uv_handle_t*>(&tcp_), close_cb);
  uv_close(reinterpret_cast<uv_handle_t*>(&timer_), close_cb);
}

void Stream::close_cb(uv_handle_t* h) {
  auto* self = static_cast<Stream*>(h->data);
  if (--self->handles_open_ == 0) delete self;
}

}  // namespace pilotfish
