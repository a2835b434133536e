#pragma once
// pilotfish's one JSON writer: the access log, GET /config, the policy diff, policy events and
// every other admin answer are written with it, so that one function decides how text becomes a
// JSON string. It appends to a caller's std::string and allocates nothing of its own, which is
// what the access log's hot path needs.
//
// Strings: '"', '\' and control characters are escaped (\n, \r, \t, else \u00XX), DEL too; valid
// UTF-8 passes as it is; a byte that is not part of valid UTF-8 is written as \u00XX (the byte as
// a code point), so the output is always valid JSON and such bytes stay visible.

#include <concepts>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace pilotfish {

void json_string(std::string& out, std::string_view s);

class JsonWriter {
 public:
  explicit JsonWriter(std::string& out) : out_(out) {}
  JsonWriter& key(std::string_view k) {
    comma();
    json_string(out_, k);
    out_ += ':';
    fresh_ = true;
    return *this;
  }
  JsonWriter& str(std::string_view v) {
    comma();
    json_string(out_, v);
    return *this;
  }
  // The shortest text that reads back as the same double (0.2, not 0.20000000000000001); null
  // for NaN and the infinities, which JSON has no words for.
  JsonWriter& num(double v);
  // Any integer type, every digit (a uint64_t past 2^53 would lose some as a double).
  template <std::integral T>
  JsonWriter& integer(T v) {
    if constexpr (std::is_signed_v<T>)
      return signed_integer(v);
    else
      return unsigned_integer(v);
  }
  JsonWriter& boolean(bool v) {
    comma();
    out_ += v ? "true" : "false";
    return *this;
  }
  JsonWriter& null() {
    comma();
    out_ += "null";
    return *this;
  }
  // A value that is JSON already (another writer's output).
  JsonWriter& raw(std::string_view json) {
    comma();
    out_ += json;
    return *this;
  }
  JsonWriter& strings(const std::vector<std::string>& items) {
    begin_array();
    for (const auto& s : items) str(s);
    return end_array();
  }
  JsonWriter& begin_object() { return open('{'); }
  JsonWriter& end_object() { return close('}'); }
  JsonWriter& begin_array() { return open('['); }
  JsonWriter& end_array() { return close(']'); }

 private:
  void comma() {
    if (!fresh_) out_ += ',';
    fresh_ = false;
  }
  JsonWriter& open(char c) {
    comma();
    out_ += c;
    fresh_ = true;
    return *this;
  }
  JsonWriter& close(char c) {
    out_ += c;
    fresh_ = false;
    return *this;
  }
  JsonWriter& signed_integer(int64_t v);
  JsonWriter& unsigned_integer(uint64_t v);
  std::string& out_;
  bool fresh_ = true;
};

}  // namespace pilotfish
