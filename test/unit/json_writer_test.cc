#include "json/json_writer.h"

#include <gtest/gtest.h>

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

}  // namespace
}  // namespace pilotfish
