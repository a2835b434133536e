#include "json/json_writer.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>

#include "json/json_reader.h"

namespace pilotfish {
namespace {

std::string as_json(std::string_view s) {
  std::string out;
  json_string(out, s);
  return out;
}

TEST(JsonWriter, StringsAreEscapedAndStayValidJson) {
  EXPECT_EQ(as_json("plain"), "\"plain\"");
  EXPECT_EQ(as_json("a\r\nb\t\"c\"\\"), "\"a\\r\\nb\\t\\\"c\\\"\\\\\"");
  EXPECT_EQ(as_json(std::string("a\0b", 3)), "\"a\\u0000b\"");
  EXPECT_EQ(as_json("\x1b\x7f"), "\"\\u001b\\u007f\"");
  EXPECT_EQ(as_json("caf\xc3\xa9 \xe2\x9c\x93"), "\"caf\xc3\xa9 \xe2\x9c\x93\"");  // UTF-8 as it is
  EXPECT_EQ(as_json("\xff\xc3"), "\"\\u00ff\\u00c3\"");  // bytes that are not UTF-8, each visible
  // Whatever the bytes, the result parses as strict JSON.
  std::string all;
  for (int c = 0; c < 256; ++c) all += static_cast<char>(c);
  std::string err;
  EXPECT_TRUE(parse_json_strict(as_json(all), JsonLimits{}, &err)) << err;
}

TEST(JsonWriter, ObjectsArraysAndCommas) {
  std::string out;
  JsonWriter w(out);
  w.begin_object().key("a").integer(-3).key("b").begin_array().str("x").boolean(true).null().end_array();
  w.key("c").begin_object().end_object().key("d").raw("[1]").key("e").strings({"p", "q"}).key("f").num(0.5);
  w.end_object();
  EXPECT_EQ(out, R"({"a":-3,"b":["x",true,null],"c":{},"d":[1],"e":["p","q"],"f":0.5})");
}

TEST(JsonWriter, NumbersAreTheShortestTextAndAlwaysJson) {
  auto number = [](double v) {
    std::string out;
    JsonWriter(out).num(v);
    return out;
  };
  EXPECT_EQ(number(0.2), "0.2");  // not 0.20000000000000001
  EXPECT_EQ(number(0.1), "0.1");
  EXPECT_EQ(number(1.1), "1.1");
  EXPECT_EQ(number(50), "50");
  EXPECT_EQ(number(-0.5), "-0.5");
  EXPECT_EQ(number(1e21), "1e+21");
  // JSON has no NaN or infinity; a parser would refuse the whole document for one.
  EXPECT_EQ(number(std::numeric_limits<double>::quiet_NaN()), "null");
  EXPECT_EQ(number(std::numeric_limits<double>::infinity()), "null");
  EXPECT_EQ(number(-std::numeric_limits<double>::infinity()), "null");

  std::string out;
  JsonWriter w(out);
  w.begin_array().integer(std::numeric_limits<uint64_t>::max()).integer(std::numeric_limits<int64_t>::min());
  w.integer(uint32_t{4294967295}).integer(-3).integer(size_t{0}).num(2.5e-8).end_array();
  EXPECT_EQ(out, "[18446744073709551615,-9223372036854775808,4294967295,-3,0,2.5e-08]");
  std::string err;
  EXPECT_TRUE(parse_json_strict(out, JsonLimits{}, &err)) << err;
}

}  // namespace
}  // namespace pilotfish
