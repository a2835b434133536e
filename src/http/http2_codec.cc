#include "http/http2_codec.h"

#include <nghttp2/nghttp2.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "http/http2_memory.h"
#include "pilotfish/header_rules.h"

namespace pilotfish {

namespace {

constexpr char kPreface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

std::string_view view(const uint8_t* p, size_t n) { return {reinterpret_cast<const char*>(p), n}; }

// Fields that mean something only to one HTTP/1.1 connection (RFC 9113 8.2.2): never written
// in an HTTP/2 message. `te` is allowed with "trailers" alone.
bool connection_specific(std::string_view name, std::string_view value) {
  static constexpr std::string_view kFields[] = {"connection", "keep-alive", "proxy-connection", "transfer-encoding",
                                                 "upgrade", "http2-settings", "host"};
  for (auto f : kFields)
    if (iequals(name, f)) return true;
  return iequals(name, "te") && !iequals(trim_ows(value), "trailers");
}

nghttp2_nv pair(std::string_view name, std::string_view value, uint8_t flags = NGHTTP2_NV_FLAG_NONE) {
  return {reinterpret_cast<uint8_t*>(const_cast<char*>(name.data())),
          reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())), name.size(), value.size(), flags};
}

// The name/value pairs of `fields`, connection-specific fields left out. The pairs point into
// `fields`, which lives until the submit call returns: nghttp2 copies them, and writes the copied
// names in lower case.
void add_fields(std::vector<nghttp2_nv>& nva, const HeaderList& fields) {
  for (size_t i = 0; i < fields.size(); ++i) {
    std::string_view name = fields.name(i), value = trim_ows(fields.value(i));
    if (name.empty() || name[0] == ':' || connection_specific(name, value)) continue;
    // A value that is new on every message is not put in the peer's HPACK table: it would only
    // push out entries that are used again, and make every later lookup of that name longer.
    bool unique = iequals(name, "x-request-id") || iequals(name, "traceparent");
    nva.push_back(pair(name, value, unique ? NGHTTP2_NV_FLAG_NO_INDEX : NGHTTP2_NV_FLAG_NONE));
  }
}

// HTTP/2 splits a cookie into one field per crumb (RFC 9113 8.2.3); HTTP/1.1 wants one field.
void join_cookies(HeaderList& fields) {
  if (fields.count("cookie") < 2) return;
  HeaderList joined;
  std::string cookie;
  for (size_t i = 0; i < fields.size(); ++i) {
    if (iequals(fields.name(i), "cookie")) {
      if (!cookie.empty()) cookie += "; ";
      cookie += fields.value(i);
    } else {
      joined.add(fields.name(i), fields.value(i));
    }
  }
  joined.add("cookie", cookie);
  fields = std::move(joined);
}

}  // namespace

// Empty DATA frames in a row (without END_STREAM) a peer may send before its connection ends.
constexpr uint32_t kMaxEmptyFrames = 32;

struct Http2Connection::Callbacks {
  static Http2Connection& of(void* user_data) { return *static_cast<Http2Connection*>(user_data); }

  static int on_begin_headers(nghttp2_session*, const nghttp2_frame* frame, void* user_data) {
    Http2Connection& c = of(user_data);
    if (frame->hd.type != NGHTTP2_HEADERS) return 0;
    c.block_stream_ = frame->hd.stream_id;
    c.block_bytes_ = 0;
    c.block_too_large_ = false;
    c.trailers_.clear();
    switch (frame->headers.cat) {
      case NGHTTP2_HCAT_REQUEST:
        ++c.open_streams_;
        c.open_out(frame->hd.stream_id);
        c.request_.clear();
        c.request_.version_major = 2;
        c.request_.version_minor = 0;
        c.authority_.clear();
        c.scheme_.clear();
        c.block_is_trailers_ = false;
        break;
      case NGHTTP2_HCAT_RESPONSE:
        c.response_.clear();
        c.response_.version_major = 2;
        c.response_.version_minor = 0;
        c.block_is_trailers_ = false;
        break;
      default:  // trailers, or (client) a final response after an interim one: :status says
        c.response_.clear();
        c.response_.version_major = 2;
        c.response_.version_minor = 0;
        c.block_is_trailers_ = true;
        break;
    }
    return 0;
  }

