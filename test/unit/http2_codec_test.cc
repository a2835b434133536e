// The HTTP/2 codec (http/http2_codec.h): a server and a client connection of pilotfish's own,
// talking through memory, and a raw nghttp2 client that sends what pilotfish's never would
// (malformed messages, floods). Every byte between them is a real HTTP/2 frame.
#include "http/http2_codec.h"

#include <gtest/gtest.h>
#include <nghttp2/nghttp2.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace pilotfish {
namespace {

struct Stream {
  RequestHead request;
  ResponseHead response;
  std::vector<int> statuses;  // every response head, interim ones too
  std::string body;
  HeaderList trailers;
  bool ended = false;
  bool too_large = false;
  bool closed = false;
  uint32_t error = 0;
};

struct Recorder final : Http2Handler {
  std::map<int32_t, Stream> streams;
  int32_t goaway_last = -1;
  bool consume_at_once = true;
  Http2Connection* connection = nullptr;

  void on_request_head(int32_t id, RequestHead& head, bool) override { std::swap(streams[id].request, head); }
  void on_request_head_too_large(int32_t id, const RequestHead&) override { streams[id].too_large = true; }
  void on_response_head(int32_t id, ResponseHead& head, bool) override {
    streams[id].statuses.push_back(head.status);
    std::swap(streams[id].response, head);
  }
  void on_data(int32_t id, std::string_view piece) override {
    streams[id].body.append(piece);
    if (consume_at_once && connection) connection->consume(id, piece.size());
  }
  void on_end(int32_t id, HeaderList& trailers) override {
    streams[id].ended = true;
    streams[id].trailers = trailers;
  }
  void on_stream_closed(int32_t id, uint32_t error) override {
    streams[id].closed = true;
    streams[id].error = error;
  }
  void on_goaway(int32_t last, uint32_t) override { goaway_last = last; }
};

struct Pair {
  Recorder server_events, client_events;
  Http2Connection server;
  Http2Connection client{Http2Connection::Role::client, client_events};
  explicit Pair(const Http2Limits& server_limits = {})
      : server(Http2Connection::Role::server, server_events, server_limits) {
    server_events.connection = &server;
    client_events.connection = &client;
  }
  // Moves bytes both ways until neither side has anything to say.
  void pump() {
    for (int i = 0; i < 1000; ++i) {
      std::string a, b;
      client.output(a);
      if (!a.empty()) server.receive(a.data(), a.size());
      server.output(b);
      if (!b.empty()) client.receive(b.data(), b.size());
      if (a.empty() && b.empty()) return;
    }
    FAIL() << "the two sides never went quiet";
  }
};

RequestHead get(std::string target) {
  RequestHead h;
  h.method = "GET";
  h.target = std::move(target);
  h.fields.add("Accept", "*/*");
  return h;
}

TEST(Http2Codec, ARequestAndItsResponseWithBodyAndTrailersCrossIntact) {
  Pair p;
  RequestHead req;
  req.method = "POST";
  req.target = "/orders?id=7";
  req.fields.add("Content-Type", "application/grpc");
  req.fields.add("Connection", "keep-alive");  // connection-specific: never written in HTTP/2
  req.fields.add("TE", "trailers");
  int32_t id = p.client.submit_request(req, "http", "shop.local", false);
  ASSERT_GT(id, 0);
  p.client.send_data(id, "hello ");
  p.client.send_data(id, "world");
  HeaderList req_trailers;
  req_trailers.add("x-checksum", "42");
  p.client.send_end(id, &req_trailers);
  p.pump();

  Stream& s = p.server_events.streams[id];
  EXPECT_EQ(s.request.method, "POST");
  EXPECT_EQ(s.request.target, "/orders?id=7");
  EXPECT_EQ(s.request.version_major, 2);
  EXPECT_EQ(s.request.fields.value(s.request.fields.find("content-type")), "application/grpc");
  EXPECT_EQ(s.request.fields.name(0), "content-type");  // lower case on the wire
  EXPECT_EQ(s.request.fields.value(s.request.fields.find("host")), "shop.local");  // from :authority
  EXPECT_EQ(s.request.fields.find("connection"), HeaderList::npos);
  EXPECT_EQ(s.request.fields.value(s.request.fields.find("te")), "trailers");
  EXPECT_EQ(s.body, "hello world");
  ASSERT_TRUE(s.ended);
  ASSERT_EQ(s.trailers.size(), 1u);
  EXPECT_EQ(s.trailers.value(0), "42");

  HeaderList fields;
  fields.add("Content-Type", "application/grpc");
  fields.add("Transfer-Encoding", "chunked");  // dropped
  ASSERT_TRUE(p.server.submit_response(id, 200, fields, false));
  p.server.send_data(id, "answer");
  HeaderList trailers;
  trailers.add("grpc-status", "0");
  trailers.add("grpc-message", "OK");
  p.server.send_end(id, &trailers);
  p.pump();

  Stream& c = p.client_events.streams[id];
  EXPECT_EQ(c.statuses, std::vector<int>{200});
  EXPECT_EQ(c.response.fields.find("transfer-encoding"), HeaderList::npos);
  EXPECT_EQ(c.body, "answer");
  ASSERT_TRUE(c.ended);
  ASSERT_EQ(c.trailers.size(), 2u);
  EXPECT_EQ(c.trailers.name(0), "grpc-status");
  EXPECT_TRUE(c.closed);
  EXPECT_EQ(c.error, 0u);
  EXPECT_TRUE(p.server_events.streams[id].closed);
  EXPECT_EQ(p.server.open_streams(), 0u);
  EXPECT_EQ(p.client.open_streams(), 0u);
}

TEST(Http2Codec, InterimResponsesComeBeforeTheFinalOneAndAHeadOnlyAnswerEndsTheStream) {
  Pair p;
  int32_t id = p.client.submit_request(get("/"), "http", "a", true);
  p.pump();
  ASSERT_TRUE(p.server_events.streams[id].ended);
  ASSERT_TRUE(p.server.submit_response(id, 103, HeaderList{}, false));
  ASSERT_TRUE(p.server.submit_response(id, 204, HeaderList{}, true));
  p.pump();
  Stream& c = p.client_events.streams[id];
  EXPECT_EQ(c.statuses, (std::vector<int>{103, 204}));
  EXPECT_TRUE(c.ended);
  EXPECT_TRUE(c.closed);
  EXPECT_EQ(c.trailers.size(), 0u);
}

TEST(Http2Codec, SplitCookiesAreJoinedForAnHttp11Hop) {
  Pair p;
  RequestHead req = get("/");
  req.fields.add("cookie", "a=1");
  req.fields.add("cookie", "b=2");
  int32_t id = p.client.submit_request(req, "http", "a", true);
  p.pump();
  const HeaderList& f = p.server_events.streams[id].request.fields;
  EXPECT_EQ(f.count("cookie"), 1u);
  EXPECT_EQ(f.value(f.find("cookie")), "a=1; b=2");
}

TEST(Http2Codec, AHeadOverTheLimitIsReportedAndItsBodyDropped) {
  Http2Limits limits;
  limits.max_header_bytes = 200;
  Pair p(limits);
  RequestHead req = get("/");
  req.fields.add("x-big", std::string(300, 'b'));
  int32_t id = p.client.submit_request(req, "http", "a", false);
  p.client.send_data(id, std::string(1000, 'x'));
  p.client.send_end(id, nullptr);
  p.pump();
  Stream& s = p.server_events.streams[id];
  EXPECT_TRUE(s.too_large);
  EXPECT_TRUE(s.request.method.empty());  // no head was handed over
  EXPECT_TRUE(s.body.empty());
  // The owner answers it (431), and the stream ends normally.
  ASSERT_TRUE(p.server.submit_response(id, 431, HeaderList{}, true));
  p.pump();
  EXPECT_EQ(p.client_events.streams[id].statuses, std::vector<int>{431});
}

TEST(Http2Codec, TheSendersQueueHoldsWhatTheReadersWindowDoesNotTake) {
  Pair p;
  p.client_events.consume_at_once = false;  // a reader that does not read
  int32_t id = p.client.submit_request(get("/download"), "http", "a", true);
  p.pump();
  ASSERT_TRUE(p.server.submit_response(id, 200, HeaderList{}, false));
  std::string mib(1024 * 1024, 'd');
  p.server.send_data(id, mib);
  p.server.send_end(id, nullptr);
  p.pump();
  // 256 KiB (the stream's window) went out; the rest waits on the server.
  EXPECT_EQ(p.client_events.streams[id].body.size(), 256u * 1024);
  EXPECT_EQ(p.server.queued(id), mib.size() - 256u * 1024);
  EXPECT_FALSE(p.client_events.streams[id].ended);
  // The reader passes its bytes on: the windows open, the rest arrives.
  p.client.consume(id, 256 * 1024);
  p.client_events.consume_at_once = true;
  p.pump();
  EXPECT_EQ(p.client_events.streams[id].body, mib);
  EXPECT_TRUE(p.client_events.streams[id].ended);
  EXPECT_EQ(p.server.queued(id), 0u);
}

TEST(Http2Codec, GoawayTellsTheClientWhichStreamsWereProcessed) {
  Pair p;
  int32_t first = p.client.submit_request(get("/1"), "http", "a", true);
  p.pump();
  p.server.shutdown();
  p.pump();
  EXPECT_EQ(p.client_events.goaway_last, first);
  // Streams in flight finish.
  ASSERT_TRUE(p.server.submit_response(first, 200, HeaderList{}, true));
  p.pump();
  EXPECT_EQ(p.client_events.streams[first].statuses, std::vector<int>{200});
}

// ---- A raw nghttp2 client: sends what pilotfish's own client never would.

struct RawClient {
  nghttp2_session* session = nullptr;
  std::map<int32_t, uint32_t> reset;  // RST_STREAM received: stream -> error code
  bool goaway = false;

