// The policy loader on any text: errors or a policy, never a crash or an escaped exception.
#include <cstddef>
#include <cstdint>
#include <string>

#include "pilotfish/policy_loader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 64 * 1024) return 0;
  std::string text(reinterpret_cast<const char*>(data), size);
  auto result = pilotfish::load_policy_text(text, "fuzz.yaml", ".", /*check_files=*/false);
  for (const auto& e : result.errors) (void)e.to_string();
  return 0;
}
