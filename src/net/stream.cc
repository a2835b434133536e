#include "net/stream.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>

#include "net/descriptor_budget.h"
#include "net/event_loop.h"
#include "pilotfish/capacity_pool.h"
#include "tls/tls.h"

namespace pilotfish {

namespace {
constexpr uint64_t kLingerMs = 2000;
}  // namespace

UvBufs::UvBufs(char* data, size_t size) {
  // uv_buf_t's length is an unsigned int: a larger buffer is described in pieces (none of
  // today's buffers come near it, their high-water marks being kilobytes; this keeps a later
  // change from writing one short).
  constexpr size_t kPiece = size_t{1} << 30;
  size_t pieces = size == 0 ? 1 : (size + kPiece - 1) / kPiece;
  if (pieces > inline_.size()) more_.resize(pieces);
  uv_buf_t* out = pieces > inline_.size() ? more_.data() : inline_.data();
  for (size_t i = 0; i < pieces; ++i) {
    size_t length = std::min(kPiece, size - i * kPiece);
    out[i] = uv_buf_init(data + i * kPiece, static_cast<unsigned>(length));
  }
  bufs_ = out;
  count_ = static_cast<unsigned>(pieces);
}

Stream::Stream(EventLoop& event_loop) : event_loop_(event_loop) {
  uv_tcp_init(event_loop.loop(), &tcp_);
  uv_timer_init(event_loop.loop(), &timer_);
  tcp_.data = this;
  timer_.data = this;
  event_loop.link_stream(this);
  StringPool<PoolRole::output>::take(out_);
}

Stream::~Stream() {
  event_loop_.unlink_stream(this);
  give_back_descriptor();
  StringPool<PoolRole::output>::give(out_);
  StringPool<PoolRole::cipher>::give(cipher_);
}

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
    if (self->tls_ && !self->tls_->established()) {
      self->tls_->abandon(nread == UV_EOF ? "the peer closed the connection during the handshake"
                                          : std::string("connection lost during the handshake: ") + uv_strerror(nread));
      self->on_tls_failed();
      return;
    }
    self->on_read_end(static_cast<int>(nread));
    return;
  }
  if (self->tls_) {
    self->tls_input(buf->base, static_cast<size_t>(nread));
    return;
  }
  self->on_data(buf->base, static_cast<size_t>(nread));
}

void Stream::start_tls(std::shared_ptr<const TlsMaterial> material, const TlsOptions& options) {
  StringPool<PoolRole::cipher>::take(cipher_);
  tls_ = std::make_unique<TlsState>(std::move(material), options, &cipher_);
  if (tls_->failed()) {
    on_tls_failed();
    return;
  }
  if (options.server) return;  // the client speaks first
  TlsState::Step step = tls_->handshake();
  if (write_bytes(cipher_) != 0 && step != TlsState::Step::failed) {
    tls_->abandon("cannot write the ClientHello");
    step = TlsState::Step::failed;
  }
  if (step == TlsState::Step::failed) on_tls_failed();
}

bool Stream::accept_tls(const std::shared_ptr<const TlsMaterial>& material, bool http, bool h2) {
  if (!material) return false;
  TlsOptions options;
  options.server = true;
  options.http = http;
  options.h2 = http && h2;
  start_tls(material, options);
  return true;
}

bool Stream::tls_established() const { return tls_ && tls_->established(); }

bool Stream::move_connection_to(Stream& next) {
  if (closing_ || !out_.empty() || uv_stream_get_write_queue_size(stream()) != 0) return false;
  uv_os_fd_t fd;
  if (uv_fileno(reinterpret_cast<uv_handle_t*>(&tcp_), &fd) != 0) return false;
  int copy = ::dup(fd);
  if (copy < 0) return false;
  if (uv_tcp_open(next.tcp(), copy) != 0) {
    ::close(copy);
    return false;
  }
  stop_read();
  // The copy stands for the same client: the budget's count goes with it (this stream's own
  // descriptor closes at once).
  next.descriptor_ = descriptor_;
  descriptor_ = Descriptor::none;
  if (tls_) {
    next.tls_ = std::move(tls_);
    next.cipher_.swap(cipher_);
    next.tls_->set_cipher_out(&next.cipher_);
  }
  return true;
}

// Ciphertext arrived: the handshake advances, or records are decrypted into the loop's
// plaintext buffer and handed to on_data. All of it is consumed before this returns (the read
// buffer is reused), so what one read brings is delivered in this callback, as without TLS.
void Stream::tls_input(const char* data, size_t length) {
  TlsState& t = *tls_;
  t.feed(data, length);
  if (!t.established()) {
    TlsState::Step step = t.handshake();
    int rc = write_bytes(cipher_);  // the next flight, or an alert
    if (step == TlsState::Step::again) {
      if (rc != 0) {
        t.abandon(std::string("write failed during the handshake: ") + uv_strerror(rc));
        on_tls_failed();
      }
      return;
    }
    if (step == TlsState::Step::failed) {
      on_tls_failed();
      return;
    }
    on_tls_established();
    if (closing_) return;
  }
  char* plain = event_loop_.tls_buffer();
  while (!closing_ && !lingering_) {
    bool eof = false, error = false;
    size_t got = t.read(plain, EventLoop::kTlsBufferSize, &eof, &error);
    if (got) on_data(plain, got);
    if (closing_ || lingering_) break;
    if (eof || error) {
      t.feed(nullptr, 0);
      write_bytes(cipher_);
      stop_read();
      on_read_end(eof ? UV_EOF : UV_EPROTO);
      return;
    }
    if (got < EventLoop::kTlsBufferSize) break;
  }
  t.feed(nullptr, 0);
  // Whatever reading produced on its own (a key update's answer, an alert).
  if (!closing_ && !cipher_.empty()) write_bytes(cipher_);
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
  return out_.size() + cipher_.size() +
         uv_stream_get_write_queue_size(reinterpret_cast<const uv_stream_t*>(&tcp_));
}

