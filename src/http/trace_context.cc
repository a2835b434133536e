#include "http/trace_context.h"

#include <cstring>

namespace pilotfish {

namespace {

constexpr char kHex[] = "0123456789abcdef";

bool lower_hex(std::string_view s) {
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

bool all_zero(std::string_view s) { return s.find_first_not_of('0') == std::string_view::npos; }

void put_hex(char* out, uint64_t v) {
  for (int i = 15; i >= 0; --i, v >>= 4) out[i] = kHex[v & 15];
}

int hex_value(char c) { return c <= '9' ? c - '0' : c - 'a' + 10; }

}  // namespace

void TraceContext::start(std::string_view hex32) {
  std::memcpy(trace_id, hex32.data(), 32);
  flags = 0x01;
  continued = false;
  set = true;
}

bool parse_traceparent(std::string_view v, TraceContext& out) {
  // version "-" trace-id "-" parent-id "-" trace-flags: 2 + 1 + 32 + 1 + 16 + 1 + 2 = 55.
  if (v.size() < 55 || v[2] != '-' || v[35] != '-' || v[52] != '-') return false;
  std::string_view version = v.substr(0, 2), trace = v.substr(3, 32), parent = v.substr(36, 16), flags = v.substr(53, 2);
  if (!lower_hex(version) || version == "ff") return false;
  // Version 00 is exactly 55 characters; a later one may carry more after a '-'.
  if (version == "00" ? v.size() != 55 : v.size() > 55 && v[55] != '-') return false;
  if (!lower_hex(trace) || !lower_hex(parent) || !lower_hex(flags) || all_zero(trace) || all_zero(parent)) return false;
  std::memcpy(out.trace_id, trace.data(), 32);
  out.flags = static_cast<uint8_t>(hex_value(flags[0]) * 16 + hex_value(flags[1]));
  // Only the flags defined so far go on (sampled, and Level 2's random trace id): the others are
  // zero in what a hop sends.
  out.flags &= 0x03;
  out.continued = true;
  out.set = true;
  return true;
}

bool continue_trace(const HeaderList& fields, TraceContext& out, std::string& tracestate) {
  tracestate.clear();
  size_t first = fields.find("traceparent");
  if (first == HeaderList::npos || fields.find("traceparent", first + 1) != HeaderList::npos) return false;
  if (!parse_traceparent(trim_ows(fields.value(first)), out)) return false;
  // Several tracestate fields are one list (RFC 9110 5.3); empty members are left out. At most
  // 32 members go on, and 512 characters: members past either are dropped from the end (the
  // oldest, as vendors add theirs at the front), as the specification lets a hop truncate.
  size_t members = 0;
  for (size_t i = fields.find("tracestate"); i != HeaderList::npos; i = fields.find("tracestate", i + 1)) {
    std::string_view list = fields.value(i);
    while (!list.empty()) {
      size_t comma = list.find(',');
      std::string_view member = trim_ows(list.substr(0, comma));
      list = comma == std::string_view::npos ? std::string_view() : list.substr(comma + 1);
      if (member.empty()) continue;
      if (members == kMaxTracestateMembers ||
          tracestate.size() + (tracestate.empty() ? 0 : 1) + member.size() > kMaxTracestateBytes)
        return true;
      if (!tracestate.empty()) tracestate += ',';
      tracestate += member;
      ++members;
    }
  }
  return true;
}

void random_trace_id(char out[32], uint64_t high, uint64_t low) {
  if (high == 0 && low == 0) low = 1;  // an all-zero trace id is invalid
  put_hex(out, high);
  put_hex(out + 16, low);
}

void format_traceparent(char out[kTraceparentSize], const TraceContext& trace, uint64_t parent) {
  std::memcpy(out, "00-", 3);
  std::memcpy(out + 3, trace.trace_id, 32);
  out[35] = '-';
  put_hex(out + 36, parent ? parent : 1);
  out[52] = '-';
  out[53] = kHex[trace.flags >> 4];
  out[54] = kHex[trace.flags & 15];
}

}  // namespace pilotfish
