#pragma once
// UTF-8 validity, for the two places that write outside text: log lines and JSON strings.

#include <cstddef>
#include <string_view>

namespace pilotfish {

// The length of the UTF-8 sequence at text[i], or 0 when the bytes there are not UTF-8
// (overlong forms, surrogates and code points past U+10FFFF included).
size_t utf8_sequence_length(std::string_view text, size_t i);

}  // namespace pilotfish