int Stream::flush() {
  if (!tls_) return write_bytes(out_);
  if (closing_) return 0;
  if (tls_->established() && !out_.empty()) {
    bool ok = tls_->write(out_.data(), out_.size());
    out_.clear();
    if (!ok) return UV_EPROTO;
  }
  return write_bytes(cipher_);
}

// Hands `bytes` (out_, or cipher_ with TLS) to the kernel, or to libuv's queue for what the
// socket buffer does not take now.
int Stream::write_bytes(std::string& bytes) {
  if (closing_ || bytes.empty()) {
    maybe_finish_flush();
    return 0;
  }
  if (uv_stream_get_write_queue_size(stream()) == 0) {
    // Most writes fit in the socket buffer: try it now and skip the request allocation.
    UvBufs b(bytes.data(), bytes.size());
    int n = uv_try_write(stream(), b.data(), b.count());
    if (n == static_cast<int>(bytes.size())) {
      bytes.clear();
      maybe_release_output();
      maybe_finish_flush();
      return 0;
    }
    if (n < 0 && n != UV_EAGAIN) {
      bytes.clear();
      return n;
    }
    if (n > 0) bytes.erase(0, static_cast<size_t>(n));
  }
  // The request's buffer comes from the loop's free list, so its capacity serves again
  // (here as the next buffer, after the swap) instead of a malloc and free per write.
  WriteRequest* w = event_loop_.take_write_request();
  w->owner = this;
  w->data.swap(bytes);
  w->req.data = w;
  UvBufs b(w->data.data(), w->data.size());
  int rc = uv_write(&w->req, stream(), b.data(), b.count(), write_cb);
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
  if (self->closing_) return;
  self->maybe_release_output();
  self->maybe_finish_flush();
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

void Stream::take_output() {
  release_output_ = false;
  StringPool<PoolRole::output>::take(out_);
  if (tls_) StringPool<PoolRole::cipher>::take(cipher_);
}

// With TLS the ciphertext buffer goes back too: it grew to the handshake's flight (the
// certificate chain), which an idle connection would otherwise hold.
void Stream::maybe_release_output() {
  if (release_output_ && out_.empty() && cipher_.empty()) {
    release_output_ = false;
    StringPool<PoolRole::output>::give(out_);
    if (tls_) StringPool<PoolRole::cipher>::give(cipher_);
  }
}

void Stream::close_after_flush_no_linger() {
  if (!tls_) no_linger_ = true;
  close_after_flush();
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
  if (no_linger_ && close_after_flush_) {
    // Everything is with the kernel (pending_bytes() == 0): a close sends it, then FIN. Unless
    // input is waiting unread (a stray CRLF after a body, a request the client should not have
    // sent): a close with unread input sends a reset, which can destroy the answer in the
    // client's buffer. Then the lingering close reads it away first.
    uv_os_fd_t fd;
    int unread = 0;
    if (uv_fileno(reinterpret_cast<uv_handle_t*>(&tcp_), &fd) == 0 && ::ioctl(fd, FIONREAD, &unread) == 0 &&
        unread == 0) {
      close();
      return;
    }
    no_linger_ = false;
  }
  if (tls_ && tls_->established() && !tls_->close_notify_sent()) {
    // close_notify first, so the peer can tell our end from a truncation.
    tls_->shutdown();
    if (write_bytes(cipher_) != 0) {
      if (close_after_flush_) close();
      return;
    }
    // write_bytes may have finished the shutdown itself (all written at once), or it runs
    // again from the write callback once the alert has gone out.
    if (shutdown_started_ || closing_ || pending_bytes() != 0) return;
  }
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
  if (tls_ && !tls_->established()) {
    tls_->abandon("closed during the handshake");
  } else if (tls_ && !tls_->close_notify_sent() && tls_->error().empty()) {
    // A clean end (an idle timeout, the last response sent): close_notify, best effort, so the
    // peer sees an end and not a truncation, and the session stays resumable (OpenSSL marks
    // the session of a connection freed without it as not resumable).
    tls_->shutdown();
    if (!cipher_.empty() && uv_stream_get_write_queue_size(stream()) == 0) {
      UvBufs b(cipher_.data(), cipher_.size());
      uv_try_write(stream(), b.data(), b.count());
    }
    cipher_.clear();
  }
  closing_ = true;
  on_close();
  reading_ = false;
  uv_close(reinterpret_cast<uv_handle_t*>(&tcp_), close_cb);
  uv_close(reinterpret_cast<uv_handle_t*>(&timer_), close_cb);
  give_back_descriptor();  // uv_close has closed the socket already; only memory waits
}

void Stream::give_back_descriptor() {
  if (descriptor_ == Descriptor::downstream) DescriptorBudget::process().give_back_downstream();
  if (descriptor_ == Descriptor::upstream) DescriptorBudget::process().give_back();
  descriptor_ = Descriptor::none;
}

void Stream::close_cb(uv_handle_t* h) {
  auto* self = static_cast<Stream*>(h->data);
  if (--self->handles_open_ == 0) delete self;
}

}  // namespace pilotfish