  static int on_header(nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name, size_t namelen,
                       const uint8_t* value, size_t valuelen, uint8_t, void* user_data) {
    Http2Connection& c = of(user_data);
    if (frame->hd.type != NGHTTP2_HEADERS || c.block_too_large_) return 0;
    c.block_bytes_ += namelen + valuelen + 4;
    if (c.block_bytes_ > c.limits_.max_header_bytes) {
      c.block_too_large_ = true;  // the rest of the block is decoded (HPACK state) and dropped
      return 0;
    }
    std::string_view n = view(name, namelen), v = view(value, valuelen);
    if (!n.empty() && n[0] == ':') {
      if (c.role_ == Role::server) {
        if (n == ":method") c.request_.method.assign(v);
        else if (n == ":path") c.request_.target.assign(v);
        else if (n == ":authority") c.authority_.assign(v);
        else if (n == ":scheme") c.scheme_.assign(v);
      } else if (n == ":status") {
        int status = 0;
        for (char d : v) status = status * 10 + (d - '0');  // nghttp2 checked: three digits
        c.response_.status = status;
        c.block_is_trailers_ = false;
      }
      return 0;
    }
    if (c.block_is_trailers_)
      c.trailers_.add(n, v);
    else if (c.role_ == Role::server)
      c.request_.fields.add(n, v);
    else
      c.response_.fields.add(n, v);
    return 0;
  }

