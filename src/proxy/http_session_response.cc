// An HTTP/1.1 connection's responses: what its Exchange hands over (interim and final heads,
// the body, trailers) written as HTTP/1.1 with the framing the client can read, the WebSocket
// tunnel after a 101, and the connection's timer.
#include "http/http1_codec.h"
#include "pilotfish/header_rules.h"
#include "proxy/http_session.h"
#include "tls/tls.h"

namespace pilotfish {

void HttpSession::exchange_head(const ResponseHead& head, bool no_body, bool has_length) {
  int status = head.status;
  if (status == 101) {
    tunnel_ = true;
    write_response_head(head);
    return;
  }
  if (status < 200) {
    // An HTTP/1.0 client is not sent interim responses.
    if (request_.version_minor() == 1) write_response_head(head);
    return;
  }
  if (no_body) {
    h1_.framing = Framing::none;
    // A head alone from an HTTP/2 upstream (not a HEAD's, 204 or 304): the client is told the
    // body is empty, not left to read until a close.
    h1_.zero_length = !has_length && status != 204 && status != 304 && !request_.method_is_head();
  } else if (has_length) {
    h1_.framing = Framing::length;
  } else if (request_.version_minor() == 1) {
    h1_.framing = Framing::chunked;
  } else {
    h1_.framing = Framing::close;
    h1_.keep_alive = false;
  }
  if (close_after_response_ || draining()) h1_.keep_alive = false;
  write_response_head(head);
}

void HttpSession::write_response_head(const ResponseHead& head) {
  using namespace std::string_view_literals;  // no strlen per piece: this runs for every response
  std::string& o = out();
  int status = head.status;
  o += "HTTP/1.1 "sv;
  append_uint(o, static_cast<uint64_t>(status));
  o += ' ';
  o += reason_phrase(status);
  o += "\r\n"sv;
  std::string tokens = connection_tokens(head.fields);
  for (size_t i = 0; i < head.fields.size(); ++i) {
    std::string_view name = head.fields.name(i);
    if (is_hop_by_hop(name, tokens)) continue;
    if (status < 200 || status == 204 || (status == 304 && iequals(name, "content-length"))) {
      if (iequals(name, "content-length")) continue;
    }
    o += name;
    o += ": "sv;
    o += trim_ows(head.fields.value(i));
    o += "\r\n"sv;
  }
  if (status == 101) {
    o += "connection: upgrade\r\nupgrade: "sv;
    size_t u = head.fields.find("upgrade");
    o += u != HeaderList::npos ? trim_ows(head.fields.value(u)) : std::string_view("websocket");
    o += "\r\n\r\n"sv;
    return;
  }
  if (status >= 200) {
    if (h1_.framing == Framing::chunked) o += "transfer-encoding: chunked\r\n"sv;
    if (h1_.zero_length) o += "content-length: 0\r\n"sv;
    // Answered before the request is all in: the rest of it cannot be told from a next request,
    // so the connection closes after this response (maybe_finish_request), and says so.
    if (!ex().request_complete()) h1_.keep_alive = false;
    if (!h1_.keep_alive)
      o += "connection: close\r\n"sv;
    else if (request_.version_minor() == 0)
      o += "connection: keep-alive\r\n"sv;
  }
  o += "\r\n"sv;
}

void HttpSession::exchange_body(std::string_view piece) {
  if (h1_.framing == Framing::chunked && !tunnel_) {
    append_chunk_header(out(), piece.size());
    append(piece);
    append("\r\n");
  } else {
    append(piece);
  }
}

void HttpSession::exchange_end(const ResponseHead& head) {
  if (h1_.framing == Framing::chunked) append_response_last_chunk(out(), head.trailers, connection_tokens(head.fields));
}

void HttpSession::exchange_upgraded(std::string_view rest) {
  // From here both sides are bytes: what each side sent after its head goes to the other.
  h1_.in_request = false;
  if (!rest.empty()) append(rest);
  if (leftover_.size() > leftover_off_)
    ex().tunnel_send(leftover_.data() + leftover_off_, leftover_.size() - leftover_off_);
  else
    ex().flush_upstream();
  leftover_.clear();
  leftover_off_ = 0;
  if (flush() != 0) {
    close();
    return;
  }
  arm_timer(Timer::idle, kTunnelIdleMs);
  start_read();
}

// ---------------------------------------------------------------------------------------------
// Timers

void HttpSession::on_timeout() {
  if (h2_) {
    h2_->on_timeout();
    return;
  }
  switch (timer_kind_) {
    case Timer::none: return;
    case Timer::idle: close(); return;
    case Timer::handshake:
      if (tls()) tls()->abandon("handshake not complete within header_timeout");
      close();
      return;
    case Timer::header:
    case Timer::body:
      if (!h1_.in_request || ex().response_started()) return;
      // A client that trickles its head or body is cut off here, whatever it still sends.
      send_local_response(408, timer_kind_ == Timer::header ? "header_timeout" : "body_timeout", true);
      flush();
      return;
    case Timer::upstream: {
      if (!h1_.in_request) return;
      bool was_delayed = ex().delayed();
      ex().on_timer();
      // The delay is over and the body is still coming: it has body_timeout from now.
      if (was_delayed && !closing() && !ex().delayed() && !ex().request_complete() && !ex().local_response() &&
          listener_->body_timeout.count() > 0)
        arm_timer(Timer::body, static_cast<uint64_t>(listener_->body_timeout.count()));
      return;
    }
  }
}

}  // namespace pilotfish