  explicit RawClient(bool checked = false) {
    nghttp2_session_callbacks* cb;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_frame_recv_callback(
        cb, [](nghttp2_session*, const nghttp2_frame* f, void* u) {
          auto* self = static_cast<RawClient*>(u);
          if (f->hd.type == NGHTTP2_RST_STREAM) self->reset[f->hd.stream_id] = f->rst_stream.error_code;
          if (f->hd.type == NGHTTP2_GOAWAY) self->goaway = true;
          return 0;
        });
    nghttp2_option* opt;
    nghttp2_option_new(&opt);
    if (!checked) nghttp2_option_set_no_http_messaging(opt, 1);  // lets it send malformed messages
    nghttp2_session_client_new2(&session, cb, this, opt);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cb);
    nghttp2_submit_settings(session, NGHTTP2_FLAG_NONE, nullptr, 0);
  }
  ~RawClient() { nghttp2_session_del(session); }

  // The fields as given: NO_COPY_NAME keeps nghttp2 from writing names in lower case, so they
  // live here until sent.
  std::vector<std::unique_ptr<std::vector<std::pair<std::string, std::string>>>> kept;
  int32_t request(std::vector<std::pair<std::string, std::string>> given, bool end_stream = true) {
    kept.push_back(std::make_unique<std::vector<std::pair<std::string, std::string>>>(std::move(given)));
    std::vector<nghttp2_nv> nva;
    for (auto& [n, v] : *kept.back())
      nva.push_back({reinterpret_cast<uint8_t*>(n.data()), reinterpret_cast<uint8_t*>(v.data()), n.size(), v.size(),
                     NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE});
    return nghttp2_submit_headers(session, end_stream ? NGHTTP2_FLAG_END_STREAM : NGHTTP2_FLAG_NONE, -1, nullptr,
                                  nva.data(), nva.size(), nullptr);
  }
  // Exchanges bytes with `server` until quiet; false if the server broke the connection.
  bool pump(Http2Connection& server) {
    bool ok = true;
    for (int i = 0; i < 200; ++i) {
      std::string a;
      for (;;) {
        const uint8_t* d;
        ssize_t n = nghttp2_session_mem_send(session, &d);
        if (n <= 0) break;
        a.append(reinterpret_cast<const char*>(d), static_cast<size_t>(n));
      }
      if (!a.empty()) ok = server.receive(a.data(), a.size()) && ok;
      std::string b;
      server.output(b);
      if (!b.empty()) nghttp2_session_mem_recv(session, reinterpret_cast<const uint8_t*>(b.data()), b.size());
      if (a.empty() && b.empty()) break;
    }
    return ok;
  }
};

