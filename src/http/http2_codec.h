#pragma once
// HTTP/2 framing (RFC 9113), and nothing else: the one place that knows nghttp2. nghttp2 does
// the frames, HPACK, flow control and the message checks of RFC 9113 section 8 (pseudo-header
// fields present, once and first; no connection-specific fields; `te` only "trailers"; names
// in lower case; content-length against the DATA received): a malformed message is a stream
// error (RST_STREAM PROTOCOL_ERROR), never cleaned up and passed on. This file drives it with
// pilotfish's own loop and buffers (nghttp2_session_mem_recv and mem_send, no socket of its
// own) and turns each stream's messages into the same protocol-neutral heads the HTTP/1.1
// codec makes (RequestHead, ResponseHead), every field in them valid as fields_valid means it
// (names lower-case tokens; values without NUL, CR, LF or other controls but HTAB, without
// surrounding whitespace) and no transfer-encoding, with the conversions an HTTP/1.1 hop needs:
// `:authority` becomes `host` (a `host` that names another is malformed), cookie fields split
// by HTTP/2 are joined again. Going the other way it writes names in lower case and drops
// connection-specific fields, whatever its owner hands it.
//
// Limits it enforces itself, whatever the library version does on its own: concurrent streams
// (SETTINGS_MAX_CONCURRENT_STREAMS), a header block's decoded size (names, values and 4
// bytes per field, as the HTTP/1.1 codec counts; past it the stream is refused, which an HPACK
// bomb meets), CONTINUATION frames per block, RST_STREAM received per second (rapid reset,
// CVE-2023-44487), SETTINGS entries, and PING and SETTINGS acknowledgements owed to a peer
// that does not read. A connection that breaks one gets GOAWAY.
//
// One connection, either role: a server (downstream: requests come in) or a client (upstream:
// requests go out). Not thread-safe; all calls from the connection's loop.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nghttp2/nghttp2.h>

#include "http/message_head.h"
#include "http/stream_table.h"
#include "pilotfish/header_list.h"

namespace pilotfish {

struct Http2Limits {
  uint32_t max_concurrent_streams = 100;
  uint64_t max_header_bytes = 64 * 1024;  // a header block, decoded
  uint32_t stream_window = 256 * 1024;    // what a peer may send on a stream before we read it
  uint32_t connection_window = 1024 * 1024;
  size_t max_continuations = 8;
  uint64_t reset_burst = 1000;  // RST_STREAM received: a bucket of this many,
  uint64_t reset_rate = 33;     // refilled by this many per second
};

// What a connection's streams report to their owner.
class Http2Handler {
 public:
  virtual ~Http2Handler() = default;
  // Server: a request's head, complete and checked. `end_stream`: no body follows. Take what
  // is kept (std::swap the head): it is reused for the next block.
  virtual void on_request_head(int32_t stream, RequestHead& head, bool end_stream) = 0;
  // Server: a request whose head is over max_header_bytes. The stream stays open for an answer
  // (431); its body, if any, is read and dropped. `partial`: the fields decoded before the limit
  // (a gRPC client's content-type comes early), to choose the answer's form by.
  virtual void on_request_head_too_large(int32_t stream, const RequestHead& partial) = 0;
  // Client: a response's head (an interim one, 1xx, too: more follow).
  virtual void on_response_head(int32_t stream, ResponseHead& head, bool end_stream) = 0;
  // A piece of a message's body. The flow-control window opens again only when the owner says
  // it passed the bytes on (consume()).
  virtual void on_data(int32_t stream, std::string_view piece) = 0;
  // The message is complete; `trailers` holds its trailer fields (often none).
  virtual void on_end(int32_t stream, HeaderList& trailers) = 0;
  // The stream is closed: after both ends (error_code 0), or reset by either side, or the
  // connection went away. The last call for the stream.
  virtual void on_stream_closed(int32_t stream, uint32_t error_code) = 0;
  // Client: the peer sent GOAWAY: streams above last_stream_id were not processed.
  virtual void on_goaway(int32_t last_stream_id, uint32_t error_code) = 0;
};

class Http2Connection {
 public:
  enum class Role { server, client };
  // The 24 bytes a client sends first ("PRI * HTTP/2.0...").
  static std::string_view preface();