  // A field nghttp2 finds invalid (a name not a lower-case token, a value with CR, LF or NUL,
  // ...): it would drop the field and go on; the message is malformed (RFC 9113 8.2.1).
  static int on_invalid_header(nghttp2_session* session, const nghttp2_frame* frame, const uint8_t*, size_t,
                               const uint8_t*, size_t, uint8_t, void*) {
    nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id, NGHTTP2_PROTOCOL_ERROR);
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  }

  static int on_frame_recv(nghttp2_session* session, const nghttp2_frame* frame, void* user_data) {
    Http2Connection& c = of(user_data);
    int32_t id = frame->hd.stream_id;
    bool end_stream = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    switch (frame->hd.type) {
      case NGHTTP2_HEADERS:
        if (c.block_is_trailers_) {
          if (c.block_too_large_) {
            nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, id, NGHTTP2_REFUSED_STREAM);
            return 0;
          }
          join_cookies(c.trailers_);
          c.handler_.on_end(id, c.trailers_);
          return 0;
        }
        if (c.role_ == Role::server) return c.request_head_done(id, end_stream);
        if (c.block_too_large_) {
          nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, id, NGHTTP2_REFUSED_STREAM);
          return 0;
        }
        if (c.response_.status < 100) {  // "051": three digits, yet no status code
          nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, id, NGHTTP2_PROTOCOL_ERROR);
          return 0;
        }
        c.handler_.on_response_head(id, c.response_, end_stream);
        if (end_stream) c.end_of(id);
        return 0;
      case NGHTTP2_DATA:
        // DATA frames that carry nothing and end nothing cost a read and a callback each and
        // use no window: a peer that sends them in a row is flooding (Envoy counts them too).
        if (frame->hd.length == 0 && !end_stream) {
          if (++c.empty_frames_ > kMaxEmptyFrames) {
            c.error_ = "flood of empty DATA frames";
            nghttp2_session_terminate_session(session, NGHTTP2_ENHANCE_YOUR_CALM);
            return NGHTTP2_ERR_CALLBACK_FAILURE;
          }
        } else {
          c.empty_frames_ = 0;
        }
        if (end_stream) c.end_of(id);
        return 0;
      case NGHTTP2_GOAWAY:
        if (c.role_ == Role::client) c.handler_.on_goaway(frame->goaway.last_stream_id, frame->goaway.error_code);
        return 0;
      default:
        return 0;
    }
  }

  static int on_data_chunk(nghttp2_session* session, uint8_t, int32_t id, const uint8_t* data, size_t len,
                           void* user_data) {
    Http2Connection& c = of(user_data);
    Outgoing* o = c.outgoing(id);
    if (o == nullptr || o->drop_body) {
      nghttp2_session_consume(session, id, len);  // nobody reads it: the window opens at once
      return 0;
    }
    o->unconsumed += len;
    c.handler_.on_data(id, view(data, len));
    return 0;
  }

  static int on_stream_close(nghttp2_session* session, int32_t id, uint32_t error_code, void* user_data) {
    Http2Connection& c = of(user_data);
    std::unique_ptr<Outgoing> o = c.out_.take(id);
    if (!o) return 0;
    // What the owner had not passed on yet still counts against the connection's window.
    if (o->unconsumed) nghttp2_session_consume_connection(session, o->unconsumed);
    c.keep_spare(std::move(o));
    --c.open_streams_;
    c.handler_.on_stream_closed(id, error_code);
    return 0;
  }

  static int on_frame_send(nghttp2_session* session, const nghttp2_frame* frame, void* user_data) {
    if ((frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) ||
        !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
      return 0;
    Outgoing* o = of(user_data).outgoing(frame->hd.stream_id);
    if (o == nullptr) return 0;
    o->end_sent = true;
    if (o->reset_after_end) nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id, NGHTTP2_NO_ERROR);
    return 0;
  }

  static ssize_t read_body(nghttp2_session* session, int32_t id, uint8_t* buf, size_t length, uint32_t* flags,
                           nghttp2_data_source*, void* user_data) {
    Http2Connection& c = of(user_data);
    Outgoing* o = c.outgoing(id);
    if (o == nullptr) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    size_t n = std::min(length, o->data.size() - o->offset);
    std::memcpy(buf, o->data.data() + o->offset, n);
    o->offset += n;
    if (o->offset == o->data.size()) {
      o->data.clear();
      o->offset = 0;
    } else if (o->offset > 64 * 1024) {
      o->data.erase(0, o->offset);
      o->offset = 0;
    }
    if (o->data.empty() && o->end) {
      *flags |= NGHTTP2_DATA_FLAG_EOF;
      if (o->trailers.size() > 0) {
        c.nva_.clear();
        add_fields(c.nva_, o->trailers);
        if (!c.nva_.empty()) {
          *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
          if (nghttp2_submit_trailer(session, id, c.nva_.data(), c.nva_.size()) != 0)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        }
      }
      return static_cast<ssize_t>(n);
    }
    if (n == 0) {
      o->deferred = true;
      return NGHTTP2_ERR_DEFERRED;
    }
    return static_cast<ssize_t>(n);
  }
};

std::string_view Http2Connection::preface() { return {kPreface, sizeof kPreface - 1}; }

Http2Connection::Http2Connection(Role role, Http2Handler& handler, const Http2Limits& limits)
    : role_(role), handler_(handler), limits_(limits) {
  nghttp2_session_callbacks* cb = nullptr;
  nghttp2_session_callbacks_new(&cb);
  nghttp2_session_callbacks_set_on_begin_headers_callback(cb, Callbacks::on_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(cb, Callbacks::on_header);
  nghttp2_session_callbacks_set_on_invalid_header_callback(cb, Callbacks::on_invalid_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cb, Callbacks::on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, Callbacks::on_data_chunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(cb, Callbacks::on_stream_close);
  nghttp2_session_callbacks_set_on_frame_send_callback(cb, Callbacks::on_frame_send);
  nghttp2_option* opt = nullptr;
  nghttp2_option_new(&opt);
  nghttp2_option_set_no_auto_window_update(opt, 1);
  nghttp2_option_set_max_continuations(opt, limits_.max_continuations);
  nghttp2_option_set_stream_reset_rate_limit(opt, limits_.reset_burst, limits_.reset_rate);
  nghttp2_option_set_max_outbound_ack(opt, 1000);
  nghttp2_option_set_max_settings(opt, 32);
  // A client's streams before the server's SETTINGS say how many it takes.
  nghttp2_option_set_peer_max_concurrent_streams(opt, 100);
  if (role_ == Role::server)
    nghttp2_session_server_new3(&session_, cb, this, opt, http2_memory());
  else
    nghttp2_session_client_new3(&session_, cb, this, opt, http2_memory());
  nghttp2_option_del(opt);
  nghttp2_session_callbacks_del(cb);

  nghttp2_settings_entry settings[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, limits_.max_concurrent_streams},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, limits_.stream_window},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, static_cast<uint32_t>(std::min<uint64_t>(limits_.max_header_bytes, UINT32_MAX))},
      // RFC 9218: no RFC 7540 priority tree, so nghttp2 keeps no closed streams to maintain one.
      {NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES, 1},
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
  };
  size_t count = role_ == Role::server ? 4 : 5;  // ENABLE_PUSH is the client's to send
  nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, settings, count);
  if (limits_.connection_window > NGHTTP2_INITIAL_CONNECTION_WINDOW_SIZE)
    nghttp2_session_set_local_window_size(session_, NGHTTP2_FLAG_NONE, 0,
                                          static_cast<int32_t>(limits_.connection_window));
}

