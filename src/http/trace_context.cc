#include "http/trace_context.h"

namespace pilotfish {

namespace {

constexpr char kHex[] = "0123456789abcdef";

bool lower_hex(std::string_view s) {
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

bool all_zero(std::string_view s) { return s.find_first_not_of('0') == std::string_view::npos; }

void append_hex(std::string& out, uint64_t v) {
  char buf[16];
  for (int i = 15; i >= 0; --i, v >>= 4) buf[i] = kHex[v & 15];
  out.append(buf, 16);
}

int hex_value(char c) { return c <= '9' ? c - '0' : c - 'a' + 10; }

}  // namespace

bool parse_traceparent(std::string_view v, TraceContext& out) {
  // version "-" trace-id "-" parent-id "-" trace-flags: 2 + 1 + 32 + 1 + 16 + 1 + 2 = 55.
  if (v.size() < 55 || v[2] != '-' || v[35] != '-' || v[52] != '-') return false;
  std::string_view version = v.substr(0, 2), trace = v.substr(3, 32), parent = v.substr(36, 16), flags = v.substr(53, 2);
  if (!lower_hex(version) || version == "ff") return false;
  // Version 00 is exactly 55 characters; a later one may carry more after a '-'.
  if (version == "00" ? v.size() != 55 : v.size() > 55 && v[55] != '-') return false;
  if (!lower_hex(trace) || !lower_hex(parent) || !lower_hex(flags) || all_zero(trace) || all_zero(parent)) return false;
  out.trace_id.assign(trace);
  out.flags = static_cast<uint8_t>(hex_value(flags[0]) * 16 + hex_value(flags[1]));
  // Only the flags version 00 defines go on (sampled); a later version's others are not ours to
  // pass as 00's.
  if (version != "00") out.flags &= 0x01;
  out.continued = true;
  return true;
}

void trace_from_request(const HeaderList& fields, uint64_t random_high, uint64_t random_low, TraceContext& out,
                        std::string& tracestate) {
  tracestate.clear();
  size_t first = fields.find("traceparent");
  bool one = first != HeaderList::npos && fields.find("traceparent", first + 1) == HeaderList::npos;
  if (one && parse_traceparent(trim_ows(fields.value(first)), out)) {
    // Several tracestate fields are one list (RFC 9110 5.3); empty members are left as they are.
    for (size_t i = fields.find("tracestate"); i != HeaderList::npos; i = fields.find("tracestate", i + 1)) {
      std::string_view part = trim_ows(fields.value(i));
      if (part.empty()) continue;
      if (!tracestate.empty()) tracestate += ',';
      tracestate += part;
    }
    return;
  }
  out.trace_id.clear();
  if (random_high == 0 && random_low == 0) random_low = 1;  // an all-zero trace id is invalid
  append_hex(out.trace_id, random_high);
  append_hex(out.trace_id, random_low);
  out.flags = 0x01;  // sampled: what an application's parent-based sampler did before it had a parent
  out.continued = false;
}

void format_traceparent(std::string& out, const TraceContext& trace, uint64_t parent) {
  out.assign("00-");
  out += trace.trace_id;
  out += '-';
  append_hex(out, parent ? parent : 1);
  out += '-';
  out += kHex[trace.flags >> 4];
  out += kHex[trace.flags & 15];
}

}  // namespace pilotfish
