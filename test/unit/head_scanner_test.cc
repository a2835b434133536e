#include "pilotfish/head_scanner.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
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

namespace {
// The scanner as first written, a byte at a time: the reference the line-at-a-time one must
// agree with on every input and every way of cutting it into pieces.
struct ByteScanner {
  char last = 0;
  size_t line_length = 0, lines = 0;
  HeadScanner::Result feed(const char* data, size_t length, size_t* used) {
    for (size_t i = 0; i < length; ++i) {
      char c = data[i];
      if (last == '\r' && c != '\n') return *used = i, HeadScanner::Result::invalid;
      if (c == '\n') {
        if (last != '\r') return *used = i, HeadScanner::Result::invalid;
        last = c;
        if (line_length == 0) {
          if (lines == 0) continue;
          *used = i + 1;
          return HeadScanner::Result::head_complete;
        }
        ++lines;
        line_length = 0;
        continue;
      }
      if (c != '\r') {
        if (line_length == 0 && lines > 0 && (c == ' ' || c == '\t')) return *used = i, HeadScanner::Result::invalid;
        ++line_length;
      }
      last = c;
    }
    *used = length;
    return HeadScanner::Result::in_head;
  }
};
}  // namespace

TEST(HeadScanner, AgreesWithTheByteAtATimeScannerOnRandomInput) {
  const char alphabet[] = {'a', 'b', ':', ' ', '\t', '\r', '\n', '\r', '\n'};
  uint32_t seed = 12345;
  auto next = [&seed] { return seed = seed * 1103515245u + 12345u, (seed >> 16) & 0x7fff; };
  for (int round = 0; round < 20000; ++round) {
    std::string text;
    size_t length = next() % 40;
    for (size_t i = 0; i < length; ++i) text += alphabet[next() % sizeof alphabet];
    if (round % 3 == 0) text = "GET / HTTP/1.1\r\n" + text;  // often past the first line
    HeadScanner fast;
    fast.reset();
    ByteScanner slow;
    size_t off = 0;
    while (off < text.size()) {
      size_t n = std::min<size_t>(1 + next() % 8, text.size() - off);
      size_t used_fast = 99, used_slow = 98;
      auto a = fast.feed(text.data() + off, n, &used_fast);
      auto b = slow.feed(text.data() + off, n, &used_slow);
      ASSERT_EQ(a, b) << "round " << round << " at " << off;
      ASSERT_EQ(used_fast, used_slow) << "round " << round << " at " << off;
      if (a != HeadScanner::Result::in_head) break;
      off += n;
    }
  }
}
