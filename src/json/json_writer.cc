#include "json/json_writer.h"

#include <charconv>
#include <cmath>

#include "text/utf8.h"

namespace pilotfish {

void json_string(std::string& out, std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  out += '"';
  size_t i = 0, copied = 0;  // s[copied, i) is plain ASCII waiting to be appended in one go
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {  // the common case: a run of plain text
      ++i;
      continue;
    }
    out.append(s.data() + copied, i - copied);
    size_t n = c >= 0x80 ? utf8_sequence_length(s, i) : 1;
    if (c == '"') {
      out += "\\\"";
    } else if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f || n == 0) {
      out += "\\u00";
      out += kHex[c >> 4];
      out += kHex[c & 15];
      n = 1;
    } else {
      out.append(s.data() + i, n);  // valid UTF-8, as it is
    }
    i += n;
    copied = i;
  }
  out.append(s.data() + copied, i - copied);
  out += '"';
}

namespace {

// std::to_chars: no locale, no allocation; for a double, the shortest text that reads back as it.
template <typename Number>
void append_chars(std::string& out, Number v) {
  char buf[32];  // the longest of these, "-2.2250738585072014e-308", is 24
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, static_cast<size_t>(end - buf));
}

}  // namespace

JsonWriter& JsonWriter::num(double v) {
  comma();
  if (std::isfinite(v))
    append_chars(out_, v);
  else
    out_ += "null";
  return *this;
}

JsonWriter& JsonWriter::signed_integer(int64_t v) {
  comma();
  append_chars(out_, v);
  return *this;
}

JsonWriter& JsonWriter::unsigned_integer(uint64_t v) {
  comma();
  append_chars(out_, v);
  return *this;
}

}  // namespace pilotfish