Http2Connection::~Http2Connection() { nghttp2_session_del(session_); }

int Http2Connection::request_head_done(int32_t id, bool end_stream) {
  Outgoing* o = outgoing(id);
  if (o == nullptr) return 0;
  if (block_too_large_) {
    o->drop_body = true;
    handler_.on_request_head_too_large(id, request_);
    return 0;
  }
  // :authority and host say the same, or the request is malformed (RFC 9113 8.3.1); HTTP/1.1
  // hops get it as host.
  size_t host = request_.fields.find("host");
  if (host != HeaderList::npos) {
    if (request_.fields.count("host") > 1 ||
        (!authority_.empty() && !iequals(trim_ows(request_.fields.value(host)), authority_))) {
      o->drop_body = true;
      nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, id, NGHTTP2_PROTOCOL_ERROR);
      return 0;
    }
  } else if (!authority_.empty()) {
    request_.fields.add("host", authority_);
  }
  join_cookies(request_.fields);
  handler_.on_request_head(id, request_, end_stream);
  if (end_stream) end_of(id);
  return 0;
}

void Http2Connection::end_of(int32_t id) {
  trailers_.clear();
  handler_.on_end(id, trailers_);
}

bool Http2Connection::receive(const char* data, size_t length) {
  ssize_t n = nghttp2_session_mem_recv(session_, reinterpret_cast<const uint8_t*>(data), length);
  if (n < 0) {
    if (*error_ == '\0') error_ = nghttp2_strerror(static_cast<int>(n));
    return false;
  }
  return !done() || nghttp2_session_want_write(session_);
}

void Http2Connection::output(std::string& out) {
  for (;;) {
    const uint8_t* p = nullptr;
    ssize_t n = nghttp2_session_mem_send(session_, &p);
    if (n < 0) {
      error_ = nghttp2_strerror(static_cast<int>(n));
      return;
    }
    if (n == 0) return;
    out.append(reinterpret_cast<const char*>(p), static_cast<size_t>(n));
  }
}

bool Http2Connection::done() const {
  return nghttp2_session_want_read(session_) == 0 && nghttp2_session_want_write(session_) == 0;
}

bool Http2Connection::submit_response(int32_t id, int status, const HeaderList& fields, bool end_stream) {
  Outgoing* o = outgoing(id);
  if (o == nullptr || o->responded || status < 100 || status > 999) return false;
  char code[4] = {static_cast<char>('0' + status / 100), static_cast<char>('0' + status / 10 % 10),
                  static_cast<char>('0' + status % 10), 0};
  nva_.clear();
  nva_.push_back(pair(":status", std::string_view(code, 3)));
  add_fields(nva_, fields);
  if (status < 200) return nghttp2_submit_headers(session_, NGHTTP2_FLAG_NONE, id, nullptr, nva_.data(), nva_.size(),
                                                  nullptr) == 0;
  nghttp2_data_provider provider{};
  provider.read_callback = Callbacks::read_body;
  o->responded = true;
  return nghttp2_submit_response(session_, id, nva_.data(), nva_.size(), end_stream ? nullptr : &provider) == 0;
}

