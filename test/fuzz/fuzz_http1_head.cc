// The HTTP/1.1 decoder as the session drives it (http/http1_codec.h): the head scanner checks
// every byte of a head before llhttp (strict mode) sees it, one message at a time, requests or
// responses (the first byte's low bit). The same bytes are decoded whole and split into reads
// of a size the first byte chooses: neither may crash or read out of bounds, and both must see
// the same messages (heads, body bytes, trailers), and fail (or not) alike, the head limit
// included. A decoder that a split can change is one a smuggler can steer.
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

// Everything the decoder reported, in order: heads and trailers written out whole (the
// decoder assembles them from however many reads they span), body bytes joined.
std::string text_of(const pilotfish::HeaderList& fields) {
  std::string t;
  for (size_t i = 0; i < fields.size(); ++i) {
    t.append(fields.name(i)).append(1, ':').append(fields.value(i)).append(1, '\n');
  }
  return t;
}

struct Recorder final : pilotfish::Http1RequestHandler, pilotfish::Http1ResponseHandler {
  std::vector<std::pair<char, std::string>> events;
  Step add(char tag, std::string piece = {}) {
    if (tag == 'D' && !events.empty() && events.back().first == tag)
      events.back().second.append(piece);
    else
      events.emplace_back(tag, std::move(piece));
    return Step::go;
  }
  Step on_message_begin() override { return add('B'); }
  Step on_request_head(pilotfish::RequestHead& h) override {
    return add('H', std::string(h.method) + ' ' + h.target + ' ' + std::to_string(h.version_minor) + '\n' +
                        text_of(h.fields));
  }
  Step on_body(std::string_view p) override { return add('D', std::string(p)); }
  Step on_message_complete(pilotfish::RequestHead& h) override {
    add('E', text_of(h.trailers));
    return Step::pause;  // as the session does: one message at a time
  }
  Step on_response_head(pilotfish::ResponseHead& h) override {
    return add('H', std::to_string(h.status) + ' ' + h.reason + '\n' + text_of(h.fields));
  }
  Step on_response_body(std::string_view p) override { return add('D', std::string(p)); }
  Step on_response_message_complete(pilotfish::ResponseHead& h) override {
    add('E', text_of(h.trailers));
    return Step::pause;
  }
};

struct Run {
  std::vector<std::pair<char, std::string>> events;
  bool failed = false;
};

constexpr uint64_t kHeadLimit = 2048;

Run decode(const char* p, size_t size, size_t chunk, bool responses) {
  Recorder r;
  pilotfish::RequestHead request_head;
  pilotfish::ResponseHead response_head;
  Http1Decoder request(static_cast<pilotfish::Http1RequestHandler*>(&r), &request_head);
  Http1Decoder response(static_cast<pilotfish::Http1ResponseHandler*>(&r), &response_head);
  Http1Decoder& d = responses ? response : request;
  d.set_head_limit(kHeadLimit);  // a head (or trailers) past it fails, however it is split
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
