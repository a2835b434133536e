#pragma once
// W3C Trace Context (https://www.w3.org/TR/trace-context/): the `traceparent` a request arrives
// with, and the one it goes upstream with. A request that carries a valid traceparent keeps its
// trace id and sampled flag, and its `tracestate` goes on as it came; one that carries none, or
// one that is not valid (then its tracestate is dropped too, as the specification says), starts a
// new trace. At each hop the parent id is new: pilotfish's own, for this request.

#include <cstdint>
#include <string>
#include <string_view>

#include "pilotfish/header_list.h"

namespace pilotfish {

struct TraceContext {
  std::string trace_id;     // 32 lower-case hex digits, not all zero
  uint8_t flags = 0;        // trace-flags (bit 0: sampled)
  bool continued = false;   // from the request's traceparent (else new)
};

// A traceparent value: version 00 exactly as the specification writes it, or a later version by
// its first four fields (a version it does not know is read as 00 would be). False when it is not
// valid: a wrong length or separator, upper-case or non-hex digits, an all-zero trace or parent
// id, version ff.
bool parse_traceparent(std::string_view value, TraceContext& out);

// The request's trace context from its fields: continued when it has exactly one valid
// traceparent, else a new trace id from the two random words (flags: sampled). `tracestate` gets
// the request's tracestate fields joined by commas when continued, else it is cleared.
void trace_from_request(const HeaderList& fields, uint64_t random_high, uint64_t random_low, TraceContext& out,
                        std::string& tracestate);

// "00-TRACE_ID-PARENT_ID-FLAGS" into `out` (replaced), with `parent` (not zero) as the parent id.
void format_traceparent(std::string& out, const TraceContext& trace, uint64_t parent);

}  // namespace pilotfish
