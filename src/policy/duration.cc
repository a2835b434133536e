// Durations in policy text: an integer with a unit ("250ms", "5s", "2m", "1h"), or a bare "0".
// Integers only, so that a value means exactly what it says (no "1.5s" rounding questions), and a
// unit is mandatory, so that "timeout: 5" cannot silently mean 5 milliseconds.

#include <charconv>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>

#include "pilotfish/policy_loader.h"
#include "policy/quote.h"

namespace pilotfish {
namespace {

std::string quote_value_short(std::string_view text) { return quote_value(text, 40); }

// The largest duration we accept is the largest that still fits in int64 nanoseconds, so any
// consumer may convert a policy duration to any std::chrono type without overflow (~292 years).
constexpr int64_t kMaxMilliseconds = std::numeric_limits<int64_t>::max() / 1'000'000;

struct Unit {
  std::string_view suffix;
  int64_t milliseconds;
};
// "ms" before "m" and "s": suffixes are tried in order.
constexpr Unit kUnits[] = {{"ms", 1}, {"s", 1'000}, {"m", 60'000}, {"h", 3'600'000}};

bool fail(std::string* error, std::string message) {
  if (error) *error = std::move(message);
  return false;
}

bool all_digits(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s)
    if (c < '0' || c > '9') return false;
  return true;
}

}  // namespace

bool parse_duration(std::string_view text, Duration* out, std::string* error) {
  constexpr std::string_view kForm = "an integer with a unit: 250ms, 5s, 2m, 1h; or 0";
  if (text.empty()) return fail(error, "empty duration (expected " + std::string(kForm) + ")");
  if (text.front() == '-') return fail(error, quote_value_short(text) + " is negative (a duration must be 0 or more)");

  if (all_digits(text)) {
    // Only zero is unambiguous without a unit.
    if (text.find_first_not_of('0') == std::string_view::npos) {
      if (out) *out = Duration{0};
      return true;
    }
    return fail(error, quote_value_short(text) + " has no unit (write " + std::string(text.substr(0, 20)) + "s or " +
                           std::string(text.substr(0, 20)) + "ms)");
  }

  for (const Unit& unit : kUnits) {
    if (!text.ends_with(unit.suffix)) continue;
    std::string_view number = text.substr(0, text.size() - unit.suffix.size());
    if (!all_digits(number)) break;  // e.g. "1.5s", "5 s", "+5s", "ms"
    uint64_t value = 0;
    auto [end, ec] = std::from_chars(number.data(), number.data() + number.size(), value);
    if (ec != std::errc() || end != number.data() + number.size() ||
        value > static_cast<uint64_t>(kMaxMilliseconds / unit.milliseconds)) {
      return fail(error, quote_value_short(text) + " is too large (the most is " + std::to_string(kMaxMilliseconds / 3'600'000) +
                             "h, about 292 years)");
    }
    if (out) *out = Duration{static_cast<int64_t>(value) * unit.milliseconds};
    return true;
  }
  return fail(error, quote_value_short(text) + " is not a duration (expected " + std::string(kForm) + ")");
}

bool parse_duration(std::string_view text, Duration* out) { return parse_duration(text, out, nullptr); }

std::string format_duration(Duration d) {
  int64_t ms = d.count();
  if (ms == 0) return "0s";
  std::string sign;
  uint64_t magnitude = static_cast<uint64_t>(ms);
  if (ms < 0) {
    sign = "-";
    magnitude = 0 - magnitude;  // well defined for INT64_MIN too, unlike -ms
  }
  // The largest unit that expresses the value exactly, so that parse_duration(format_duration(d))
  // gives d back.
  if (magnitude % 3'600'000 == 0) return sign + std::to_string(magnitude / 3'600'000) + "h";
  if (magnitude % 60'000 == 0) return sign + std::to_string(magnitude / 60'000) + "m";
  if (magnitude % 1'000 == 0) return sign + std::to_string(magnitude / 1'000) + "s";
  return sign + std::to_string(magnitude) + "ms";
}

}  // namespace pilotfish
