#pragma once
// W3C Trace Context (https://www.w3.org/TR/trace-context/): the `traceparent` a request arrives
// with, and the one it goes upstream with. A request that carries a valid traceparent keeps its
// trace id and sampled flag, and its `tracestate` goes on as it came; one that carries none, or
// one that is not valid (then its tracestate is dropped too, as the specification says), starts a
// new trace. At each hop the parent id is new: pilotfish's own, for this request. Nothing here
// allocates but the tracestate that goes on.

#include <cstdint>
#include <string>
#include <string_view>

#include "pilotfish/header_list.h"

namespace pilotfish {

struct TraceContext {
  char trace_id[32];        // lower-case hex, not all zero (valid when `set`)
  uint8_t flags = 0;        // trace-flags (bit 0: sampled)
  bool continued = false;   // from the request's traceparent (else new)
  bool set = false;
  std::string_view id() const { return set ? std::string_view(trace_id, 32) : std::string_view(); }
  // A new trace with `hex32` (32 lower-case hex digits, not all zero) as its id, sampled: what an
  // application's parent-based sampler did before a proxy gave it a parent.
  void start(std::string_view hex32);
};

// A traceparent value: version 00 exactly as the specification writes it, or a later version by
// its first four fields (a version it does not know is read as 00 would be). False when it is not
// valid: a wrong length or separator, upper-case or non-hex digits, an all-zero trace or parent
// id, version ff.
bool parse_traceparent(std::string_view value, TraceContext& out);

constexpr size_t kMaxTracestateMembers = 32;
constexpr size_t kMaxTracestateBytes = 512;
// Continues the request's trace when it has exactly one valid traceparent: `tracestate` gets its
// tracestate fields' members joined by commas, the first 32 that fit in 512 characters. False (`tracestate` cleared, `out` untouched) otherwise:
// the caller starts a new trace.
bool continue_trace(const HeaderList& fields, TraceContext& out, std::string& tracestate);

// 32 lower-case hex digits of two random words, into `out` (never all zero).
void random_trace_id(char out[32], uint64_t high, uint64_t low);

constexpr size_t kTraceparentSize = 55;
// "00-TRACE_ID-PARENT_ID-FLAGS" into `out`, with `parent` (not zero) as the parent id.
// (The flags are the trace's; a mirror's copy goes with the sampled flag cleared.)
void format_traceparent(char out[kTraceparentSize], const TraceContext& trace, uint64_t parent);

}  // namespace pilotfish
