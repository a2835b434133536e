#include "pilotfish/header_rules.h"

#include <array>
#include <cctype>

namespace pilotfish {

namespace {
constexpr std::array<bool, 256> make_token_table() {
  std::array<bool, 256> t{};
  for (int c = '0'; c <= '9'; ++c) t[c] = true;
  for (int c = 'a'; c <= 'z'; ++c) t[c] = true;
  for (int c = 'A'; c <= 'Z'; ++c) t[c] = true;
  for (char c : std::string_view("!#$%&'*+-.^_`|~")) t[static_cast<unsigned char>(c)] = true;
  return t;
}
constexpr auto kTokenTable = make_token_table();

char lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c; }
}  // namespace

bool iequals_same_size(const char* a, const char* b, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (lower(a[i]) != lower(b[i])) return false;
  return true;
}

size_t HeaderList::find(std::string_view lower_name, size_t from) const {
  for (size_t i = from; i < entries_.size(); ++i)
    if (iequals(name(i), lower_name)) return i;
  return npos;
}

size_t HeaderList::count(std::string_view lower_name) const {
  size_t n = 0;
  for (size_t i = 0; i < entries_.size(); ++i)
    if (iequals(name(i), lower_name)) ++n;
  return n;
}

bool is_token(std::string_view s) {
  if (s.empty()) return false;
  for (unsigned char c : s)
    if (!kTokenTable[c]) return false;
  return true;
}

bool is_valid_field_value(std::string_view s) {
  for (unsigned char c : s) {
    if (c == '\t') continue;
    if (c < 0x20 || c == 0x7f) return false;
  }
  return true;
}

bool is_valid_host(std::string_view s) {
  if (s.empty()) return false;
  std::string_view host = s;
  std::string_view port;
  if (s.front() == '[') {
    size_t close = s.find(']');
    if (close == std::string_view::npos) return false;
    for (char c : s.substr(1, close - 1))
      if (!(std::isxdigit(static_cast<unsigned char>(c)) || c == ':' || c == '.')) return false;
    if (close + 1 < s.size()) {
      if (s[close + 1] != ':') return false;
      port = s.substr(close + 2);
      if (port.empty()) return false;
    }
  } else {
    size_t colon = s.rfind(':');
    if (colon != std::string_view::npos) {
      host = s.substr(0, colon);
      port = s.substr(colon + 1);
      if (port.empty()) return false;
    }
    if (host.empty()) return false;
    for (unsigned char c : host) {
      bool ok = std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~' || c == '%' || c == '!' ||
                c == '$' || c == '&' || c == '\'' || c == '(' || c == ')' || c == '*' || c == '+' || c == ',' ||
                c == ';' || c == '=';
      if (!ok) return false;
    }
  }
  if (port.size() > 5) return false;
  for (char c : port)
    if (c < '0' || c > '9') return false;
  return true;
}

std::string host_for_routing(std::string_view host) {
  std::string_view h = host;
  if (!h.empty() && h.front() == '[') {
    size_t close = h.find(']');
    h = h.substr(0, close == std::string_view::npos ? h.size() : close + 1);
  } else {
    size_t colon = h.rfind(':');
    if (colon != std::string_view::npos) h = h.substr(0, colon);
  }
  if (h.size() > 1 && h.back() == '.' && h.front() != '[') h.remove_suffix(1);
  std::string out(h);
  for (char& c : out) c = lower(c);
  return out;
}

bool same_field_name_folded(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char x = a[i] == '_' ? '-' : lower(a[i]);
    char y = b[i] == '_' ? '-' : lower(b[i]);
    if (x != y) return false;
  }
  return true;
}

std::string connection_tokens(const HeaderList& headers) {
  std::string tokens;
  for (size_t i = headers.find("connection"); i != HeaderList::npos; i = headers.find("connection", i + 1)) {
    std::string_view v = headers.value(i);
    while (!v.empty()) {
      size_t comma = v.find(',');
      std::string_view tok = trim_ows(v.substr(0, comma));
      if (!tok.empty()) {
        if (tokens.empty()) tokens += ',';
        for (char c : tok) tokens += lower(c);
        tokens += ',';
      }
      if (comma == std::string_view::npos) break;
      v.remove_prefix(comma + 1);
    }
  }
  return tokens;
}

bool has_token(const std::string& tokens, std::string_view lower_name) {
  if (tokens.empty()) return false;
  size_t pos = 0;
  while ((pos = tokens.find(lower_name, pos)) != std::string::npos) {
    if (tokens[pos - 1] == ',' && pos + lower_name.size() < tokens.size() && tokens[pos + lower_name.size()] == ',')
      return true;
    pos += 1;
  }
  return false;
}

bool is_hop_by_hop(std::string_view name, const std::string& tokens) {
  static constexpr std::string_view kHopByHop[] = {"connection", "keep-alive", "proxy-connection", "te",
                                                   "trailer", "transfer-encoding", "upgrade", "proxy-authenticate",
                                                   "proxy-authorization"};
  for (auto h : kHopByHop)
    if (iequals(name, h)) return true;
  if (tokens.empty()) return false;
  // A Connection header may not strip what frames or routes the message: "Connection:
  // content-length" would otherwise send a body without its length, which is a smuggled
  // request at the next hop.
  if (iequals(name, "content-length") || iequals(name, "host")) return false;
  std::string low(name);
  for (char& c : low) c = lower(c);
  return has_token(tokens, low);
}

}  // namespace pilotfish
