#pragma once
// Shows a value from a policy file inside an error message: quoted, shortened, and without
// control characters, so that a message stays one line on a terminal.

#include <string>
#include <string_view>

namespace pilotfish {

inline std::string quote_value(std::string_view text, size_t max_shown = 60) {
  std::string out = "'";
  for (char c : text.substr(0, max_shown)) {
    unsigned char uc = static_cast<unsigned char>(c);
    out += (uc < 0x20 || uc == 0x7f) ? '?' : c;
  }
  if (text.size() > max_shown) out += "...";
  return out + "'";
}

}  // namespace pilotfish
