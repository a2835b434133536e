#include "pilotfish/header_rules.h"

#include <array>
#include <bit>
#include <cctype>
#include <cstdint>
#include <cstring>

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

// Eight bytes at a time (issue 18: comparing and checking header fields was a tenth of a
// request's instructions). Each test below says whether ANY byte of the word matches exactly;
// which byte, it may not say, and no caller needs to know.
static_assert(std::endian::native == std::endian::little, "load_short puts the first byte lowest");
constexpr uint64_t kOnes = 0x0101010101010101ull;
constexpr uint64_t kHighs = 0x8080808080808080ull;

uint64_t load8(const char* p) {
  uint64_t w;
  std::memcpy(&w, p, 8);
  return w;
}

// 1 to 7 bytes as one word (the rest zero): two overlapping loads of 4, or bytes one by one.
uint64_t load_short(const char* p, size_t n) {
  if (n >= 4) {
    uint32_t lo, hi;
    std::memcpy(&lo, p, 4);
    std::memcpy(&hi, p + n - 4, 4);
    return lo | (static_cast<uint64_t>(hi) << ((n - 4) * 8));
  }
  uint64_t w = 0;
  for (size_t i = 0; i < n; ++i) w |= static_cast<uint64_t>(static_cast<unsigned char>(p[i])) << (i * 8);
  return w;
}

// The word with its ASCII capitals lowered; every other byte (including 0x80 and above) kept.
uint64_t fold8(uint64_t w) {
  uint64_t low7 = w & ~kHighs;
  uint64_t from_a = low7 + kOnes * (0x80 - 'A');      // a byte's high bit: it is 'A' or above
  uint64_t past_z = low7 + kOnes * (0x80 - 'Z' - 1);  // a byte's high bit: it is above 'Z'
  uint64_t capital = from_a & ~past_z & ~w & kHighs;
  return w | (capital >> 2);  // 0x80 >> 2 is 0x20, what lowers a capital
}

// A byte below 0x20 or equal to 0x7f (a control character, tab included) somewhere in w.
bool has_control(uint64_t w) {
  uint64_t below_space = (w - kOnes * 0x20) & ~w & kHighs;
  uint64_t del = w ^ (kOnes * 0x7f);
  uint64_t is_del = (del - kOnes) & ~del & kHighs;
  return (below_space | is_del) != 0;
}

bool value_bytes_valid(const char* p, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    unsigned char c = static_cast<unsigned char>(p[i]);
    if (c == '\t') continue;
    if (c < 0x20 || c == 0x7f) return false;
  }
  return true;
}
}  // namespace

bool iequals_same_size(const char* a, const char* b, size_t n) {
  if (n < 8) return n == 0 || fold8(load_short(a, n)) == fold8(load_short(b, n));
  for (size_t i = 0; i + 8 < n; i += 8)
    if (fold8(load8(a + i)) != fold8(load8(b + i))) return false;
  return fold8(load8(a + n - 8)) == fold8(load8(b + n - 8));  // the last 8, overlapping
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
  // A word with a control byte in it is looked at byte by byte: it may be a tab, which a value
  // may hold.
  const char* p = s.data();
  size_t n = s.size();
  if (n == 0) return true;
  if (n < 8) {
    uint64_t padded = load_short(p, n) | ((~0ull << (n * 8)) & (kOnes * 'a'));  // the rest: letters
    return !has_control(padded) || value_bytes_valid(p, n);
  }
  for (size_t i = 0; i + 8 < n; i += 8)
    if (has_control(load8(p + i)) && !value_bytes_valid(p + i, 8)) return false;
  return !has_control(load8(p + n - 8)) || value_bytes_valid(p + n - 8, 8);  // the last 8, overlapping
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

bool is_hop_by_hop(std::string_view name, const std::string& tokens) {
  // By length first: this runs for every field of both heads of every request.
  switch (name.size()) {
    case 2: if (iequals(name, "te")) return true; break;
    case 7: if (iequals(name, "trailer") || iequals(name, "upgrade")) return true; break;
    case 10: if (iequals(name, "connection") || iequals(name, "keep-alive")) return true; break;
    case 16: if (iequals(name, "proxy-connection")) return true; break;
    case 17: if (iequals(name, "transfer-encoding")) return true; break;
    case 18: if (iequals(name, "proxy-authenticate")) return true; break;
    case 19: if (iequals(name, "proxy-authorization")) return true; break;
    default: break;
  }
  if (tokens.empty()) return false;
  // A Connection header may not strip what frames or routes the message: "Connection:
  // content-length" would otherwise send a body without its length, which is a smuggled
  // request at the next hop.
  if (iequals(name, "content-length") || iequals(name, "host")) return false;
  // tokens is ",a,b," (connection_tokens), each token lowered: compared in place, no copy.
  std::string_view rest(tokens);
  for (size_t start = 1, comma; start < rest.size() && (comma = rest.find(',', start)) != std::string_view::npos;
       start = comma + 1)
    if (iequals(name, rest.substr(start, comma - start))) return true;
  return false;
}

}  // namespace pilotfish
