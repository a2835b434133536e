#include "pilotfish/head_scanner.h"

#include <gtest/gtest.h>

#include <string>

using pilotfish::HeadScanner;

namespace {
// Feeds `text` in pieces of `step` bytes; returns the result and the total bytes used.
std::pair<HeadScanner::Result, size_t> scan(const std::string& text, size_t step) {
  HeadScanner s;
  s.reset();
  size_t off = 0;
  while (off < text.size()) {
    size_t n = std::min(step, text.size() - off);
    size_t used = 0;
    auto r = s.feed(text.data() + off, n, &used);
    if (r != HeadScanner::Result::in_head) return {r, off + used};
    off += n;
  }
  return {HeadScanner::Result::in_head, off};
}
}  // namespace

TEST(HeadScanner, FindsTheEndOfAValidHeadInAnyPieces) {
  std::string head = "GET / HTTP/1.1\r\nHost: a\r\nX: b c\r\n\r\n";
  for (size_t step : {1u, 2u, 3u, 7u, 100u}) {
    auto [r, used] = scan(head + "BODY\nwith bare LF", step);
    EXPECT_EQ(r, HeadScanner::Result::head_complete) << step;
    EXPECT_EQ(used, head.size()) << step;
  }
}

TEST(HeadScanner, IgnoresEmptyLinesBeforeTheRequestLine) {
  auto [r, used] = scan("\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 5);
  EXPECT_EQ(r, HeadScanner::Result::head_complete);
}

TEST(HeadScanner, RejectsBareLfBareCrAndFolding) {
  for (const char* bad : {"GET / HTTP/1.1\nHost: a\r\n\r\n", "GET / HTTP/1.1\r\nHost: a\n\r\n",
                          "GET / HTTP/1.1\r\nHost: a\r\n\n", "GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",
                          "GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", "GET / HTTP/1.1\r\nX: a\r\n\tb\r\n\r\n",
                          "GET / HTTP/1.1\r\n Host: a\r\n\r\n"}) {
    for (size_t step : {1u, 4u, 100u}) {
      auto [r, used] = scan(bad, step);
      EXPECT_EQ(r, HeadScanner::Result::invalid) << bad << " step " << step;
    }
  }
}