int32_t Http2Connection::submit_request(const RequestHead& head, std::string_view scheme, std::string_view authority,
                                        bool end_stream) {
  nva_.clear();
  nva_.push_back(pair(":method", head.method));
  nva_.push_back(pair(":scheme", scheme));
  nva_.push_back(pair(":authority", authority));
  nva_.push_back(pair(":path", head.target));
  add_fields(nva_, head.fields);
  nghttp2_data_provider provider{};
  provider.read_callback = Callbacks::read_body;
  int32_t id = nghttp2_submit_request(session_, nullptr, nva_.data(), nva_.size(), end_stream ? nullptr : &provider,
                                      nullptr);
  if (id < 0) return -1;
  open_out(id);
  ++open_streams_;
  return id;
}

namespace {

// Stream states that ended, kept for the next streams of this thread (a worker's loop).
template <typename T>
std::vector<std::unique_ptr<T>>& spares() {
  thread_local std::vector<std::unique_ptr<T>> kept;
  return kept;
}

}  // namespace

void Http2Connection::open_out(int32_t id) {
  auto& kept = spares<Outgoing>();
  std::unique_ptr<Outgoing> o;
  if (kept.empty()) {
    o = std::make_unique<Outgoing>();
  } else {
    o = std::move(kept.back());
    kept.pop_back();
  }
  out_.add(id, std::move(o));
}

void Http2Connection::keep_spare(std::unique_ptr<Outgoing> o) {
  // A worker's streams both ways: a client's streams and the upstream streams they open.
  constexpr size_t kSpares = 4096;
  auto& kept = spares<Outgoing>();
  if (kept.size() >= kSpares) return;
  std::string data = std::move(o->data);
  HeaderList trailers = std::move(o->trailers);
  *o = Outgoing();
  data.clear();
  if (data.capacity() <= 1024) o->data = std::move(data);  // a big body's buffer is not kept
  trailers.clear();
  o->trailers = std::move(trailers);
  kept.push_back(std::move(o));
}

Http2Connection::Outgoing* Http2Connection::outgoing(int32_t id) const {
  const std::unique_ptr<Outgoing>* o = out_.find(id);
  return o == nullptr ? nullptr : o->get();
}

void Http2Connection::resume(int32_t id, Outgoing& o) {
  if (!o.deferred) return;
  o.deferred = false;
  nghttp2_session_resume_data(session_, id);
}

void Http2Connection::send_data(int32_t id, std::string_view piece) {
  Outgoing* o = outgoing(id);
  if (o == nullptr || o->end) return;
  o->data.append(piece);
  resume(id, *o);
}

void Http2Connection::send_end(int32_t id, const HeaderList* trailers) {
  Outgoing* o = outgoing(id);
  if (o == nullptr || o->end) return;
  o->end = true;
  if (trailers) o->trailers = *trailers;
  resume(id, *o);
}

size_t Http2Connection::queued(int32_t id) const {
  const Outgoing* o = outgoing(id);
  return o == nullptr ? 0 : o->data.size() - o->offset;
}

void Http2Connection::reset(int32_t id, uint32_t error_code) {
  nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, id, error_code);
}

void Http2Connection::end_early(int32_t id) {
  Outgoing* o = outgoing(id);
  if (o == nullptr || o->reset_after_end) return;
  o->reset_after_end = true;
  o->drop_body = true;  // what still comes of the request is read and dropped
  if (o->end_sent) nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, id, NGHTTP2_NO_ERROR);
}

void Http2Connection::consume(int32_t id, size_t n) {
  Outgoing* o = outgoing(id);
  if (o == nullptr) return;
  n = std::min<size_t>(n, o->unconsumed);
  o->unconsumed -= n;
  nghttp2_session_consume(session_, id, n);
}

uint32_t Http2Connection::peer_max_streams() const {
  return nghttp2_session_get_remote_settings(session_, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
}

void Http2Connection::shutdown() {
  nghttp2_submit_goaway(session_, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(session_),
                        NGHTTP2_NO_ERROR, nullptr, 0);
}

}  // namespace pilotfish
