#include "pilotfish/path_normalizer.h"

#include <vector>

namespace pilotfish {

namespace {
int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}
bool is_unreserved(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
         c == '_' || c == '~';
}

// A segment a server may take for "." or ".." once it drops path parameters (Tomcat, Spring
// and Jetty read "/..;x/" as "/../"): a dot-segment followed by ';' or an encoded ';'.
bool is_dot_segment_with_params(std::string_view seg) {
  size_t dots = seg.starts_with("..") ? 2 : seg.starts_with(".") ? 1 : 0;
  if (dots == 0) return false;
  std::string_view rest = seg.substr(dots);
  return rest.starts_with(";") || rest.starts_with("%3B");
}

}  // namespace

std::optional<NormalizedTarget> normalize_target(std::string_view target, bool allow_ambiguous) {
  if (target.empty() || target.front() != '/') return std::nullopt;
  NormalizedTarget out;
  size_t q = target.find('?');
  std::string_view raw_path = target.substr(0, q);
  if (q != std::string_view::npos) out.query = std::string(target.substr(q));
  if (raw_path.find('#') != std::string_view::npos) return std::nullopt;

  // Decode unreserved escapes first, so that "%2e%2e" becomes a dot-segment and is removed below.
  std::string decoded;
  decoded.reserve(raw_path.size());
  for (size_t i = 0; i < raw_path.size(); ++i) {
    char c = raw_path[i];
    if (c == '%') {
      if (i + 2 >= raw_path.size()) return std::nullopt;
      int hi = hex_value(raw_path[i + 1]), lo = hex_value(raw_path[i + 2]);
      if (hi < 0 || lo < 0) return std::nullopt;
      unsigned char v = static_cast<unsigned char>(hi * 16 + lo);
      // "%2F" and "%5C" are a slash to servers that decode before they resolve dot-segments,
      // and a plain character to this matcher: the route chosen here is not the path they serve.
      if ((v == '/' || v == '\\') && !allow_ambiguous) return std::nullopt;
      if (is_unreserved(v)) {
        decoded += static_cast<char>(v);
      } else {
        static constexpr char kHex[] = "0123456789ABCDEF";
        decoded += '%';
        decoded += kHex[v >> 4];
        decoded += kHex[v & 15];
      }
      i += 2;
    } else {
      if (c == '\\' && !allow_ambiguous) return std::nullopt;  // a separator to Windows-minded servers
      decoded += c;
    }
  }

  // Split into segments, merging empty ones (repeated slashes), resolving "." and "..".
  std::vector<std::string_view> segments;
  std::string_view rest = decoded;
  bool trailing_slash = false;
  rest.remove_prefix(1);
  while (true) {
    size_t slash = rest.find('/');
    std::string_view seg = rest.substr(0, slash);
    bool last = slash == std::string_view::npos;
    if (!allow_ambiguous && is_dot_segment_with_params(seg)) return std::nullopt;
    if (seg == "..") {
      if (!segments.empty()) segments.pop_back();
      trailing_slash = true;
    } else if (seg == ".") {
      trailing_slash = true;
    } else if (seg.empty()) {
      trailing_slash = true;
    } else {
      segments.push_back(seg);
      trailing_slash = false;
    }
    if (last) break;
    rest.remove_prefix(slash + 1);
  }
  out.path.reserve(decoded.size());
  for (auto seg : segments) {
    out.path += '/';
    out.path += seg;
  }
  if (out.path.empty() || trailing_slash) out.path += '/';
  return out;
}

std::string without_path_parameters(std::string_view path) {
  std::string out;
  out.reserve(path.size());
  bool in_parameter = false;
  for (char c : path) {
    if (c == '/')
      in_parameter = false;
    else if (c == ';')
      in_parameter = true;
    if (!in_parameter) out += c;
  }
  return out;
}

}  // namespace pilotfish
