#pragma once
// A TCP connection on a worker's loop: one uv_tcp_t and one uv_timer_t, an output buffer that
// collects everything one read callback produces so that it leaves in one system call, and a
// close that frees the object only after libuv has closed both handles (libuv's rule: memory of
// a handle is released in its close callback, never earlier).

#include <uv.h>

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace pilotfish {

class EventLoop;
class Stream;
class TlsMaterial;
class TlsState;
struct TlsOptions;

// `size` bytes at `data` as uv_buf_t pieces for uv_write and uv_try_write, whose lengths are
// unsigned ints: a buffer of 4 GiB or more takes several (libuv copies the array it is given).
class UvBufs {
 public:
  UvBufs(char* data, size_t size);
  UvBufs(const UvBufs&) = delete;
  UvBufs& operator=(const UvBufs&) = delete;
  const uv_buf_t* data() const { return bufs_; }
  unsigned count() const { return count_; }

 private:
  std::array<uv_buf_t, 4> inline_;
  std::vector<uv_buf_t> more_;
  const uv_buf_t* bufs_ = nullptr;
  unsigned count_ = 0;
};

// A queued write and the bytes it holds until libuv has written them.
struct WriteRequest {
  uv_write_t req;
  std::string data;
  Stream* owner = nullptr;
};

class Stream {
 public:
  explicit Stream(EventLoop& event_loop);
  virtual ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  uv_tcp_t* tcp() { return &tcp_; }
  uv_stream_t* stream() { return reinterpret_cast<uv_stream_t*>(&tcp_); }

  void start_read();
  void stop_read();
  bool reading() const { return reading_; }

  // Makes this connection TLS (a server side at accept, a client side once connected): from
  // now on on_data sees plaintext and out() is encrypted on flush. A client's first flight is
  // written at once. on_tls_established or on_tls_failed follow.
  void start_tls(std::shared_ptr<const TlsMaterial> material, const TlsOptions& options);
  // The server side of an mtls listener's connection (ALPN http/1.1 when `http`, and h2 first
  // when `h2`); false (and nothing started) without material, which a policy with mtls always has.
  bool accept_tls(const std::shared_ptr<const TlsMaterial>& material, bool http, bool h2 = false);
  TlsState* tls() const { return tls_.get(); }
  // Gives this connection's socket (a duplicate of its descriptor) and TLS state to `next`, a
  // fresh stream that has not been opened; this stream should then be closed, which closes
  // only its own descriptor. False (nothing moved) when it cannot be done, e.g. with writes
  // still queued.
  bool move_connection_to(Stream& next);
  bool tls_established() const;
  // This connection's descriptor was taken from the process's DescriptorBudget (as a client
  // connection when `downstream`): given back when the stream is deleted (its socket closed).
  // move_connection_to hands it on.
  enum class Descriptor : uint8_t { none, upstream, downstream };
  void hold_descriptor(Descriptor kind) { descriptor_ = kind; }

  // Output: append, then flush once at the end of the callback that produced it.
  // With TLS, bytes appended before the handshake is done wait in out() until it is.
  std::string& out() { return out_; }
  void append(std::string_view bytes) { out_.append(bytes); }
  // Writes what is in out(); returns 0 or a libuv error (the connection is then unusable).
  int flush();
  // An idle connection's output buffer goes back to the worker's pool once it is empty (now,
  // or when the last bytes are with the kernel); take_output() borrows one for the next answer.
  void release_output_when_flushed() {
    release_output_ = true;
    maybe_release_output();
  }
  void take_output();
  // Bytes accepted but not yet handed to the kernel: the backpressure measure.
  size_t pending_bytes() const;

  // Closes once everything queued is written: the write side is shut down, then the read
  // side is drained (discarding) for a short while so the peer sees our last bytes before a
  // close, instead of a reset that could destroy them (a lingering close, as nginx does).
  void close_after_flush();
  // Closes once everything queued is written, without the lingering read: for a peer known to
  // have sent its last byte (a client that asked for the close, its request all read and
  // nothing after it). A plain connection is closed outright: the kernel sends what is queued,
  // then FIN; the shutdown, the read of the peer's FIN and their poll changes are saved. With
  // TLS it is close_after_flush(): a peer answering close_notify is not sent a reset.
  void close_after_flush_no_linger();
  // After everything queued is written, sends FIN (half-close) and keeps reading.
  void shutdown_after_flush();
  bool write_shut() const { return shutdown_requested_; }

  // Closes both handles; the object deletes itself once libuv has closed them.
  void close();
  bool closing() const { return closing_; }

  // The worker is draining. Downstream connections close when idle, or after the response
  // in flight; upstream connections need do nothing.
  virtual void drain() {}
  // The worker switched to a new policy snapshot (a connection of a removed listener drains).
  virtual void on_policy_changed() {}
  // The worker's once-a-second sweep: an idle connection lets go of memory it holds only for
  // requests (HttpSession: its exchange).
  virtual void release_idle_memory() {}

  // One timer per connection. start_timer/stop_timer arm and disarm it exactly.
  // set_deadline/clear_deadline are for deadlines that move on every request: they only
  // touch libuv's timer heap when the new deadline is earlier than the armed one; a timer
  // that fires early re-arms itself for the rest, and one that fires with no deadline set is
  // ignored. A keep-alive connection thus changes its deadline several times per request at
  // the cost of a store, not of heap operations.
  void start_timer(uint64_t ms);
  void stop_timer();
  void set_deadline(uint64_t ms);
  void clear_deadline() { deadline_ = 0; }

  // Intrusive list of all live streams of a worker, for drain and shutdown.
  Stream* list_prev = nullptr;
  Stream* list_next = nullptr;

  static constexpr size_t kHighWater = 256 * 1024;
  static constexpr size_t kLowWater = 64 * 1024;

 protected:
  // Bytes arrived. The buffer belongs to the worker and is reused after this returns.
  virtual void on_data(char* data, size_t length) = 0;
  // The peer closed (UV_EOF) or the connection failed (< 0).
  virtual void on_read_end(int status) = 0;
  // A queued write finished; pending_bytes() may now be below the low-water mark.
  virtual void on_write_done(int status);
  virtual void on_timeout() {}
  // Called once, when close() starts; the place to detach from peers.
  virtual void on_close() {}
  // The TLS handshake completed (the peer's identity is in tls()), or failed (tls()->error()
  // says why; the default closes).
  virtual void on_tls_established() {}
  virtual void on_tls_failed() { close(); }

  EventLoop& event_loop_;

 private:
  static void alloc_cb(uv_handle_t* handle, size_t suggested, uv_buf_t* buf);
  static void read_cb(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf);
  static void write_cb(uv_write_t* req, int status);
  static void shutdown_cb(uv_shutdown_t* req, int status);
  static void timer_cb(uv_timer_t* t);
  static void close_cb(uv_handle_t* h);
  void maybe_finish_flush();
  void maybe_release_output();
  void do_shutdown();
  int write_bytes(std::string& bytes);
  void tls_input(const char* data, size_t length);
  void give_back_descriptor();

  uv_tcp_t tcp_;
  uv_timer_t timer_;
  uv_shutdown_t shutdown_req_;
  std::string out_;
  std::unique_ptr<TlsState> tls_;
  std::string cipher_;  // with TLS: encrypted bytes not yet handed to libuv
  uint64_t deadline_ = 0;   // loop time (ms) at which on_timeout is due; 0 = none
  uint64_t timer_due_ = 0;  // when the armed libuv timer fires; valid while timer_armed_
  bool timer_armed_ = false;
  int handles_open_ = 2;
  bool reading_ = false;
  bool closing_ = false;
  bool close_after_flush_ = false;
  bool shutdown_requested_ = false;
  bool shutdown_started_ = false;
  bool shutdown_done_ = false;
  bool lingering_ = false;
  bool no_linger_ = false;
  bool release_output_ = false;
  Descriptor descriptor_ = Descriptor::none;
};

}  // namespace pilotfish
