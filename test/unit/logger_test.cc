#include "log/logger.h"

#include <gtest/gtest.h>

namespace pilotfish {
namespace {

std::string safe(std::string_view s) {
  std::string out;
  append_log_safe(out, s);
  return out;
}

TEST(LogLine, OutsideTextCannotEndOrForgeALine) {
  EXPECT_EQ(safe("plain text, caf\xc3\xa9 \xe2\x9c\x93"), "plain text, caf\xc3\xa9 \xe2\x9c\x93");
  EXPECT_EQ(safe("a\r\nb"), "a\\x0d\\x0ab");
  EXPECT_EQ(safe(std::string("a\0b", 3)), "a\\x00b");
  EXPECT_EQ(safe("a\x1b[31mb\x7f"), "a\\x1b[31mb\\x7f");
  EXPECT_EQ(safe("back\\x0aslash"), "back\\\\x0aslash");  // an escape cannot be faked
  EXPECT_EQ(safe("\xff\xfe"), "\\xff\\xfe");              // not UTF-8
  EXPECT_EQ(safe("\xc3"), "\\xc3");                      // a sequence cut short
  EXPECT_EQ(safe("\xc0\xaf"), "\\xc0\\xaf");              // overlong '/'
  EXPECT_EQ(safe("\xed\xa0\x80"), "\\xed\\xa0\\x80");     // a surrogate
  EXPECT_EQ(safe("\"quoted\""), "\"quoted\"");
}

}  // namespace
}  // namespace pilotfish
