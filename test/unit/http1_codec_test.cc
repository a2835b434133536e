// The HTTP/1.1 decoder (http/http1_codec.h): what it reports of requests and responses, where
// it stops between pipelined messages, what it refuses, and the framing checks it offers.
#include "http/http1_codec.h"
#include "http/upstream_head.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace pilotfish {
namespace {

struct Recorder final : Http1RequestHandler, Http1ResponseHandler {
  std::string url, status, body;
  HeaderList headers, trailers;
  int messages = 0, heads = 0;
  Step at_headers = Step::go;
  const Http1Decoder* decoder = nullptr;  // to read the message's framing as the session does
  uint64_t length_at_headers = 0;
  Step on_message_begin() override { return Step::go; }
  Step on_request_head(RequestHead& h) override {
    url = h.target;
    return on_head(h.fields);
  }
  Step on_head(const HeaderList& fields) {
    headers = fields;
    if (decoder) length_at_headers = decoder->content_length();  // counts down as the body comes
    return ++heads, at_headers;
  }
  Step on_body(std::string_view p) override { return body.append(p), Step::go; }
  // As the session does: after an upgrade request the decoder stops by itself.
  Step on_message_complete(RequestHead& h) override { return on_end(h.trailers); }
  Step on_end(const HeaderList& t) {
    trailers = t;
    return ++messages, decoder && decoder->upgrade() ? Step::go : Step::pause;
  }
  Step on_response_head(ResponseHead& h) override {
    status.append(h.reason);
    return on_head(h.fields);
  }
  Step on_response_body(std::string_view p) override { return on_body(p); }
  Step on_response_message_complete(ResponseHead& h) override { return on_end(h.trailers); }
};

using Outcome = Http1Decoder::Outcome;

TEST(Http1Decoder, StopsAfterEachPipelinedRequestAtItsLastByte) {
  Recorder r;
  RequestHead head;
  Http1Decoder d(static_cast<Http1RequestHandler*>(&r), &head);
  r.decoder = &d;
  std::string first = "POST /a?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc";
  std::string second = "GET /b HTTP/1.0\r\n\r\n";
  std::string both = first + second;
  Outcome o = d.execute(both.data(), both.size());
  ASSERT_EQ(o.kind, Outcome::paused);
  EXPECT_EQ(o.consumed, first.size());
  EXPECT_EQ(r.url, "/a?x=1");
  EXPECT_EQ(r.body, "abc");
  EXPECT_EQ(d.method_name(), "POST");
  EXPECT_FALSE(d.method_is_idempotent());
  EXPECT_TRUE(d.has_content_length());
  EXPECT_EQ(r.length_at_headers, 3u);
  EXPECT_TRUE(d.keep_alive());
  EXPECT_EQ(d.version_minor(), 1);
  d.resume();
  r.url.clear();
  o = d.execute(both.data() + o.consumed, second.size());
  ASSERT_EQ(o.kind, Outcome::paused);
  EXPECT_EQ(o.consumed, second.size());
  EXPECT_EQ(r.url, "/b");
  EXPECT_EQ(d.version_minor(), 0);
  EXPECT_FALSE(d.keep_alive());  // HTTP/1.0 without keep-alive
  EXPECT_TRUE(d.method_is_idempotent());
  EXPECT_EQ(r.messages, 2);
}

TEST(Http1Decoder, AHeadSplitIntoSingleBytesReadsTheSame) {
  Recorder r;
  RequestHead head;
  Http1Decoder d(static_cast<Http1RequestHandler*>(&r), &head);
  std::string req = "PUT /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
  for (size_t i = 0; i < req.size(); ++i) {
    Outcome o = d.execute(req.data() + i, 1);
    if (i + 1 < req.size()) ASSERT_EQ(o.kind, Outcome::more) << i;
    else ASSERT_EQ(o.kind, Outcome::paused);
  }
  EXPECT_EQ(r.url, "/up");
  EXPECT_EQ(r.body, "abc");
  EXPECT_TRUE(d.chunked());
  EXPECT_EQ(r.headers.value(r.headers.find("transfer-encoding")), "chunked");
}

TEST(Http1Decoder, RefusesBareLineFeedsAndObsFoldBeforeLlhttpSeesThem) {
  for (std::string bad : {"GET / HTTP/1.1\nHost: h\r\n\r\n", "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",
                          "GET / HTTP/1.1\r\nHost: h\rX: y\r\n\r\n"}) {
    Recorder r;
    RequestHead head;
    Http1Decoder d(static_cast<Http1RequestHandler*>(&r), &head);
    Outcome o = d.execute(bad.data(), bad.size());
    EXPECT_EQ(o.kind, Outcome::failed) << bad;
    EXPECT_STREQ(o.reason, "bare CR or LF, or obs-fold, in the head") << bad;
    EXPECT_EQ(r.heads, 0);
  }
}

TEST(Http1Decoder, AHeadAfterABodyInTheSameBytesIsScannedWhenTheHandlerGoesOn) {
  // The handler says go at the message's end: the next head still passes the head scanner.
  struct GoOn final : Http1RequestHandler {
    int messages = 0;
    Step on_message_begin() override { return Step::go; }
    Step on_request_head(RequestHead&) override { return Step::go; }
    Step on_body(std::string_view) override { return Step::go; }
    Step on_message_complete(RequestHead&) override { return ++messages, Step::go; }
  };
  std::string good = "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc";
  for (bool folded : {false, true}) {
    GoOn r;
    RequestHead head;
    Http1Decoder d(&r, &head);
    std::string next = folded ? "GET /b HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n" : "GET /b HTTP/1.1\r\nHost: h\r\n\r\n";
    std::string all = good + next;
    Outcome o = d.execute(all.data(), all.size());
    if (folded) {
      EXPECT_EQ(o.kind, Outcome::failed);
      EXPECT_STREQ(o.reason, "bare CR or LF, or obs-fold, in the head");
      EXPECT_EQ(r.messages, 1);
    } else {
      EXPECT_EQ(o.kind, Outcome::more);
      EXPECT_EQ(o.consumed, all.size());
      EXPECT_EQ(r.messages, 2);
      EXPECT_EQ(head.target, "/b");
    }
  }
}

TEST(Http1Decoder, ATrailerSectionIsScannedLikeAHead) {
  // llhttp alone ends a trailer section at a bare LF: "0\r\n\n" and a request after it would be
  // two requests here and one to a proxy that reads CRLF only.
  std::string head = "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n";
  for (std::string bad : {"0\r\n\nGET /internal HTTP/1.1\r\nHost: h\r\n\r\n", "0\r\nX: a\r\n\n",
                          "0\r\nX: a\r\n b\r\n\r\n", "0\r\n X: a\r\n\r\n", "0\r\nX: a\rY: b\r\n\r\n"}) {
    for (size_t split : {size_t{0}, size_t{1}, head.size() + 3}) {
      Recorder r;
      RequestHead h;
      Http1Decoder d(static_cast<Http1RequestHandler*>(&r), &h);
      std::string all = head + bad;
      Outcome o{};
      if (split == 0) {
        o = d.execute(all.data(), all.size());
      } else {  // in pieces: one byte at a time, or cut just after the last chunk's size line
        size_t step = split == 1 ? 1 : split;
        for (size_t at = 0; at < all.size() && o.kind != Outcome::failed; at += step) {
          size_t n = std::min(step, all.size() - at);
          o = d.execute(all.data() + at, n);
          if (o.kind == Outcome::paused) break;
        }
      }
      EXPECT_EQ(o.kind, Outcome::failed) << bad << " split " << split;
      EXPECT_EQ(r.messages, 0) << bad;
    }
  }
  // Clean trailers, and none, in pieces that end exactly where the size line does.
  for (std::string good : {std::string("0\r\n\r\n"), std::string("0\r\nX-T: 1\r\n\r\n")}) {
    Recorder r;
    RequestHead h;
    Http1Decoder d(static_cast<Http1RequestHandler*>(&r), &h);
    std::string first = head + "0\r\n";
    std::string rest = good.substr(3);
    Outcome o = d.execute(first.data(), first.size());
    EXPECT_EQ(o.kind, Outcome::more);
    o = d.execute(rest.data(), rest.size());
    EXPECT_EQ(o.kind, Outcome::paused) << good;
    EXPECT_EQ(r.messages, 1);
    EXPECT_EQ(r.trailers.size(), good.size() > 5 ? 1u : 0u);
  }
}

TEST(Http1Decoder, AMessageThatEndsOnTheLastByteIsDoneWhenTheHandlerGoesOn) {
  // A response delimited by the close after a complete one: finish() must see the state
  // llhttp is in after the message's end, not in the middle of it.
  struct GoOn final : Http1ResponseHandler {
    int messages = 0;
    Step on_response_head(ResponseHead&) override { return Step::go; }
    Step on_response_body(std::string_view) override { return Step::go; }
    Step on_response_message_complete(ResponseHead&) override { return ++messages, Step::go; }
  } r;
  ResponseHead head;
  Http1Decoder d(&r, &head);
  std::string resp = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
  Outcome o = d.execute(resp.data(), resp.size());
  EXPECT_EQ(o.kind, Outcome::more);
  EXPECT_EQ(r.messages, 1);
  EXPECT_TRUE(d.finish());
}

TEST(Http1Decoder, AHandlerThatFailsStopsTheDecoder) {
  Recorder r;
  r.at_headers = Step::fail;
  RequestHead head;
  Http1Decoder d(static_cast<Http1RequestHandler*>(&r), &head);
  std::string req = "GET / HTTP/1.1\r\nHost: h\r\n\r\n";
  Outcome o = d.execute(req.data(), req.size());
  EXPECT_EQ(o.kind, Outcome::failed);
  EXPECT_EQ(r.messages, 0);
}

TEST(Http1Decoder, AnUpgradeRequestEndsDecodingWhereItsHeadEnds) {
  Recorder r;
  RequestHead head;
  Http1Decoder d(static_cast<Http1RequestHandler*>(&r), &head);
  r.decoder = &d;
  std::string req = "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
  std::string frames = "\x81\x05hello";
  std::string all = req + frames;
  Outcome o = d.execute(all.data(), all.size());
  ASSERT_EQ(o.kind, Outcome::upgrade);
  EXPECT_EQ(o.consumed, req.size());
  EXPECT_TRUE(d.upgrade());
}

TEST(Http1Decoder, InterimResponsesPauseAndTheFinalOneFollows) {
  Recorder r;
  ResponseHead head;
  Http1Decoder d(static_cast<Http1ResponseHandler*>(&r), &head);
  std::string interim = "HTTP/1.1 100 Continue\r\n\r\n";
  std::string final_ = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
  std::string all = interim + final_;
  Outcome o = d.execute(all.data(), all.size());
  ASSERT_EQ(o.kind, Outcome::paused);
  EXPECT_EQ(o.consumed, interim.size());
  EXPECT_EQ(d.status_code(), 100);
  d.resume();
  o = d.execute(all.data() + interim.size(), final_.size());
  ASSERT_EQ(o.kind, Outcome::paused);
  EXPECT_EQ(d.status_code(), 200);
  EXPECT_EQ(r.body, "ok");
  EXPECT_EQ(r.status, "ContinueOK");
}

TEST(Http1Decoder, AResponseDelimitedByTheCloseEndsWithFinish) {
  Recorder r;
  ResponseHead head;
  Http1Decoder d(static_cast<Http1ResponseHandler*>(&r), &head);
  std::string resp = "HTTP/1.1 200 OK\r\n\r\nall of it";
  Outcome o = d.execute(resp.data(), resp.size());
  EXPECT_EQ(o.kind, Outcome::more);
  EXPECT_EQ(r.messages, 0);
  EXPECT_TRUE(d.finish());
  EXPECT_EQ(r.messages, 1);
  EXPECT_EQ(r.body, "all of it");
  // A new attempt's response starts from nothing.
  d.restart();
  r.body.clear();
  std::string next = "HTTP/1.1 204 No Content\r\n\r\n";
  o = d.execute(next.data(), next.size());
  EXPECT_EQ(o.kind, Outcome::paused);
  EXPECT_EQ(d.status_code(), 204);
}

TEST(Http1Decoder, HandsOverTheHeadWholeWithItsMethodTargetAndVersion) {
  Recorder r;
  RequestHead head;
  Http1Decoder d(static_cast<Http1RequestHandler*>(&r), &head);
  std::string req = "DELETE /items/7?force=1 HTTP/1.0\r\nHost: shop\r\nConnection: keep-alive\r\nX-A: 1\r\nX-A: 2\r\n\r\n";
  Outcome o = d.execute(req.data(), req.size());
  ASSERT_EQ(o.kind, Outcome::paused);
  EXPECT_EQ(head.method, "DELETE");
  EXPECT_EQ(head.target, "/items/7?force=1");
  EXPECT_EQ(head.version_major, 1);
  EXPECT_EQ(head.version_minor, 0);
  ASSERT_EQ(head.fields.size(), 4u);
  EXPECT_EQ(head.fields.name(3), "X-A");
  EXPECT_EQ(head.fields.value(3), "2");
  EXPECT_EQ(head.trailers.size(), 0u);
  // The next message empties the head first: nothing of this one is left in it.
  d.resume();
  std::string next = "GET / HTTP/1.1\r\nHost: h\r\n\r\n";
  o = d.execute(next.data(), next.size());
  ASSERT_EQ(o.kind, Outcome::paused);
  EXPECT_EQ(head.method, "GET");
  EXPECT_EQ(head.target, "/");
  EXPECT_EQ(head.fields.size(), 1u);
}

TEST(Http1Decoder, AChunkedBodysTrailersArriveApartFromTheHeadsFields) {
  Recorder r;
  RequestHead head;
  Http1Decoder d(static_cast<Http1RequestHandler*>(&r), &head);
  std::string req =
      "POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
      "3\r\nabc\r\n0\r\nChecksum: 900150983cd24fb0\r\nX-Rows: 3\r\n\r\n";
  for (size_t i = 0; i < req.size(); ++i) d.execute(req.data() + i, 1);  // split anywhere
  EXPECT_EQ(r.messages, 1);
  EXPECT_EQ(r.headers.size(), 2u);
  ASSERT_EQ(r.trailers.size(), 2u);
  EXPECT_EQ(r.trailers.name(0), "Checksum");
  EXPECT_EQ(r.trailers.value(0), "900150983cd24fb0");
  EXPECT_EQ(r.trailers.value(1), "3");
  EXPECT_EQ(head.fields.find("checksum"), HeaderList::npos);
}

TEST(Http1Decoder, AHeadOrTrailersPastTheLimitFailAsTooLarge) {
  // The limit counts the target and each field's name and value with 4 bytes for ": " and CRLF.
  std::string req = "GET /abc HTTP/1.1\r\nHost: h\r\n\r\n";  // 4 + (4 + 1 + 4) = 13
  for (uint64_t limit : {12u, 13u}) {
    Recorder r;
    RequestHead head;
    Http1Decoder d(static_cast<Http1RequestHandler*>(&r), &head);
    d.set_head_limit(limit);
    Outcome o = d.execute(req.data(), req.size());
    if (limit == 12) {
      EXPECT_EQ(o.kind, Outcome::failed);
      EXPECT_TRUE(o.too_large);
      EXPECT_EQ(r.heads, 0);
    } else {
      EXPECT_EQ(o.kind, Outcome::paused);
      EXPECT_FALSE(o.too_large);
    }
  }
  // Trailers have a budget of their own, the same size: a small head does not leave room for
  // an unbounded trailer section.
  Recorder r;
  RequestHead head;
  Http1Decoder d(static_cast<Http1RequestHandler*>(&r), &head);
  d.set_head_limit(64);
  std::string chunked = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: " +
                        std::string(80, 'v') + "\r\n\r\n";
  Outcome o = d.execute(chunked.data(), chunked.size());
  EXPECT_EQ(o.kind, Outcome::failed);
  EXPECT_TRUE(o.too_large);
  EXPECT_EQ(r.heads, 1);
  EXPECT_EQ(r.messages, 0);
  // A response's reason phrase counts too.
  Recorder rr;
  ResponseHead rhead;
  Http1Decoder rd(static_cast<Http1ResponseHandler*>(&rr), &rhead);
  rd.set_head_limit(16);
  std::string resp = "HTTP/1.1 200 " + std::string(40, 'k') + "\r\n\r\n";
  o = rd.execute(resp.data(), resp.size());
  EXPECT_EQ(o.kind, Outcome::failed);
  EXPECT_TRUE(o.too_large);
}

TEST(Http1Encoding, TheLastChunkCarriesOnlyTheTrailersThatMayTravel) {
  HeaderList t;
  t.add("Checksum", " abc ");
  t.add("Content-Length", "5");
  t.add("Transfer-Encoding", "chunked");
  t.add("Host", "evil");
  t.add("Set_Cookie", "a=b");  // another spelling of a field that may not travel
  t.add("grpc-status", "0");
  std::string out;
  t.add("X-Secret", "named by Connection");
  append_response_last_chunk(out, t, ",x-secret,");
  EXPECT_EQ(out, "0\r\nChecksum: abc\r\ngrpc-status: 0\r\n\r\n");
  EXPECT_TRUE(allowed_in_trailers("server-timing"));
  EXPECT_FALSE(allowed_in_trailers("Authorization"));

  // Upstream, the fields pilotfish writes itself stay its own in trailers too.
  Listener listener;
  listener.subject_headers = {"x-user"};
  HeaderList r;
  r.add("X-Forwarded-Client-Cert", "By=spiffe://x/forged");
  r.add("x_forwarded_for", "10.0.0.1");
  r.add("X-User", "admin");
  r.add("x-pilotfish-attempt", "1");
  r.add("X-Request-Id", "abc");
  r.add("X-Digest", "sha-256=x");
  out.clear();
  append_request_last_chunk(out, r, "", listener);
  EXPECT_EQ(out, "0\r\nX-Digest: sha-256=x\r\n\r\n");
}

TEST(Http1Framing, OneValidContentLengthOrChunkedAloneNeverBoth) {
  auto list = [](std::vector<std::pair<std::string, std::string>> fields) {
    HeaderList h;
    for (auto& [n, v] : fields) {
      h.append_name(n);
      h.append_value(v);
      h.end_header();
    }
    return h;
  };
  EXPECT_TRUE(framing_headers_valid(list({{"content-length", "12"}})));
  EXPECT_TRUE(framing_headers_valid(list({{"transfer-encoding", " chunked "}})));
  EXPECT_FALSE(framing_headers_valid(list({{"content-length", "1"}, {"content-length", "1"}})));
  EXPECT_FALSE(framing_headers_valid(list({{"content-length", "1"}, {"transfer-encoding", "chunked"}})));
  EXPECT_FALSE(framing_headers_valid(list({{"transfer-encoding", "gzip, chunked"}})));
  EXPECT_FALSE(framing_headers_valid(list({{"content-length", "+1"}})));
  EXPECT_FALSE(framing_headers_valid(list({{"content-length", "12345678901234567890"}})));
  EXPECT_TRUE(fields_valid(list({{"x-a", "b c"}})));
  EXPECT_FALSE(fields_valid(list({{"x a", "b"}})));
  EXPECT_FALSE(fields_valid(list({{"x-a", std::string("b\0c", 3)}})));
}

TEST(Http1Encoding, ChunkSizesAndReasonPhrases) {
  std::string out;
  append_chunk_header(out, 0x1a3);
  append_uint(out, 18446744073709551615ull);
  EXPECT_EQ(out, "1a3\r\n18446744073709551615");
  EXPECT_STREQ(reason_phrase(413), "Content Too Large");
  EXPECT_STREQ(reason_phrase(299), "Unknown");
}

TEST(KeepAliveIdleLimit, EightyPercentOfTheUpstreamsTimeout) {
  HeaderList f;
  EXPECT_EQ(keep_alive_idle_limit_ms(f), 0u);
  f.add("Keep-Alive", "timeout=5, max=100");
  EXPECT_EQ(keep_alive_idle_limit_ms(f), 4000u);
  HeaderList zero;
  zero.add("keep-alive", "timeout=0");
  EXPECT_EQ(keep_alive_idle_limit_ms(zero), 1u);
  HeaderList none;
  none.add("keep-alive", "max=3");
  EXPECT_EQ(keep_alive_idle_limit_ms(none), 0u);
}

TEST(ContentLengthValue, DigitsAndSaturation) {
  EXPECT_EQ(content_length_value("0"), 0u);
  EXPECT_EQ(content_length_value(" 1234 "), 1234u);
  EXPECT_EQ(content_length_value("18446744073709551615"), UINT64_MAX);
  EXPECT_EQ(content_length_value("18446744073709551616"), UINT64_MAX);
  EXPECT_EQ(content_length_value("99999999999999999999999"), UINT64_MAX);
}

}  // namespace
}  // namespace pilotfish