using Fields = std::vector<std::pair<std::string, std::string>>;

Fields base(std::string path = "/") {
  return {{":method", "GET"}, {":scheme", "http"}, {":authority", "a"}, {":path", std::move(path)}};
}

TEST(Http2Codec, MalformedRequestsAreStreamErrorsAndNeverHandedOver) {
  std::vector<Fields> malformed = {
      [] { auto f = base(); f.push_back({"connection", "close"}); return f; }(),
      [] { auto f = base(); f.push_back({"transfer-encoding", "chunked"}); return f; }(),
      [] { auto f = base(); f.push_back({"te", "gzip"}); return f; }(),
      [] { auto f = base(); f.push_back({"X-Upper", "1"}); return f; }(),
      [] { auto f = base(); f.push_back({":path", "/twice"}); return f; }(),
      [] { auto f = base(); f.insert(f.begin() + 1, {"x-before", "pseudo"}); return f; }(),
      [] { Fields f = {{":method", "GET"}, {":scheme", "http"}, {":authority", "a"}}; return f; }(),  // no :path
      [] { auto f = base(); f.push_back({"host", "b"}); return f; }(),  // host names another
      [] { auto f = base(); f.push_back({"x-bad", "a\r\nb"}); return f; }(),
      // What the HTTP/1.1 side would call an invalid field: the codec hands on none of them.
      [] { auto f = base(); f.push_back({"x-ctl", "a\x01b"}); return f; }(),
      [] { auto f = base(); f.push_back({"x-del", "a\x7f"}); return f; }(),
      [] { auto f = base(); f.push_back({"x-nul", std::string("a\0b", 3)}); return f; }(),
      [] { auto f = base(); f.push_back({"x bad", "1"}); return f; }(),
      [] { auto f = base(); f.push_back({"x@bad", "1"}); return f; }(),
      [] { auto f = base(); f.push_back({"", "1"}); return f; }(),
  };
  for (size_t i = 0; i < malformed.size(); ++i) {
    Recorder events;
    Http2Connection server(Http2Connection::Role::server, events);
    RawClient raw;
    int32_t id = raw.request(malformed[i]);
    // An honest request on the same connection afterwards is served.
    int32_t honest = raw.request(base("/ok"));
    raw.pump(server);
    EXPECT_TRUE(raw.reset.count(id)) << "case " << i;
    EXPECT_EQ(raw.reset[id], static_cast<uint32_t>(NGHTTP2_PROTOCOL_ERROR)) << "case " << i;
    EXPECT_TRUE(events.streams[id].request.method.empty()) << "case " << i;
    EXPECT_EQ(events.streams[honest].request.target, "/ok") << "case " << i;
    EXPECT_FALSE(raw.goaway) << "case " << i;
  }
}

