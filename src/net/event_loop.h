#pragma once
// What a Stream needs from the loop it lives on: the uv_loop_t, one read buffer shared by all
// its connections (a read callback consumes what it reads before returning), a free list of
// write requests, and the list of live streams (for drain and shutdown). A worker is one; the
// admin listener on the main thread has its own.

#include <uv.h>

#include <memory>
#include <vector>

#include "net/stream.h"

namespace pilotfish {

// Work put off until the I/O callbacks of the loop's current turn have run: an object that many
// events touch in one turn (an HTTP/2 connection whose streams' responses arrive together) does
// its work once, after them. An object destroyed while queued must cancel (EventLoop::cancel).
class Deferred {
 public:
  virtual void run_deferred() = 0;

 protected:
  Deferred() = default;
  ~Deferred() = default;
  Deferred(const Deferred&) = delete;
  Deferred& operator=(const Deferred&) = delete;

 private:
  friend class EventLoop;
  bool queued_ = false;
};

class EventLoop {
 public:
  explicit EventLoop(uv_loop_t* loop) : loop_(loop), read_buffer_(new char[kReadBufferSize]) {
    reopen_spare_descriptor();
  }
  virtual ~EventLoop() { release_spare_descriptor(); }
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  uv_loop_t* loop() { return loop_; }
  uv_buf_t read_buffer() { return uv_buf_init(read_buffer_.get(), kReadBufferSize); }
  // Where TLS connections decrypt into: what one read brings (plus a record OpenSSL held
  // from an earlier read) fits, so it reaches on_data in one call.
  char* tls_buffer() {
    if (!tls_buffer_) tls_buffer_.reset(new char[kTlsBufferSize]);
    return tls_buffer_.get();
  }

  // A small free list of write requests: a streamed body reuses the same few buffers.
  WriteRequest* take_write_request();
  void give_write_request(WriteRequest* w);

  void link_stream(Stream* s);
  void unlink_stream(Stream* s);
  // Calls fn for every live stream; fn may close the stream it is given.
  template <typename Fn>
  void for_each_stream(Fn fn) {
    for (Stream* s = streams_; s;) {
      Stream* next = s->list_next;
      fn(s);
      s = next;
    }
  }

  // Runs d.run_deferred() once after this turn's I/O callbacks (a libuv check handle; an idle
  // handle keeps the loop from blocking in poll meanwhile). Queuing twice runs it once.
  void defer(Deferred& d);
  void cancel(Deferred& d);
  // The loop is ending: its deferral handles close (nothing is deferred after this).
  void close_deferred();

  // A listener's connection callback with UV_EMFILE/UV_ENFILE: the kernel had no descriptor for
  // a client in the backlog. libuv then calls accept() again at once, and with no descriptor
  // free it would do so for ever (its own spare is shared by nothing but can be lost to another
  // thread), serving no one. Giving up this loop's spare lets the next accept() succeed, so that
  // client is taken and answered; any later callback with a connection takes the spare again.
  void release_spare_descriptor();
  // False when no descriptor was free to take it back: a client accepted now is answered and
  // its descriptor closed at once, so that the spare can be taken again.
  bool reopen_spare_descriptor();

  static constexpr size_t kReadBufferSize = 64 * 1024;
  static constexpr size_t kTlsBufferSize = kReadBufferSize + 32 * 1024;

 protected:
  void set_loop(uv_loop_t* loop) { loop_ = loop; }

 private:
  uv_loop_t* loop_;
  std::unique_ptr<char[]> read_buffer_;
  std::unique_ptr<char[]> tls_buffer_;
  std::vector<std::unique_ptr<WriteRequest>> free_writes_;
  Stream* streams_ = nullptr;
  int spare_fd_ = -1;
  static void on_check(uv_check_t* handle);
  std::vector<Deferred*> deferred_;  // queued; an entry cancelled while running is null
  std::vector<Deferred*> running_;
  uv_check_t check_{};
  uv_idle_t idle_{};
  bool deferral_open_ = false;    // the handles are initialised (at the first defer)
  bool deferral_closed_ = false;
};

}  // namespace pilotfish
