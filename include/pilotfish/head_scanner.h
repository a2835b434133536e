#pragma once
// A byte-level check of an HTTP/1.1 message head that runs before the parser (the one behind
// http/http1_codec, Debian's 8.1 build) sees the bytes. That parser accepts a bare LF as a line
// end and unfolds obs-fold even in strict mode; both have been used to smuggle requests past
// proxies that disagree with the server behind them. This scanner rejects them, and a bare CR,
// and a header line that starts with whitespace, so that the parser only ever parses a head
// with CRLF line ends and no folding.

#include <cstddef>
#include <cstring>

namespace pilotfish {

class HeadScanner {
 public:
  enum class Result { in_head, head_complete, invalid };

  // Call at the start of every message.
  void reset() {
    last_ = 0;
    line_length_ = 0;
    lines_ = 0;
    in_head_ = true;
  }
  // Call where a chunked body's trailer section begins (after the last chunk's size line): the
  // same rules, and an empty first line ends it (no start line comes first).
  void reset_for_trailers() {
    reset();
    lines_ = 1;
  }
  bool in_head() const { return in_head_; }

  // Scans up to `length` bytes. Returns head_complete with *used = bytes up to and including
  // the blank line's LF; in_head with *used = length when the head goes on; invalid on a bad
  // byte (then *used is its offset).
  Result feed(const char* data, size_t length, size_t* used) {
    // Line by line rather than byte by byte: most bytes are neither CR nor LF, and memchr
    // finds the next CR (and checks that no LF comes before it) many bytes at a time. This runs
    // over every request and response head.
    size_t i = 0;
    while (i < length) {
      if (last_ == '\r') {
        if (data[i] != '\n') return fail(i, used);  // a bare CR
        last_ = '\n';
        ++i;
        if (line_length_ == 0) {
          if (lines_ == 0) continue;  // an empty line before the request line is ignored
          in_head_ = false;
          *used = i;
          return Result::head_complete;
        }
        ++lines_;
        line_length_ = 0;
        continue;
      }
      // A line after the first that starts with whitespace is obs-fold (or a header name with
      // leading whitespace): never valid in a request or response head we accept.
      if (line_length_ == 0 && lines_ > 0 && (data[i] == ' ' || data[i] == '\t')) return fail(i, used);
      const char* start = data + i;
      size_t rest = length - i;
      const char* cr = static_cast<const char*>(std::memchr(start, '\r', rest));
      size_t run = cr ? static_cast<size_t>(cr - start) : rest;
      if (const void* lf = std::memchr(start, '\n', run))  // an LF not after a CR
        return fail(static_cast<size_t>(static_cast<const char*>(lf) - data), used);
      if (run > 0) {
        line_length_ += run;
        last_ = start[run - 1];
      }
      i += run;
      if (cr) {
        last_ = '\r';
        ++i;
      }
    }
    *used = length;
    return Result::in_head;
  }

 private:
  Result fail(size_t at, size_t* used) {
    *used = at;
    return Result::invalid;
  }
  char last_ = 0;
  size_t line_length_ = 0;
  size_t lines_ = 0;
  bool in_head_ = true;
};

}  // namespace pilotfish