// ---- A raw nghttp2 server: answers with what an upstream should never send.

struct RawServer {
  nghttp2_session* session = nullptr;
  Fields answer;
  explicit RawServer(Fields fields) : answer(std::move(fields)) {
    nghttp2_session_callbacks* cb;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_frame_recv_callback(
        cb, [](nghttp2_session* s, const nghttp2_frame* f, void* u) {
          auto* self = static_cast<RawServer*>(u);
          if (f->hd.type != NGHTTP2_HEADERS || !(f->hd.flags & NGHTTP2_FLAG_END_STREAM)) return 0;
          std::vector<nghttp2_nv> nva;
          for (auto& [n, v] : self->answer)
            nva.push_back({reinterpret_cast<uint8_t*>(n.data()), reinterpret_cast<uint8_t*>(v.data()), n.size(),
                           v.size(), NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE});
          nghttp2_submit_response(s, f->hd.stream_id, nva.data(), nva.size(), nullptr);
          return 0;
        });
    nghttp2_option* opt;
    nghttp2_option_new(&opt);
    nghttp2_option_set_no_http_messaging(opt, 1);
    nghttp2_session_server_new2(&session, cb, this, opt);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cb);
    nghttp2_submit_settings(session, NGHTTP2_FLAG_NONE, nullptr, 0);
  }
  ~RawServer() { nghttp2_session_del(session); }
  void pump(Http2Connection& client) {
    for (int i = 0; i < 200; ++i) {
      std::string a;
      client.output(a);
      if (!a.empty()) nghttp2_session_mem_recv(session, reinterpret_cast<const uint8_t*>(a.data()), a.size());
      std::string b;
      for (;;) {
        const uint8_t* d;
        ssize_t n = nghttp2_session_mem_send(session, &d);
        if (n <= 0) break;
        b.append(reinterpret_cast<const char*>(d), static_cast<size_t>(n));
      }
      if (!b.empty()) client.receive(b.data(), b.size());
      if (a.empty() && b.empty()) break;
    }
  }
};

