#include "json/json_writer.h"

#include <charconv>
#include <cstdio>

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

void json_string_array(std::string& out, const std::vector<std::string>& items) { JsonWriter(out).strings(items); }

JsonWriter& JsonWriter::num(double v) {
  comma();
  char buf[32];
  int n = snprintf(buf, sizeof buf, "%.17g", v);
  out_.append(buf, static_cast<size_t>(n));
  return *this;
}

JsonWriter& JsonWriter::integer(int64_t v) {
  comma();
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  out_.append(buf, static_cast<size_t>(end - buf));
  return *this;
}

}  // namespace pilotfish
