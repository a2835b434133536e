#pragma once
// Where a YAML text leaves a bracket or a quote open. yaml-cpp notices an unclosed '[' or '{'
// only at the end of the file and reports that place, and it does not report an unclosed quote
// at all (0.7 ends the quoted scalar at the end of the file and goes on). The place an operator
// needs is where the bracket or quote opened; this scan finds it without yaml-cpp.
//
// The scan knows as much YAML as the question needs: quotes and brackets open a node only where
// a node can begin (so the apostrophe of `o'brien` or the '[' of `/a[b` are text), comments,
// escapes inside double quotes, '' inside single quotes, and block scalars (`|`, `>`), whose
// lines are text whatever they hold.

#include <optional>
#include <string_view>

namespace pilotfish {

struct YamlOpener {
  char symbol = 0;  // '[', '{', '"' or '\''
  int line = 0;     // 1-based
  int column = 0;   // 1-based, in bytes, as yaml-cpp counts
};

// The innermost bracket or quote still open at the end of `text`: an open quote (everything
// after it is inside it), else the last '[' or '{' that is not closed. nullopt when everything
// closes, or when brackets nest too deep to keep each place (yaml-cpp refuses such a file for
// its depth anyway).
std::optional<YamlOpener> find_unclosed_opener(std::string_view text);

}  // namespace pilotfish
