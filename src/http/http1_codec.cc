#include "http/http1_codec.h"

#include <llhttp.h>

#include <charconv>
#include <cinttypes>
#include <cstdio>
#include <new>

#include "pilotfish/header_rules.h"

namespace pilotfish {

struct Http1Decoder::State {
  llhttp_t parser;
  HeadScanner scanner;
  Http1RequestHandler* request = nullptr;
  Http1ResponseHandler* response = nullptr;
  RequestHead* request_head = nullptr;
  ResponseHead* response_head = nullptr;
  uint64_t limit = UINT64_MAX;  // head bytes (set_head_limit)
  uint64_t bytes = 0;           // of the head, then of the trailer section
  bool in_trailers = false;     // the head is complete: fields that follow are trailers
  bool too_large = false;
  bool go_on = false;           // paused at a message's end though its handler said go
};

namespace {

int code_of(Step step) {
  switch (step) {
    case Step::go: return 0;
    case Step::skip_body: return 1;
    case Step::fail: return HPE_USER;
    case Step::pause: return HPE_PAUSED;
  }
  return HPE_USER;
}

// At a message's end llhttp stops even when the handler says go, and execute() goes on from
// there: the next head passes through HeadScanner like every other (llhttp itself would read a
// head that follows in the same bytes unchecked). After an upgrade (a request, or a 101, with
// Upgrade and Connection: upgrade) llhttp stops by itself.
int end_code(Http1Decoder::State& s, Step step) {
  if (step != Step::go || s.parser.upgrade) return code_of(step);
  s.go_on = true;
  return HPE_PAUSED;
}

Http1Decoder::State* state_of(llhttp_t* p) { return static_cast<Http1Decoder::State*>(p->data); }
std::string_view piece(const char* at, size_t n) { return {at, n}; }

// At the last chunk's size line, llhttp stops, so that execute() hands the trailer section to
// HeadScanner like a head: llhttp alone would take a bare LF as its end, or unfold obs-fold.
int chunk_header(llhttp_t* p) {
  if (p->content_length != 0) return 0;
  auto& s = *state_of(p);
  s.scanner.reset_for_trailers();
  s.go_on = true;
  return HPE_PAUSED;
}

// Counts `n` more bytes of the head (or trailers): 0, or the error that stops the decoder.
int count(Http1Decoder::State& s, size_t n) {
  s.bytes += n;
  if (s.bytes <= s.limit) return 0;
  s.too_large = true;
  return HPE_USER;
}

// The head's fields and trailer fields arrive in the same callbacks.
template <typename Head>
HeaderList& fields_of(Http1Decoder::State& s, Head& head) {
  return s.in_trailers ? head.trailers : head.fields;
}

template <typename Head>
int begin(Http1Decoder::State& s, Head& head) {
  head.clear();
  s.bytes = 0;
  s.in_trailers = false;
  return 0;
}

template <typename Head>
int field(Http1Decoder::State& s, Head& head, const char* at, size_t n) {
  fields_of(s, head).append_name(piece(at, n));
  return count(s, n);
}

template <typename Head>
int value(Http1Decoder::State& s, Head& head, const char* at, size_t n) {
  fields_of(s, head).append_value(piece(at, n));
  return count(s, n);
}

template <typename Head>
int value_complete(Http1Decoder::State& s, Head& head) {
  fields_of(s, head).end_header();
  return count(s, 4);  // ": " and CRLF
}

template <typename Head>
void head_complete(Http1Decoder::State& s, Head& head) {
  head.version_major = s.parser.http_major;
  head.version_minor = s.parser.http_minor;
  s.in_trailers = true;
  s.bytes = 0;  // the trailer section counts on its own
}

const llhttp_settings_t& request_settings() {
  static const llhttp_settings_t s = [] {
    llhttp_settings_t x;
    llhttp_settings_init(&x);
    x.on_message_begin = [](llhttp_t* p) {
      auto& s = *state_of(p);
      begin(s, *s.request_head);
      return code_of(s.request->on_message_begin());
    };
    x.on_url = [](llhttp_t* p, const char* a, size_t n) {
      auto& s = *state_of(p);
      s.request_head->target.append(a, n);
      return count(s, n);
    };
    x.on_header_field = [](llhttp_t* p, const char* a, size_t n) { return field(*state_of(p), *state_of(p)->request_head, a, n); };
    x.on_header_value = [](llhttp_t* p, const char* a, size_t n) { return value(*state_of(p), *state_of(p)->request_head, a, n); };
    x.on_header_value_complete = [](llhttp_t* p) { return value_complete(*state_of(p), *state_of(p)->request_head); };
    x.on_headers_complete = [](llhttp_t* p) {
      auto& s = *state_of(p);
      head_complete(s, *s.request_head);
      s.request_head->method = llhttp_method_name(static_cast<llhttp_method_t>(p->method));
      return code_of(s.request->on_request_head(*s.request_head));
    };
    x.on_body = [](llhttp_t* p, const char* a, size_t n) { return code_of(state_of(p)->request->on_body(piece(a, n))); };
    x.on_chunk_header = chunk_header;
    x.on_message_complete = [](llhttp_t* p) {
      auto& s = *state_of(p);
      s.scanner.reset();  // the next message's head is checked from its first byte
      return end_code(s, s.request->on_message_complete(*s.request_head));
    };
    return x;
  }();
  return s;
}

const llhttp_settings_t& response_settings() {
  static const llhttp_settings_t s = [] {
    llhttp_settings_t x;
    llhttp_settings_init(&x);
    x.on_message_begin = [](llhttp_t* p) { return begin(*state_of(p), *state_of(p)->response_head); };
    x.on_status = [](llhttp_t* p, const char* a, size_t n) {
      auto& s = *state_of(p);
      s.response_head->reason.append(a, n);
      return count(s, n);
    };
    x.on_header_field = [](llhttp_t* p, const char* a, size_t n) { return field(*state_of(p), *state_of(p)->response_head, a, n); };
    x.on_header_value = [](llhttp_t* p, const char* a, size_t n) { return value(*state_of(p), *state_of(p)->response_head, a, n); };
    x.on_header_value_complete = [](llhttp_t* p) { return value_complete(*state_of(p), *state_of(p)->response_head); };
    x.on_headers_complete = [](llhttp_t* p) {
      auto& s = *state_of(p);
      head_complete(s, *s.response_head);
      s.response_head->status = p->status_code;
      return code_of(s.response->on_response_head(*s.response_head));
    };
    x.on_body = [](llhttp_t* p, const char* a, size_t n) {
      return code_of(state_of(p)->response->on_response_body(piece(a, n)));
    };
    x.on_chunk_header = chunk_header;
    x.on_message_complete = [](llhttp_t* p) {
      auto& s = *state_of(p);
      s.scanner.reset();  // an interim response is followed by another head
      return end_code(s, s.response->on_response_message_complete(*s.response_head));
    };
    return x;
  }();
  return s;
}

}  // namespace

static_assert(sizeof(Http1Decoder::State) <= 256 && alignof(Http1Decoder::State) <= 16,
              "Http1Decoder::kStateBytes is too small for its State");

Http1Decoder::Http1Decoder(Http1RequestHandler* handler, RequestHead* head) : state_(new (storage_) State()) {
  state_->request = handler;
  state_->request_head = head;
  restart();
}

Http1Decoder::Http1Decoder(Http1ResponseHandler* handler, ResponseHead* head) : state_(new (storage_) State()) {
  state_->response = handler;
  state_->response_head = head;
  restart();
}

void Http1Decoder::set_head_limit(uint64_t bytes) { state_->limit = bytes; }

Http1Decoder::~Http1Decoder() { state_->~State(); }

void Http1Decoder::restart() {
  if (state_->request)
    llhttp_init(&state_->parser, HTTP_REQUEST, &request_settings());
  else
    llhttp_init(&state_->parser, HTTP_RESPONSE, &response_settings());
  state_->parser.data = state_;
  state_->scanner.reset();
  state_->too_large = false;
  state_->go_on = false;
}

Http1Decoder::Outcome Http1Decoder::execute(const char* data, size_t length) {
  // The bytes of a message head go to llhttp only after HeadScanner accepted them.
  State& s = *state_;
  size_t offset = 0;
  while (offset < length) {
    size_t n = length - offset;
    if (s.scanner.in_head() && s.scanner.feed(data + offset, length - offset, &n) == HeadScanner::Result::invalid)
      return {Outcome::failed, offset, "bare CR or LF, or obs-fold, in the head"};
    llhttp_errno_t err = llhttp_execute(&s.parser, data + offset, n);
    if (err != HPE_OK) {
      const char* pos = llhttp_get_error_pos(&s.parser);
      size_t consumed = pos && pos >= data && pos <= data + length ? static_cast<size_t>(pos - data) : length;
      if (err == HPE_PAUSED && s.go_on) {
        s.go_on = false;
        llhttp_resume(&s.parser);
        offset = consumed;
        // Stopped on the last byte given: what llhttp does after a message's end (or the step
        // into the trailers) runs now, not at the next bytes (finish() counts on it).
        if (offset == length && llhttp_execute(&s.parser, data + length, 0) != HPE_OK) {
          const char* reason = llhttp_get_error_reason(&s.parser);
          return {Outcome::failed, length, reason && *reason ? reason : "llhttp"};
        }
        continue;
      }
      if (err == HPE_PAUSED) return {Outcome::paused, consumed, ""};
      if (err == HPE_PAUSED_UPGRADE) return {Outcome::upgrade, consumed, ""};
      if (s.too_large) return {Outcome::failed, consumed, "the head or the trailers are too large", true};
      const char* reason = llhttp_get_error_reason(&s.parser);
      return {Outcome::failed, consumed, reason && *reason ? reason : llhttp_errno_name(err)};
    }
    offset += n;
  }
  return {Outcome::more, length, ""};
}

void Http1Decoder::resume() { llhttp_resume(&state_->parser); }

bool Http1Decoder::finish() {
  llhttp_errno_t done = llhttp_finish(&state_->parser);
  state_->go_on = false;  // a message it ended is the last: nothing to go on to
  return done == HPE_OK || done == HPE_PAUSED;
}

int Http1Decoder::version_major() const { return state_->parser.http_major; }
int Http1Decoder::version_minor() const { return state_->parser.http_minor; }
std::string_view Http1Decoder::method_name() const {
  return llhttp_method_name(static_cast<llhttp_method_t>(state_->parser.method));
}
bool Http1Decoder::method_is_head() const { return state_->parser.method == HTTP_HEAD; }
bool Http1Decoder::method_is_connect() const { return state_->parser.method == HTTP_CONNECT; }
bool Http1Decoder::method_is_options() const { return state_->parser.method == HTTP_OPTIONS; }
bool Http1Decoder::method_is_idempotent() const {
  switch (state_->parser.method) {
    case HTTP_GET: case HTTP_HEAD: case HTTP_OPTIONS: case HTTP_PUT: case HTTP_DELETE: case HTTP_TRACE:
      return true;
    default:
      return false;
  }
}
int Http1Decoder::status_code() const { return state_->parser.status_code; }
bool Http1Decoder::chunked() const { return (state_->parser.flags & F_CHUNKED) != 0; }
bool Http1Decoder::has_content_length() const { return (state_->parser.flags & F_CONTENT_LENGTH) != 0; }
uint64_t Http1Decoder::content_length() const { return state_->parser.content_length; }
bool Http1Decoder::upgrade() const { return state_->parser.upgrade != 0; }
bool Http1Decoder::keep_alive() const { return llhttp_should_keep_alive(&state_->parser) != 0; }

bool framing_headers_valid(const HeaderList& h) {
  size_t te = h.count("transfer-encoding");
  size_t cl = h.count("content-length");
  if (te > 1 || cl > 1 || (te && cl)) return false;
  if (te && !iequals(trim_ows(h.value(h.find("transfer-encoding"))), "chunked")) return false;
  if (cl) {
    std::string_view v = trim_ows(h.value(h.find("content-length")));
    if (v.empty() || v.size() > 19) return false;
    for (char c : v)
      if (c < '0' || c > '9') return false;
  }
  return true;
}

bool http1_method_known(std::string_view method) {
  if (method == "PRI") return false;  // HTTP/2's preface, never a request
#define PILOTFISH_METHOD(num, name, string) \
  if (method == #string) return true;
  HTTP_METHOD_MAP(PILOTFISH_METHOD)
#undef PILOTFISH_METHOD
  return false;
}

bool fields_valid(const HeaderList& h) {
  for (size_t i = 0; i < h.size(); ++i)
    if (!is_token(h.name(i)) || !is_valid_field_value(h.value(i))) return false;
  return true;
}

std::string http1_parser_version() {
  return "llhttp " + std::to_string(LLHTTP_VERSION_MAJOR) + "." + std::to_string(LLHTTP_VERSION_MINOR) + "." +
         std::to_string(LLHTTP_VERSION_PATCH);
}

uint64_t content_length_value(std::string_view value) {
  uint64_t n = 0;
  for (char c : trim_ows(value)) {
    uint64_t digit = static_cast<uint64_t>(c - '0');
    n = n > (UINT64_MAX - digit) / 10 ? UINT64_MAX : n * 10 + digit;
  }
  return n;
}

bool response_head_acceptable(const Http1Decoder& decoder, const ResponseHead& head) {
  constexpr size_t kMaxReasonBytes = 1024;
  int status = decoder.status_code();
  return decoder.version_major() == 1 && status >= 100 && status <= 999 && fields_valid(head.fields) &&
         framing_headers_valid(head.fields) && head.reason.size() <= kMaxReasonBytes && is_valid_field_value(head.reason);
}

uint64_t keep_alive_idle_limit_ms(const HeaderList& fields) {
  size_t ka = fields.find("keep-alive");
  if (ka == HeaderList::npos) return 0;
  std::string_view v = fields.value(ka);
  size_t t = v.find("timeout=");
  if (t == std::string_view::npos) return 0;
  uint64_t seconds = 0;
  size_t i = t + 8;
  while (i < v.size() && v[i] >= '0' && v[i] <= '9' && seconds < 1'000'000) seconds = seconds * 10 + (v[i++] - '0');
  return seconds == 0 ? 1 : seconds * 800;
}

// std::to_chars, not snprintf: these run for every response (its status, the attempt number,
// each chunk's size), and snprintf's format parsing costs about 600 instructions a call.
void append_uint(std::string& out, uint64_t v) {
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, static_cast<size_t>(r.ptr - buf));
}

bool allowed_in_trailers(std::string_view name) {
  static constexpr std::string_view kNotInTrailers[] = {
      // framing, routing, hop-by-hop
      "content-length", "transfer-encoding", "host", "connection", "keep-alive", "proxy-connection", "te", "trailer",
      "upgrade",
      // authentication and state
      "authorization", "proxy-authorization", "proxy-authenticate", "www-authenticate", "cookie", "set-cookie",
      // request modifiers and response control
      "cache-control", "expect", "max-forwards", "pragma", "range", "if-match", "if-none-match", "if-modified-since",
      "if-unmodified-since", "if-range", "age", "expires", "date", "location", "retry-after", "vary", "warning",
      // the content's description
      "content-encoding", "content-type", "content-range", "content-location", "content-language"};
  for (auto n : kNotInTrailers)
    if (same_field_name_folded(name, n)) return false;
  return true;
}

void append_chunk_header(std::string& out, size_t length) {
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof buf - 2, length, 16);
  *r.ptr++ = '\r';
  *r.ptr++ = '\n';
  out.append(buf, static_cast<size_t>(r.ptr - buf));
}

// pilotfish writes its own reason phrase for every response, an upstream's included: the phrase
// means nothing to clients (HTTP/2 has none), and an upstream's own text would be one more
// piece of outside text in a response head.
const char* reason_phrase(int status) {
  switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 103: return "Early Hints";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 203: return "Non-Authoritative Information";
    case 204: return "No Content";
    case 205: return "Reset Content";
    case 206: return "Partial Content";
    case 300: return "Multiple Choices";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 402: return "Payment Required";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 407: return "Proxy Authentication Required";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 416: return "Range Not Satisfiable";
    case 417: return "Expectation Failed";
    case 421: return "Misdirected Request";
    case 422: return "Unprocessable Content";
    case 425: return "Too Early";
    case 426: return "Upgrade Required";
    case 428: return "Precondition Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 451: return "Unavailable For Legal Reasons";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
  }
}

}  // namespace pilotfish
