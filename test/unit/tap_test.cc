// Taps (metrics/tap.h): filters from GET /tap's query, what a line holds, the bound and the rate.
#include "metrics/tap.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <ctime>

#include <nlohmann/json.hpp>

namespace pilotfish {
namespace {

AccessLogEntry entry(std::string_view path = "/api/x", int status = 200) {
  AccessLogEntry e;
  e.listener = "ingress";
  e.route = "api";
  e.method = "GET";
  e.authority = "shop.local";
  e.path = path;
  e.status = status;
  e.duration_seconds = 0.0125;
  e.upstream = "10.0.0.7:8080";
  e.attempts = 2;
  e.error = "";
  e.request_id = "r1";
  e.trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
  e.cluster = "payments";
  e.peer = "spiffe://shop.local/ns/shop/sa/gateway";
  return e;
}

TEST(TapQuery, ReadsEveryFilter) {
  TapFilter f;
  std::string why;
  ASSERT_TRUE(parse_tap_query("listener=ingress&route=api&cluster=payments&status=5xx&method=POST&path_prefix=%2Fa%20b&rate=7",
                              &f, &why))
      << why;
  EXPECT_EQ(f.listener, "ingress");
  EXPECT_EQ(f.route, "api");
  EXPECT_EQ(f.cluster, "payments");
  EXPECT_EQ(f.method, "POST");
  EXPECT_EQ(f.path_prefix, "/a b");
  EXPECT_EQ(f.status_class, 5);
  EXPECT_EQ(f.rate, 7u);
  ASSERT_TRUE(parse_tap_query("status=503&route=", &f, &why));
  EXPECT_EQ(f.status, 503);
  EXPECT_EQ(f.route, "");  // the unnamed routes
  EXPECT_EQ(f.rate, 100u);  // the default
  ASSERT_TRUE(parse_tap_query("", &f, &why));
  EXPECT_FALSE(f.listener.has_value());
}

TEST(TapQuery, RefusesWhatItDoesNotKnow) {
  TapFilter f;
  std::string why;
  for (const char* bad : {"x=1", "status=5XX", "status=600", "status=50", "status=2x", "rate=0", "rate=10001",
                          "rate=-1", "rate=1e3", "route", "route=%4", "route=%zz", "method=GET&method=POST",
                          "path_prefix=api"}) {
    EXPECT_FALSE(parse_tap_query(bad, &f, &why)) << bad;
    EXPECT_FALSE(why.empty()) << bad;
  }
  EXPECT_FALSE(parse_tap_query("route=" + std::string(1025, 'a'), &f, &why));
}

TEST(TapFilter, Matches) {
  TapFilter f;
  EXPECT_TRUE(f.matches(entry()));
  f.status_class = 5;
  EXPECT_FALSE(f.matches(entry()));
  EXPECT_TRUE(f.matches(entry("/api/x", 503)));
  f = TapFilter{};
  f.status = 200;
  f.path_prefix = "/api/";
  EXPECT_TRUE(f.matches(entry("/api/x")));
  EXPECT_FALSE(f.matches(entry("/ap")));
  f.cluster = "users";
  EXPECT_FALSE(f.matches(entry()));
  f = TapFilter{};
  f.route = "";
  EXPECT_FALSE(f.matches(entry()));
}

TEST(TapEvent, IsOneJsonObjectWithTheRequestsSummary) {
  std::string line;
  AccessLogEntry e = entry("/a\"b\n");
  format_tap_event(line, e);
  EXPECT_EQ(line.find('\n'), std::string::npos);
  auto j = nlohmann::json::parse(line);
  EXPECT_EQ(j["path"], "/a\"b\n");
  EXPECT_EQ(j["cluster"], "payments");
  EXPECT_EQ(j["endpoint"], "10.0.0.7:8080");
  EXPECT_EQ(j["attempts"], 2);
  EXPECT_EQ(j["peer"], "spiffe://shop.local/ns/shop/sa/gateway");
  EXPECT_EQ(j["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_DOUBLE_EQ(j["duration"].get<double>(), 0.0125);
  EXPECT_EQ(j.size(), 14u);
  EXPECT_FALSE(j.contains("request_id"));  // the client may send its own: a header value
}

TEST(LineTime, DurationAndTimeWithoutPrintf) {
  char d[24];
  auto text = [&](double v) { return std::string(d, seconds_with_micros(d, v)); };
  EXPECT_EQ(text(0), "0.000000");
  EXPECT_EQ(text(0.0125), "0.012500");
  EXPECT_EQ(text(1.5), "1.500000");
  EXPECT_EQ(text(12.3456789), "12.345679");
  EXPECT_EQ(text(-1), "0.000000");
  EXPECT_EQ(text(86400.000001), "86400.000001");
  char t[32];
  for (int i = 0; i < 3; ++i) {  // the second cached, or not
    std::string s(t, utc_time_ms(t));
    ASSERT_EQ(s.size(), 24u) << s;
    time_t now = time(nullptr);
    tm g;
    gmtime_r(&now, &g);
    char year[8];
    std::snprintf(year, sizeof year, "%04d-", g.tm_year + 1900);
    EXPECT_EQ(s.substr(0, 5), year);
    EXPECT_EQ(s[10], 'T');
    EXPECT_EQ(s[19], '.');
    EXPECT_EQ(s.back(), 'Z');
  }
}

TEST(TapHub, OpenCloseAndTheActiveFlag) {
  ProcessStats stats;
  TapHub hub(stats);
  EXPECT_FALSE(hub.active());
  std::vector<std::shared_ptr<TapHub::Tap>> taps;
  for (size_t i = 0; i < kMaxTaps; ++i) taps.push_back(hub.open(TapFilter{}));
  EXPECT_EQ(hub.open(TapFilter{}), nullptr);
  EXPECT_TRUE(hub.active());
  EXPECT_EQ(stats.tap_streams.load(), static_cast<int64_t>(kMaxTaps));
  for (auto& t : taps) hub.close(t);
  hub.close(taps[0]);  // twice: nothing
  EXPECT_FALSE(hub.active());
  EXPECT_EQ(stats.tap_streams.load(), 0);
}

TEST(TapHub, RateCapAndBoundAreCountedNotQueued) {
  ProcessStats stats;
  TapHub hub(stats);
  TapFilter capped;
  capped.rate = 3;
  auto a = hub.open(capped);
  TapFilter all;
  all.rate = kTapMaxRate;
  auto b = hub.open(all);
  for (int i = 0; i < 10; ++i) hub.publish(entry());
  std::string out;
  hub.take(*a, &out);
  // A burst of one second's worth (3), then the rest counted (the clock moves little here).
  size_t lines = static_cast<size_t>(std::count(out.begin(), out.end(), '\n'));
  EXPECT_GE(lines, 4u);
  EXPECT_LE(lines, 5u);
  auto last = nlohmann::json::parse(out.substr(out.rfind('\n', out.size() - 2) + 1));
  EXPECT_EQ(last["dropped"], 0);
  EXPECT_EQ(last["over_rate"].get<int>() + static_cast<int>(lines) - 1, 10);
  // b takes nothing: its queue fills to the bound, and what does not fit is dropped.
  std::string big(4000, 'p');
  AccessLogEntry e = entry(big);
  for (int i = 0; i < 2000; ++i) hub.publish(e);
  EXPECT_GT(stats.tap_dropped.load(), 0u);
  out.clear();
  hub.take(*b, &out);
  EXPECT_LE(out.size(), kTapQueueBytes + 100);
  auto tail = nlohmann::json::parse(out.substr(out.rfind('\n', out.size() - 2) + 1));
  EXPECT_EQ(tail["dropped"].get<uint64_t>(), stats.tap_dropped.load());
  EXPECT_EQ(stats.tap_sent.load() + stats.tap_dropped.load() + stats.tap_limited.load(), 10u + 10u + 2000u * 2);
  // Taken: the next take has nothing.
  out.clear();
  hub.take(*b, &out);
  EXPECT_TRUE(out.empty());
}

}  // namespace
}  // namespace pilotfish
