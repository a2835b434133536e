// parse_duration / format_duration: the duration syntax of policy files.

#include <gtest/gtest.h>

#include <string>

#include "pilotfish/policy_loader.h"

namespace pilotfish {
namespace {

Duration parsed(const std::string& text) {
  Duration d{-1};
  EXPECT_TRUE(parse_duration(text, &d)) << text;
  return d;
}

std::string why_not(const std::string& text) {
  Duration d{-1};
  std::string why;
  EXPECT_FALSE(parse_duration(text, &d, &why)) << text;
  EXPECT_EQ(d.count(), -1) << "output written on failure for " << text;
  return why;
}

TEST(ParseDuration, AcceptsEveryUnit) {
  EXPECT_EQ(parsed("250ms"), Duration{250});
  EXPECT_EQ(parsed("5s"), Duration{5'000});
  EXPECT_EQ(parsed("2m"), Duration{120'000});
  EXPECT_EQ(parsed("1h"), Duration{3'600'000});
  EXPECT_EQ(parsed("300s"), Duration{300'000});
  EXPECT_EQ(parsed("1500ms"), Duration{1'500});
}

TEST(ParseDuration, AcceptsZeroWithOrWithoutUnit) {
  EXPECT_EQ(parsed("0"), Duration{0});
  EXPECT_EQ(parsed("0s"), Duration{0});
  EXPECT_EQ(parsed("0ms"), Duration{0});
  EXPECT_EQ(parsed("00"), Duration{0});
}

TEST(ParseDuration, RejectsNegatives) {
  EXPECT_NE(why_not("-1s").find("is negative"), std::string::npos);
  EXPECT_NE(why_not("-0").find("is negative"), std::string::npos);
}

TEST(ParseDuration, RejectsMissingUnit) {
  EXPECT_EQ(why_not("5"), "'5' has no unit (write 5s or 5ms)");
  why_not("250");
}

TEST(ParseDuration, RejectsFractionsUnknownUnitsAndJunk) {
  for (const char* text : {"1.5s", "5 s", " 5s", "5s ", "+5s", "5sec", "5d", "5us", "ms", "s", "", "five", "5S",
                           "0x10s", "1h30m", "5ms5"}) {
    why_not(text);
  }
}

TEST(ParseDuration, RejectsOverflow) {
  EXPECT_NE(why_not("99999999999999999999999h").find("too large"), std::string::npos);
  EXPECT_NE(why_not("18446744073709551616ms").find("too large"), std::string::npos);
  EXPECT_NE(why_not("9223372036854775807s").find("too large"), std::string::npos);
  // The largest accepted value still converts to nanoseconds without overflow.
  Duration biggest = parsed("2562047h");
  EXPECT_GT(std::chrono::duration_cast<std::chrono::nanoseconds>(biggest).count(), 0);
  why_not("2562048h");
}

TEST(ParseDuration, ErrorPointerMayBeNull) {
  Duration d{7};
  EXPECT_FALSE(parse_duration("x", &d, nullptr));
  EXPECT_FALSE(parse_duration("x", &d));
  EXPECT_TRUE(parse_duration("1s", nullptr));
}

TEST(FormatDuration, UsesTheLargestExactUnit) {
  EXPECT_EQ(format_duration(Duration{0}), "0s");
  EXPECT_EQ(format_duration(Duration{250}), "250ms");
  EXPECT_EQ(format_duration(Duration{1'500}), "1500ms");
  EXPECT_EQ(format_duration(Duration{5'000}), "5s");
  EXPECT_EQ(format_duration(Duration{90'000}), "90s");
  EXPECT_EQ(format_duration(Duration{120'000}), "2m");
  EXPECT_EQ(format_duration(Duration{3'600'000}), "1h");
  EXPECT_EQ(format_duration(Duration{-250}), "-250ms");
}

TEST(FormatDuration, RoundTripsThroughParse) {
  for (int64_t ms : {0L, 1L, 999L, 1'000L, 61'000L, 3'600'000L, 7'200'001L, 86'400'000L}) {
    Duration back{-1};
    ASSERT_TRUE(parse_duration(format_duration(Duration{ms}), &back)) << ms;
    EXPECT_EQ(back, Duration{ms});
  }
}

}  // namespace
}  // namespace pilotfish
