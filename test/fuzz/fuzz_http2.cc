// The HTTP/2 codec (http/http2_codec.h) fed a peer's bytes. The first byte's low bit picks the
// role: a server (the input follows the client preface) or a client with one request open (the
// input is the server's frames). Bits 1-3 choose how the input is cut into reads. The owner
// answers every request that ends with a response (body and trailers), and passes every body
// byte on at once. Abort when:
//   - a request head handed over is malformed after all: a field name that is not a lower-case
//     token, an invalid value, a connection-specific field, more than one host, no method or
//     no target (nghttp2 and the codec refuse those as stream errors);
//   - a response head has a status outside 100-999;
//   - the codec reports a stream closed that it never opened, or twice, or data or an end on a
//     stream after it closed;
//   - more streams are open at once than the limit allows (plus the one being refused).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <set>
#include <string>

#include "http/http1_codec.h"
#include "http/http2_codec.h"
#include "pilotfish/header_rules.h"

namespace {

using pilotfish::HeaderList;
using pilotfish::Http2Connection;

constexpr uint32_t kMaxStreams = 16;
constexpr size_t kCuts[8] = {0, 1, 2, 7, 9, 64, 1000, 16384};

bool lower_token(std::string_view name) {
  if (!pilotfish::is_token(name)) return false;
  for (char c : name)
    if (c >= 'A' && c <= 'Z') return false;
  return true;
}

struct Owner final : pilotfish::Http2Handler {
  Http2Connection* c = nullptr;
  std::set<int32_t> open, closed;

  void check_stream(int32_t id) {
    if (closed.count(id)) abort();  // an event after the close
  }
  void on_request_head(int32_t id, pilotfish::RequestHead& h, bool) override {
    check_stream(id);
    open.insert(id);
    if (h.method.empty() || h.target.empty() || h.fields.count("host") > 1) abort();
    if (!pilotfish::fields_valid(h.fields)) abort();
    for (size_t i = 0; i < h.fields.size(); ++i) {
      std::string_view n = h.fields.name(i);
      if (!lower_token(n)) abort();
      for (const char* cs : {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"})
        if (n == cs) abort();
      if (n == "te" && h.fields.value(i) != "trailers") abort();
    }
  }
  void on_request_head_too_large(int32_t id, const pilotfish::RequestHead&) override {
    check_stream(id);
    open.insert(id);
    c->submit_response(id, 431, HeaderList{}, true);
  }
  void on_response_head(int32_t id, pilotfish::ResponseHead& h, bool) override {
    check_stream(id);
    if (h.status < 100 || h.status > 999) abort();
  }
  void on_data(int32_t id, std::string_view piece) override {
    check_stream(id);
    c->consume(id, piece.size());
  }
  void on_end(int32_t id, HeaderList& trailers) override {
    check_stream(id);
    if (!pilotfish::fields_valid(trailers)) abort();
    if (open.count(id)) {  // a server's request is in: answer it
      HeaderList fields;
      fields.add("content-type", "text/plain");
      if (c->submit_response(id, 200, fields, false)) {
        c->send_data(id, "answer");
        HeaderList t;
        t.add("grpc-status", "0");
        c->send_end(id, &t);
      }
    }
  }
  void on_stream_closed(int32_t id, uint32_t) override {
    if (closed.count(id)) abort();
    closed.insert(id);
    open.erase(id);
  }
  void on_goaway(int32_t, uint32_t) override {}
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  bool server = (data[0] & 1) == 0;
  size_t cut = kCuts[(data[0] >> 1) & 7];
  std::string input(reinterpret_cast<const char*>(data + 1), size - 1);
  Owner owner;
  pilotfish::Http2Limits limits;
  limits.max_concurrent_streams = kMaxStreams;
  limits.max_header_bytes = 4096;
  Http2Connection c(server ? Http2Connection::Role::server : Http2Connection::Role::client, owner, limits);
  owner.c = &c;
  std::string out;
  if (server) {
    input.insert(0, Http2Connection::preface());
  } else {
    pilotfish::RequestHead req;
    req.method = "POST";
    req.target = "/";
    int32_t id = c.submit_request(req, "http", "a", false);
    if (id > 0) {
      c.send_data(id, "request body");
      c.send_end(id, nullptr);
    }
  }
  c.output(out);
  size_t step = cut == 0 ? input.size() : cut;
  for (size_t at = 0; at < input.size(); at += step) {
    if (!c.receive(input.data() + at, std::min(step, input.size() - at))) break;
    out.clear();
    c.output(out);
    if (owner.open.size() > kMaxStreams + 1) abort();
  }
  out.clear();
  c.output(out);
  return 0;
}
