#include "json/json_writer.h"

#include <cinttypes>
#include <cstdio>

#include "text/utf8.h"

namespace pilotfish {

void json_string(std::string& out, std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  out += '"';
  for (size_t i = 0; i < s.size();) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t n = utf8_sequence_length(s, i);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (n == 0 || c < 0x20 || c == 0x7f) {
          out += "\\u00";
          out += kHex[c >> 4];
          out += kHex[c & 15];
        } else {
          out.append(s.data() + i, n);
          i += n;
          continue;
        }
    }
    ++i;
  }
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
  int n = snprintf(buf, sizeof buf, "%" PRId64, v);
  out_.append(buf, static_cast<size_t>(n));
  return *this;
}

}  // namespace pilotfish