  Http2Connection(Role role, Http2Handler& handler, const Http2Limits& limits = {});
  ~Http2Connection();
  Http2Connection(const Http2Connection&) = delete;
  Http2Connection& operator=(const Http2Connection&) = delete;

  // Bytes from the peer. False: the connection is broken (a connection error; GOAWAY is queued
  // for output where possible): write what output() gives, then close.
  bool receive(const char* data, size_t length);
  // Appends the frames ready to go to `out`.
  void output(std::string& out);
  // Neither side has anything more to say: close the connection once output is written.
  bool done() const;

  // Server: answers a stream. `fields` should not carry connection-specific fields (they are
  // dropped) nor pseudo-header fields. end_stream: no body.
  bool submit_response(int32_t stream, int status, const HeaderList& fields, bool end_stream);
  // Client: opens a stream. Returns its id, or -1 (no stream id left, or GOAWAY received).
  int32_t submit_request(const RequestHead& head, std::string_view scheme, std::string_view authority,
                         bool end_stream);
  // A message's body, queued; it goes out as the peer's windows allow.
  void send_data(int32_t stream, std::string_view piece);
  // The message's end, with trailer fields when `trailers` is not null (and not empty).
  void send_end(int32_t stream, const HeaderList* trailers);
  // Body bytes queued on the stream that the peer's window has not taken yet: its owner's
  // backpressure.
  size_t queued(int32_t stream) const;
  // RST_STREAM with this error code (NGHTTP2_CANCEL = 8, REFUSED_STREAM = 7, ...).
  void reset(int32_t stream, uint32_t error_code);
  // Server: the response is complete (or will be once queued) and the request is not: once the
  // response's END_STREAM is sent, RST_STREAM NO_ERROR tells the client to stop sending its
  // body (RFC 9113 8.1), and the stream closes.
  void end_early(int32_t stream);
  // The owner passed on `n` bytes of the stream's body: the windows open by as much.
  void consume(int32_t stream, size_t n);
  // Graceful shutdown: GOAWAY with the last stream id seen; streams in flight finish.
  void shutdown();
  // Streams open now.
  size_t open_streams() const { return open_streams_; }
  // Client: the peer's SETTINGS_MAX_CONCURRENT_STREAMS (100 until its SETTINGS arrive).
  uint32_t peer_max_streams() const;
  // For the access log and tests: the reason of the last connection error, or "".
  const char* error() const { return error_; }

  struct Callbacks;  // nghttp2's callbacks (in the .cc)

 private:
  // A stream's state here: the body waiting for the peer's window, and what was received.
  struct Outgoing {
    std::string data;
    size_t offset = 0;
    bool end = false;
    bool deferred = false;  // nghttp2 waits for resume_data
    HeaderList trailers;
    bool drop_body = false;   // a refused request's body is read and dropped
    bool responded = false;   // a final response head went (server)
    bool reset_after_end = false;  // end_early: RST_STREAM NO_ERROR after our END_STREAM
    bool end_sent = false;         // our END_STREAM went out
    size_t unconsumed = 0;    // received body bytes the owner has not passed on
  };
  void open_out(int32_t stream);
  void keep_spare(std::unique_ptr<Outgoing> o);
  Outgoing* outgoing(int32_t stream) const;
  void resume(int32_t stream, Outgoing& o);
  int request_head_done(int32_t stream, bool end_stream);
  void end_of(int32_t stream);

  Role role_;
  Http2Handler& handler_;
  Http2Limits limits_;
  nghttp2_session* session_ = nullptr;
  StreamTable<std::unique_ptr<Outgoing>> out_;  // open streams
  // Reused by every submit (nghttp2 copies the pairs before the call returns).
  std::vector<nghttp2_nv> nva_;
  // The header block being decoded (one at a time: CONTINUATION frames follow their HEADERS).
  RequestHead request_;
  ResponseHead response_;
  HeaderList trailers_;
  std::string authority_;
  std::string scheme_;
  uint64_t block_bytes_ = 0;
  int32_t block_stream_ = 0;
  bool block_too_large_ = false;
  bool block_is_trailers_ = false;
  size_t open_streams_ = 0;
  uint32_t empty_frames_ = 0;  // empty DATA frames received in a row
  const char* error_ = "";
  friend struct Callbacks;
};

}  // namespace pilotfish
