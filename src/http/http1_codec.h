#pragma once
// HTTP/1.1 framing, and nothing else: the one place that knows llhttp (the data path's and the
// admin listener's). A decoder turns bytes into a message for its handler: the head, whole (a
// RequestHead or ResponseHead, protocol-neutral), body pieces, and the end with any trailer
// fields. On the way it checks what llhttp lets through: HeadScanner refuses bare CR or LF and
// obs-fold in every head before llhttp sees it, the next message's included whatever the
// handler answers at a message's end. A handler that pauses there decides when the next
// message is read (pipelining: a request is answered before the next is parsed).
// The encoder side is small helpers for what pilotfish writes (chunk framing, reason phrases);
// the message checks llhttp does not make (one valid Content-Length, Transfer-Encoding exactly
// "chunked", valid field names and values) are here too, for both directions.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "http/message_head.h"
#include "pilotfish/head_scanner.h"
#include "pilotfish/header_rules.h"
#include "pilotfish/header_list.h"

namespace pilotfish {

// What a handler's callback tells the decoder.
enum class Step {
  go,         // carry on
  skip_body,  // (head complete, a response) the message has no body: a HEAD's, a 304
  fail,       // stop: the message is refused (the handler has answered it, or will)
  pause,      // stop after this message (message complete)
};

class Http1RequestHandler {
 public:
  virtual ~Http1RequestHandler() = default;
  // A request's first byte.
  virtual Step on_message_begin() = 0;
  // Its head is complete (in the RequestHead the decoder was given).
  virtual Step on_request_head(RequestHead& head) = 0;
  virtual Step on_body(std::string_view piece) = 0;
  // Its end; head.trailers holds the trailer fields of a chunked body (often none).
  virtual Step on_message_complete(RequestHead& head) = 0;
};

class Http1ResponseHandler {
 public:
  virtual ~Http1ResponseHandler() = default;
  virtual Step on_response_head(ResponseHead& head) = 0;
  virtual Step on_response_body(std::string_view piece) = 0;
  virtual Step on_response_message_complete(ResponseHead& head) = 0;
};

class Http1Decoder {
 public:
  // What one call to execute() came to.
  struct Outcome {
    enum Kind {
      more,     // every byte taken; the message (if any) goes on in the next bytes
      paused,   // a message is complete (or a handler paused); `consumed` bytes were taken
      upgrade,  // a message asking for (request) or agreeing to (101) an upgrade is complete
      failed,   // the bytes are not HTTP/1.1, or a handler refused them
    } kind = more;
    size_t consumed = 0;         // of the bytes given
    const char* reason = "";     // failed: why, for a debug log line (fixed texts)
    bool too_large = false;      // failed: the head (or the trailers) went past the limit
  };

  // Decodes requests into `head`, or responses: the handler owns the head.
  Http1Decoder(Http1RequestHandler* handler, RequestHead* head);
  Http1Decoder(Http1ResponseHandler* handler, ResponseHead* head);
  ~Http1Decoder();
  Http1Decoder(const Http1Decoder&) = delete;
  Http1Decoder& operator=(const Http1Decoder&) = delete;

  Outcome execute(const char* data, size_t length);
  // After `paused`: the next message may be decoded.
  void resume();
  // The peer closed: ends a message delimited by the close. True when that completed it (or
  // there was none under way).
  bool finish();
  // A new response, on another connection (a retry): forgets any state.
  void restart();
  // The most a message's head may take: the request-target (or reason phrase) and each field's
  // name and value, with 4 bytes per field for ": " and CRLF. The trailer section has a limit
  // of its own, the same size. Past it, execute() fails with too_large. Read at each message's
  // first byte (so a reload's new limit applies from the next request).
  void set_head_limit(uint64_t bytes);