TEST(Http2Codec, AnUpstreamsInvalidResponseFieldsAreAStreamErrorAndNeverHandedOver) {
  std::vector<Fields> bad = {
      {{":status", "200"}, {"x-ctl", "a\x01b"}},
      {{":status", "200"}, {"x-bad", "a\r\nset-cookie: b"}},
      {{":status", "200"}, {"X-Upper", "1"}},
      {{":status", "200"}, {"x bad", "1"}},
      {{":status", "200"}, {"transfer-encoding", "chunked"}},
      {{":status", "200"}, {"x-nul", std::string("a\0b", 3)}},
  };
  for (size_t i = 0; i < bad.size(); ++i) {
    Recorder events;
    Http2Connection client(Http2Connection::Role::client, events);
    RawServer raw(bad[i]);
    int32_t id = client.submit_request(get("/"), "http", "a", true);
    ASSERT_GT(id, 0);
    raw.pump(client);
    EXPECT_TRUE(events.streams[id].statuses.empty()) << "case " << i;
    EXPECT_TRUE(events.streams[id].closed) << "case " << i;
    EXPECT_NE(events.streams[id].error, 0u) << "case " << i;
  }
  // The same server with an honest answer is heard.
  Recorder events;
  Http2Connection client(Http2Connection::Role::client, events);
  RawServer raw({{":status", "200"}, {"x-ok", "1"}});
  int32_t id = client.submit_request(get("/"), "http", "a", true);
  raw.pump(client);
  ASSERT_EQ(events.streams[id].statuses.size(), 1u);
  EXPECT_EQ(events.streams[id].statuses[0], 200);
}

TEST(Http2Codec, RapidResetEndsTheConnection) {
  // CVE-2023-44487: streams opened and reset at once, faster than the bucket refills.
  Recorder events;
  Http2Limits limits;
  limits.reset_burst = 100;
  limits.reset_rate = 1;
  Http2Connection server(Http2Connection::Role::server, events, limits);
  RawClient raw(true);
  bool ok = true;
  int rounds = 0;
  for (; rounds < 20 && ok && !raw.goaway; ++rounds) {
    std::vector<int32_t> ids;
    for (int i = 0; i < 50; ++i) ids.push_back(raw.request(base()));
    ok = raw.pump(server);  // the HEADERS go out (a stream reset before they do never opens)
    for (int32_t id : ids) nghttp2_submit_rst_stream(raw.session, NGHTTP2_FLAG_NONE, id, NGHTTP2_CANCEL);
    ok = raw.pump(server) && ok;
  }
  EXPECT_TRUE(raw.goaway || !ok || server.done());
  EXPECT_LE(rounds, 4);  // 100 resets allowed, then GOAWAY
}

TEST(Http2Codec, ThePrefaceIsTheClientsFirstBytes) {
  Recorder events;
  Http2Connection client(Http2Connection::Role::client, events);
  std::string out;
  client.output(out);
  ASSERT_GE(out.size(), 24u);
  EXPECT_EQ(out.substr(0, 24), Http2Connection::preface());
  // A server given anything else breaks the connection.
  Http2Connection server(Http2Connection::Role::server, events);
  std::string h1 = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
  EXPECT_FALSE(server.receive(h1.data(), h1.size()));
}

}  // namespace
}  // namespace pilotfish
