// The HTTP/1.1 decoder as the session drives it (http/http1_codec.h): the head scanner checks
// every byte of a head before llhttp (strict mode) sees it, one message at a time, requests or
// responses (the first byte's low bit). The same bytes are decoded whole and split into reads
// of a size the first byte chooses: neither may crash or read out of bounds, and both must see
// the same messages, fields and body bytes, and fail (or not) alike. A decoder that a split can
// change is one a smuggler can steer.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "http/http1_codec.h"

namespace {

using pilotfish::Http1Decoder;
using pilotfish::Step;

// Everything the decoder reported, in order. A field's text may arrive in several pieces
// (one per read it spans): consecutive pieces of the same kind are joined.
struct Recorder final : pilotfish::Http1RequestHandler, pilotfish::Http1ResponseHandler {
  std::vector<std::pair<char, std::string>> events;
  Step add(char tag, std::string_view piece = {}) {
    bool text = tag == 'U' || tag == 'F' || tag == 'V' || tag == 'D' || tag == 'S';
    if (text && !events.empty() && events.back().first == tag)
      events.back().second.append(piece);
    else
      events.emplace_back(tag, std::string(piece));
    return Step::go;
  }
  Step on_message_begin() override { return add('B'); }
  Step on_url(std::string_view p) override { return add('U', p); }
  Step on_header_field(std::string_view p) override { return add('F', p); }
  Step on_header_value(std::string_view p) override { return add('V', p); }
  Step on_header_value_complete() override { return add('v'); }
  Step on_headers_complete() override { return add('H'); }
  Step on_body(std::string_view p) override { return add('D', p); }
  Step on_message_complete() override {
    add('E');
    return Step::pause;  // as the session does: one message at a time
  }
  Step on_response_status(std::string_view p) override { return add('S', p); }
  Step on_response_header_field(std::string_view p) override { return add('F', p); }
  Step on_response_header_value(std::string_view p) override { return add('V', p); }
  Step on_response_header_value_complete() override { return add('v'); }
  Step on_response_headers_complete() override { return add('H'); }
  Step on_response_body(std::string_view p) override { return add('D', p); }
  Step on_response_message_complete() override {
    add('E');
    return Step::pause;
  }
};

struct Run {
  std::vector<std::pair<char, std::string>> events;
  bool failed = false;
};

Run decode(const char* p, size_t size, size_t chunk, bool responses) {
  Recorder r;
  Http1Decoder request(static_cast<pilotfish::Http1RequestHandler*>(&r));
  Http1Decoder response(static_cast<pilotfish::Http1ResponseHandler*>(&r));
  Http1Decoder& d = responses ? response : request;
  Run run;
  size_t left = size;
  while (left > 0 && !run.failed) {
    size_t n = left < chunk ? left : chunk;
    const char* q = p;
    size_t m = n;
    while (m > 0) {
      Http1Decoder::Outcome o = d.execute(q, m);
      if (o.kind == Http1Decoder::Outcome::failed) {
        run.failed = true;
        break;
      }
      if (o.kind == Http1Decoder::Outcome::upgrade) {
        // What follows is another protocol's bytes: decoding ends here, split or not.
        r.add('X');
        run.events = r.events;
        return run;
      }
      if (o.kind == Http1Decoder::Outcome::paused) d.resume();
      if (o.consumed > m) abort();
      q += o.consumed;
      m -= o.consumed;
      if (o.kind == Http1Decoder::Outcome::more) break;
    }
    p += n;
    left -= n;
  }
  run.events = r.events;
  return run;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  size_t chunk = 1 + (data[0] >> 1) % 64;
  bool responses = data[0] & 1;
  const char* p = reinterpret_cast<const char*>(data + 1);
  Run whole = decode(p, size - 1, size, responses);
  Run split = decode(p, size - 1, chunk, responses);
  // Both fail, or neither; when neither does, they saw exactly the same. (Before a failure a
  // split run may have reported part of the field the bad byte is in: not compared.)
  if (whole.failed != split.failed) abort();
  if (!whole.failed && whole.events != split.events) abort();
  return 0;
}