  // Of the message being decoded, from its head on (content_length() counts down as
  // the body arrives: read it at headers complete).
  int version_major() const;
  int version_minor() const;
  std::string_view method_name() const;  // requests
  bool method_is_head() const;
  bool method_is_connect() const;
  bool method_is_options() const;
  // GET, HEAD, OPTIONS, PUT, DELETE, TRACE: safe to send again (RFC 9110 9.2.2).
  bool method_is_idempotent() const;
  int status_code() const;  // responses
  bool chunked() const;
  bool has_content_length() const;
  uint64_t content_length() const;
  bool upgrade() const;
  bool keep_alive() const;

  struct State;  // llhttp's parser and the head scanner (in the .cc: llhttp stays there)

 private:
  // The State lives in place (no allocation per connection); its size is checked in the .cc.
  static constexpr size_t kStateBytes = 256;
  alignas(16) unsigned char storage_[kStateBytes];
  State* state_;
};

// A message's own framing, checked beyond what llhttp enforces: exactly one valid
// Content-Length, or Transfer-Encoding that is exactly "chunked", never both.
bool framing_headers_valid(const HeaderList& h);
// Every field name a token, every value valid (RFC 9110 5.5).
bool fields_valid(const HeaderList& h);
// "1a3\r\n": the size line of a chunk.
void append_chunk_header(std::string& out, size_t length);
// Whether a field may travel in a trailer section (RFC 9110 6.5.1): not one that frames or
// routes the message, authenticates, controls the request or the response, or describes the
// content, and not a hop-by-hop field. The others are dropped on the way.
bool allowed_in_trailers(std::string_view name);
// A method llhttp reads in a request line (HTTP_METHOD_MAP): what an HTTP/1.1 upstream is sent.
// An HTTP/2 request with another method is refused as an HTTP/1.1 one would be.
bool http1_method_known(std::string_view method);
// The end of a chunked body: "0\r\n", each trailer field that is allowed_in_trailers, not named
// by the message's Connection field (`connection_tokens`, see header_rules.h), and that
// `keep(name)` keeps, then the blank line. The fields must be valid (fields_valid).
template <typename Keep>
void append_last_chunk(std::string& out, const HeaderList& trailers, const std::string& connection_tokens, Keep keep) {
  out += "0\r\n";
  for (size_t i = 0; i < trailers.size(); ++i) {
    std::string_view name = trailers.name(i);
    if (!allowed_in_trailers(name) || is_hop_by_hop(name, connection_tokens) || !keep(name)) continue;
    out += name;
    out += ": ";
    out += trim_ows(trailers.value(i));
    out += "\r\n";
  }
  out += "\r\n";
}
inline void append_response_last_chunk(std::string& out, const HeaderList& trailers,
                                       const std::string& connection_tokens) {
  append_last_chunk(out, trailers, connection_tokens, [](std::string_view) { return true; });
}
void append_uint(std::string& out, uint64_t v);
// A content-length value's number (its digits; the framing checks made sure there are only
// digits), saturating at UINT64_MAX.
uint64_t content_length_value(std::string_view value);
// An upstream's response head as decoded: HTTP/1.x, a status of three digits, valid fields and
// framing, and a reason phrase (RFC 9112 4: HTAB, SP, visible ASCII, obs-text) of at most
// 1 KiB. What fails is an invalid response, although the reason is never passed on.
bool response_head_acceptable(const Http1Decoder& decoder, const ResponseHead& head);
// Interim (1xx) responses an upstream may send before its final one: a few are normal, a stream
// of them is an upstream gone wrong.
constexpr int kMaxInterimResponses = 16;
// How long a pooled connection may stay idle after a response that said `Keep-Alive: timeout=N`
// (the upstream closes idle connections after N s): 80% of it, at least 1 ms; 0 when it said
// nothing.
uint64_t keep_alive_idle_limit_ms(const HeaderList& response_fields);
// The reason phrases of RFC 9110 ("Not Found"); "Unknown" for a code it does not name.
const char* reason_phrase(int status);
// The HTTP/1.1 parser this build decodes with, for `pilotfish version`: "llhttp 8.1.0".
std::string http1_parser_version();

}  // namespace pilotfish
