#include "pilotfish/version.h"

#include <openssl/crypto.h>
#include <openssl/opensslv.h>
#include <uv.h>

#include "http/http1_codec.h"
#include "pilotfish_build_config.h"

namespace pilotfish {

std::string version_text() {
  std::string s = "pilotfish " PILOTFISH_VERSION "\n";
  s += "libuv " + std::string(uv_version_string()) + " (built with " + std::to_string(UV_VERSION_MAJOR) + "." +
       std::to_string(UV_VERSION_MINOR) + "." + std::to_string(UV_VERSION_PATCH) + ")\n";
  s += http1_parser_version() + "\n";
  s += std::string(OpenSSL_version(OPENSSL_VERSION)) + " (built with " OPENSSL_VERSION_TEXT ")\n";
  s += "yaml-cpp " PILOTFISH_YAML_CPP_VERSION "\n";
  s += "prometheus-cpp " PILOTFISH_PROMETHEUS_CPP_VERSION "\n";
  return s;
}

}  // namespace pilotfish
