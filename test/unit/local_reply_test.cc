// pilotfish's own answers (http/local_reply.h): the HTTP/1.1 bytes, the same answer as HTTP/2
// fields and body, and the trailers-only gRPC form with its status code.
#include "http/local_reply.h"
#include "http/upstream_head.h"
#include "proxy/mirror.h"
#include "upstream/retry_decision.h"

#include <gtest/gtest.h>

#include <string>

namespace pilotfish {
namespace {

std::string field(const HeaderList& h, std::string_view name) {
  size_t i = h.find(name);
  return i == HeaderList::npos ? "<none>" : std::string(h.value(i));
}

TEST(LocalReply, Http11Bytes) {
  std::string out;
  LocalReply r{503, "overloaded", "retry-after: 1\r\n", false, false, false};
  EXPECT_EQ(append_local_reply(out, r), 15u);
  EXPECT_EQ(out,
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 15\r\n"
            "x-pilotfish-error: overloaded\r\nx-pilotfish-overloaded: true\r\nretry-after: 1\r\n"
            "connection: close\r\n\r\n503 overloaded\n");
}

TEST(LocalReply, Http2PartsCarryTheSameFieldsAndBody) {
  HeaderList fields;
  std::string body;
  LocalReply r{401, "unauthorized", "www-authenticate: Bearer\r\nretry-after: 2\r\n", true, false, false};
  EXPECT_EQ(local_reply_parts(r, fields, body), 17u);
  EXPECT_EQ(body, "401 unauthorized\n");
  EXPECT_EQ(field(fields, "content-length"), "17");
  EXPECT_EQ(field(fields, "x-pilotfish-error"), "unauthorized");
  EXPECT_EQ(field(fields, "www-authenticate"), "Bearer");
  EXPECT_EQ(field(fields, "retry-after"), "2");
  EXPECT_EQ(fields.find("connection"), HeaderList::npos);

  HeaderList head_fields;
  std::string head_body;
  LocalReply head{404, "no_route", "", true, false, true};
  local_reply_parts(head, head_fields, head_body);
  EXPECT_EQ(head_body, "");  // HEAD: no body, the length of the one a GET gets
  EXPECT_EQ(field(head_fields, "content-length"), "13");
}

TEST(LocalReply, GrpcRequestsAreToldByContentType) {
  auto with = [](std::string_view type) {
    HeaderList h;
    h.add("content-type", type);
    return is_grpc_request(h);
  };
  EXPECT_TRUE(with("application/grpc"));
  EXPECT_TRUE(with("application/grpc+proto"));
  EXPECT_TRUE(with("Application/GRPC;charset=x"));
  EXPECT_FALSE(with("application/grpc-web"));
  EXPECT_FALSE(with("application/grpcx"));
  EXPECT_FALSE(with("application/json"));
  EXPECT_FALSE(is_grpc_request(HeaderList()));
}

TEST(LocalReply, GrpcStatusCodes) {
  EXPECT_EQ(grpc_status_of(503, "overloaded"), 14);
  EXPECT_EQ(grpc_status_of(503, "no_healthy_upstream"), 14);
  EXPECT_EQ(grpc_status_of(503, "connect_failure"), 14);
  EXPECT_EQ(grpc_status_of(502, "invalid_response"), 13);
  EXPECT_EQ(grpc_status_of(504, "timeout"), 4);
  EXPECT_EQ(grpc_status_of(401, "unauthorized"), 16);
  EXPECT_EQ(grpc_status_of(403, "peer_not_allowed"), 7);
  EXPECT_EQ(grpc_status_of(429, "rate_limited"), 8);
  EXPECT_EQ(grpc_status_of(404, "no_route"), 12);
  EXPECT_EQ(grpc_status_of(400, "invalid_header"), 13);
}

TEST(LocalReply, GrpcAnswerIsTrailersOnly) {
  HeaderList fields;
  LocalReply r{429, "rate_limited", "retry-after: 1\r\n", true, false, false};
  grpc_local_reply_fields(r, fields);
  EXPECT_EQ(field(fields, "content-type"), "application/grpc");
  EXPECT_EQ(field(fields, "grpc-status"), "8");
  EXPECT_EQ(field(fields, "grpc-message"), "rate_limited");
  EXPECT_EQ(field(fields, "x-pilotfish-error"), "rate_limited");
  EXPECT_EQ(field(fields, "retry-after"), "1");
  EXPECT_EQ(fields.find("content-length"), HeaderList::npos);
  EXPECT_EQ(fields.count("content-type"), 1u);
}

TEST(Grpc, TimeoutValues) {
  EXPECT_EQ(parse_grpc_timeout("250m"), 250u);
  EXPECT_EQ(parse_grpc_timeout("3S"), 3000u);
  EXPECT_EQ(parse_grpc_timeout("2M"), 120000u);
  EXPECT_EQ(parse_grpc_timeout("1H"), 3600000u);
  EXPECT_EQ(parse_grpc_timeout("1500u"), 2u);  // rounded up
  EXPECT_EQ(parse_grpc_timeout("1n"), 1u);
  EXPECT_EQ(parse_grpc_timeout("99999999m"), 99999999u);
  EXPECT_EQ(parse_grpc_timeout("123456789m"), 0u);  // more than 8 digits
  EXPECT_EQ(parse_grpc_timeout("5"), 0u);
  EXPECT_EQ(parse_grpc_timeout("5x"), 0u);
  EXPECT_EQ(parse_grpc_timeout("-5m"), 0u);
  EXPECT_EQ(parse_grpc_timeout(""), 0u);
}

TEST(Grpc, RetryConditions) {
  EXPECT_EQ(retry_condition_for_grpc(14), static_cast<uint32_t>(kRetryGrpcUnavailable));
  EXPECT_EQ(retry_condition_for_grpc(4), static_cast<uint32_t>(kRetryGrpcDeadlineExceeded));
  EXPECT_EQ(retry_condition_for_grpc(1), static_cast<uint32_t>(kRetryGrpcCancelled));
  EXPECT_EQ(retry_condition_for_grpc(8), static_cast<uint32_t>(kRetryGrpcResourceExhausted));
  EXPECT_EQ(retry_condition_for_grpc(13), static_cast<uint32_t>(kRetryGrpcInternal));
  EXPECT_EQ(retry_condition_for_grpc(0), 0u);
  EXPECT_EQ(retry_condition_for_grpc(5), 0u);
}

TEST(UpstreamHead, TheHttp2PartsAreTheHttp1TextAndEachAttemptAddsItsOwn) {
  Listener l;
  l.address.text = "127.0.0.1:8080";
  NormalizedTarget target{"/pkg.Svc/Call", "?a=1"};
  HeaderList client;
  client.add("Host", "svc");
  client.add("grpc-timeout", " 5S");
  client.add("Content-Type", "application/grpc");
  client.add("X-Forwarded-For", "10.0.0.1");
  client.add("te", "trailers");
  client.add("x-pilotfish-attempt", "1");
  UpstreamHeadInput in{"POST", target, client, false, false, l, "10.0.0.2", nullptr, nullptr, "", "req-1"};

  std::string text;
  Http1HeadWriter w1(text);
  EXPECT_TRUE(build_upstream_head(w1, in));  // it came from another pilotfish
  EXPECT_EQ(text,
            "POST /pkg.Svc/Call?a=1 HTTP/1.1\r\nHost: svc\r\ngrpc-timeout: 5S\r\nContent-Type: application/grpc\r\n"
            "x-forwarded-for: 10.0.0.1, 10.0.0.2\r\nx-forwarded-proto: http\r\nx-request-id: req-1\r\n");

  RequestHead h;
  Http2HeadWriter w2(h, "");
  build_upstream_head(w2, in);
  EXPECT_EQ(h.method, "POST");
  EXPECT_EQ(h.target, "/pkg.Svc/Call?a=1");
  std::string rendered;
  render_http1_head(rendered, h, h.fields.size());
  EXPECT_EQ(rendered, text);

  // The client's grpc-timeout left out: each attempt says the time that is left.
  Http2HeadWriter w3(h, "grpc-timeout");
  build_upstream_head(w3, in);
  size_t base = h.fields.size();
  EXPECT_EQ(h.fields.count("grpc-timeout"), 0u);
  h2_attempt_fields(h, base, 1, true, "1200m");
  h2_attempt_fields(h, base, 12, true, "900m");  // a second attempt replaces the first one's
  EXPECT_EQ(h.fields.size(), base + 3);
  EXPECT_EQ(field(h.fields, "grpc-timeout"), "900m");
  EXPECT_EQ(field(h.fields, "x-pilotfish-attempt"), "12");
  EXPECT_EQ(field(h.fields, "te"), "trailers");
  EXPECT_EQ(field(h.fields, "host"), "svc");
  render_http1_head(rendered, h, base);  // an attempt over HTTP/1.1 after an HTTP/2 one
  EXPECT_EQ(rendered.find("x-pilotfish-attempt"), std::string::npos);
  EXPECT_EQ(rendered.find("grpc-timeout"), std::string::npos);
}

TEST(Mirror, TheShadowsAuthorityKeepsThePortAndLeavesAddressesAlone) {
  EXPECT_EQ(shadow_authority("shop.local"), "shop.local-shadow");
  EXPECT_EQ(shadow_authority("shop.local:8080"), "shop.local-shadow:8080");
  EXPECT_EQ(shadow_authority("10.0.0.1:80"), "10.0.0.1:80");
  EXPECT_EQ(shadow_authority("[::1]:80"), "[::1]:80");
  EXPECT_EQ(shadow_authority(""), "");  // no host: nothing to mark
}

}  // namespace
}  // namespace pilotfish
