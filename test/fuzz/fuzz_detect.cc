// Protocol detection of intercepted connections: any bytes, any split; the answer for a prefix
// never contradicts the answer for the whole (a `yes` or `no` stays so as bytes arrive).
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "proxy/intercept.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const char* p = reinterpret_cast<const char*>(data);
  pilotfish::Detected whole = pilotfish::detect_http1(p, size);
  for (size_t n = 0; n <= size; ++n) {
    pilotfish::Detected d = pilotfish::detect_http1(p, n);
    if (d != pilotfish::Detected::more && d != whole) std::abort();
  }
  return 0;
}
