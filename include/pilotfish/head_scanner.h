#pragma once
// A byte-level check of an HTTP/1.1 message head that runs before the parser (the one behind
// http/http1_codec, Debian's 8.1 build) sees the bytes. That parser accepts a bare LF as a line
// end and unfolds obs-fold even in strict mode; both have been used to smuggle requests past
// proxies that disagree with the server behind them. This scanner rejects them, and a bare CR,
// and a header line that starts with whitespace, so that the parser only ever parses a head
// with CRLF line ends and no folding.

#include <cstddef>

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
    for (size_t i = 0; i < length; ++i) {
      char c = data[i];
      if (last_ == '\r' && c != '\n') return fail(i, used);
      if (c == '\n') {
        if (last_ != '\r') return fail(i, used);
        last_ = c;
        if (line_length_ == 0) {
          if (lines_ == 0) continue;  // an empty line before the request line is ignored
          in_head_ = false;
          *used = i + 1;
          return Result::head_complete;
        }
        ++lines_;
        line_length_ = 0;
        continue;
      }
      if (c != '\r') {
        // A line after the first that starts with whitespace is obs-fold (or a header name
        // with leading whitespace): never valid in a request or response head we accept.
        if (line_length_ == 0 && lines_ > 0 && (c == ' ' || c == '\t')) return fail(i, used);
        ++line_length_;
      }
      last_ = c;
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
