#pragma once
#include <string>

namespace pilotfish {
// The text `pilotfish version` prints: pilotfish's version and every library it was built with.
std::string version_text();
}  // namespace pilotfish
