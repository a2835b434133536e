// W3C Trace Context (http/trace_context.h): which traceparent values are continued, what a new
// trace looks like, and how tracestate goes on.
#include "http/trace_context.h"

#include <gtest/gtest.h>

#include <algorithm>

namespace pilotfish {
namespace {

constexpr const char* kValid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

TEST(TraceContext, ContinuesAValidVersion00) {
  TraceContext t;
  ASSERT_TRUE(parse_traceparent(kValid, t));
  EXPECT_EQ(t.id(), "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_EQ(t.flags, 1);
  EXPECT_TRUE(t.continued);
  ASSERT_TRUE(parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", t));
  EXPECT_EQ(t.flags, 0);
}

TEST(TraceContext, RefusesWhatIsNotValid) {
  TraceContext t;
  for (const char* bad : {
           "",
           "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",            // short
           "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",     // 00 is exactly 55
           "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",           // upper case
           "00-00000000000000000000000000000000-00f067aa0ba902b7-01",           // zero trace id
           "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",           // zero parent id
           "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",           // version ff
           "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",           // separator
           "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",           // not hex
           "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",          // later version, no '-'
       })
    EXPECT_FALSE(parse_traceparent(bad, t)) << bad;
}

TEST(TraceContext, ReadsALaterVersionByItsFirstFields) {
  TraceContext t;
  ASSERT_TRUE(parse_traceparent("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03-what-comes-next", t));
  EXPECT_EQ(t.id(), "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_EQ(t.flags, 3);  // sampled and random, the flags defined so far
  char out[kTraceparentSize];
  format_traceparent(out, t, 0x1234);
  EXPECT_EQ(std::string_view(out, kTraceparentSize), "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000001234-03");
}

TEST(TraceContext, NewTraceWhenAbsentInvalidOrTwice) {
  HeaderList none;
  TraceContext t;
  std::string state = "stale";
  EXPECT_FALSE(continue_trace(none, t, state));
  EXPECT_EQ(state, "");
  EXPECT_EQ(t.id(), "");

  HeaderList invalid;
  invalid.add("traceparent", "00-zz");
  invalid.add("tracestate", "vendor=1");
  EXPECT_FALSE(continue_trace(invalid, t, state));
  EXPECT_EQ(state, "");  // a tracestate without a valid traceparent is dropped

  HeaderList twice;
  twice.add("traceparent", kValid);
  twice.add("traceparent", kValid);
  EXPECT_FALSE(continue_trace(twice, t, state));

  char id[32];
  random_trace_id(id, 0xabc, 0xdef);
  t.start({id, 32});
  EXPECT_EQ(t.id(), "0000000000000abc0000000000000def");
  EXPECT_EQ(t.flags, 1);
  EXPECT_FALSE(t.continued);
  random_trace_id(id, 0, 0);
  EXPECT_NE(std::string_view(id, 32), std::string(32, '0'));
}

TEST(TraceContext, UndefinedFlagsAreZeroOnTheWayOn) {
  TraceContext t;
  ASSERT_TRUE(parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff", t));
  EXPECT_EQ(t.flags, 0x03);  // sampled and Level 2's random; the rest zero
}

TEST(TraceContext, TracestateIsBounded) {
  HeaderList many;
  many.add("traceparent", kValid);
  std::string list;
  for (int i = 0; i < 40; ++i) list += (i ? "," : "") + std::string("v") + std::to_string(i) + "=x";
  many.add("tracestate", list);
  TraceContext t;
  std::string state;
  ASSERT_TRUE(continue_trace(many, t, state));
  EXPECT_EQ(std::count(state.begin(), state.end(), ','), 31);  // the first 32 members
  EXPECT_TRUE(state.starts_with("v0=x,v1=x"));
  HeaderList long_one;
  long_one.add("traceparent", kValid);
  long_one.add("tracestate", "a=" + std::string(300, 'x') + ",b=" + std::string(300, 'y') + ",c=z");
  ASSERT_TRUE(continue_trace(long_one, t, state));
  EXPECT_EQ(state, "a=" + std::string(300, 'x'));  // b would pass 512 characters: it and what follows go
}

TEST(TraceContext, TracestateFieldsAreOneList) {
  HeaderList f;
  f.add("traceparent", kValid);
  f.add("tracestate", " congo=t61rcWkgMzE ");
  f.add("tracestate", "");
  f.add("tracestate", "rojo=00f067aa0ba902b7");
  TraceContext t;
  std::string state;
  EXPECT_TRUE(continue_trace(f, t, state));
  EXPECT_TRUE(t.continued);
  EXPECT_EQ(state, "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7");
}

}  // namespace
}  // namespace pilotfish
