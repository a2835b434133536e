// The policy reader's core: recording errors and counting nodes, opening maps and lists, and the
// readers of single values (text, names, numbers, durations, addresses, files), plus the small
// text helpers the section readers share. The sections are read in policy_read_*.cc.

#include "policy/policy_reader.h"
#include "policy/quote.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

namespace pilotfish::policy_detail {

namespace {

// Enough to show every problem of any real file; a runaway file should not print a million lines.
constexpr size_t kMaxErrors = 1000;
// Bounds the work YAML aliases can cause ("billion laughs"); real policies have a few thousand.
constexpr size_t kMaxNodesVisited = 2'000'000;
// '<<' merges inside merged maps, as deep as anyone would write them on purpose.
constexpr int kMaxMergeDepth = 8;
constexpr size_t kMaxNameLength = 128;

}  // namespace

// ---------------------------------------------------------------------------------------------
// Small text helpers

std::string quote(std::string_view text) { return quote_value(text); }

std::string lower(std::string_view text) {
  std::string out(text);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

bool all_digits(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s)
    if (c < '0' || c > '9') return false;
  return true;
}

bool has_space_or_control(std::string_view s) {
  for (char c : s) {
    unsigned char uc = static_cast<unsigned char>(c);
    if (uc <= 0x20 || uc == 0x7f) return true;
  }
  return false;
}

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> previous(b.size() + 1), current(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) previous[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    current[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t substitution = previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
      current[j] = std::min({previous[j] + 1, current[j - 1] + 1, substitution});
    }
    std::swap(previous, current);
  }
  return previous[b.size()];
}

std::string join_path(const std::string& path, std::string_view key) {
  return path.empty() ? std::string(key) : path + "." + std::string(key);
}

namespace {

std::string index_path(const std::string& path, size_t index) { return path + "[" + std::to_string(index) + "]"; }

}  // namespace

// ---------------------------------------------------------------------------------------------
// Positions and the values being read

Position position_of(const YAML::Node& node, Position fallback) {
  const YAML::Mark mark = node.Mark();
  if (mark.is_null() || mark.line < 0 || mark.column < 0) return fallback;
  return {mark.line + 1, mark.column + 1};
}

// What a node is, for "expected X, got Y".
std::string describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Scalar:
      return quote(node.Scalar());
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a map";
    case YAML::NodeType::Null:
      return "nothing (null)";
    case YAML::NodeType::Undefined:
      break;
  }
  return "nothing";
}

void PolicyReader::error(Position at, const std::string& path, const std::string& message) {
  if (stopped_) return;
  if (errors_.size() >= kMaxErrors) {
    stop("too many errors (more than " + std::to_string(kMaxErrors) + "); not reading further");
    return;
  }
  errors_.push_back({file_name_, at.line, at.column, path.empty() ? message : path + ": " + message});
}

void PolicyReader::stop(const std::string& reason) {
  if (stopped_) return;
  stopped_ = true;
  stop_reason_ = PolicyError{file_name_, 0, 0, reason};
}

bool PolicyReader::count_node() {
  if (stopped_) return false;
  if (++nodes_visited_ > kMaxNodesVisited) {
    stop("the policy expands to more than " + std::to_string(kMaxNodesVisited) +
         " values (through YAML aliases?); not reading further");
    return false;
  }
  return true;
}

std::vector<PolicyError> PolicyReader::take_errors() {
  // Sorted by position, as a compiler prints them; the reason for stopping early comes last.
  std::stable_sort(errors_.begin(), errors_.end(), [](const PolicyError& a, const PolicyError& b) {
    return std::pair(a.line, a.column) < std::pair(b.line, b.column);
  });
  if (stop_reason_) errors_.push_back(*stop_reason_);
  return std::move(errors_);
}

// ---------------------------------------------------------------------------------------------
// Generic readers

std::optional<Section> PolicyReader::open_section(const Field& field, std::span<const std::string_view> known_keys) {
  if (stopped_) return std::nullopt;
  if (!field.node.IsMap()) {
    error(field.position, field.path, "expected a map, got " + describe(field.node));
    return std::nullopt;
  }
  Section section{field.path, field.position, {}};
  collect_entries(field.node, known_keys, 0, section);
  return section;
}

// Adds the entries of `map` to `section`. Supports the YAML merge key (`<<: *defaults`), which
// yaml-cpp leaves to the application, because anchors plus merges are how people share retry or
// timeout blocks between clusters. As YAML says, keys written in the map win over merged ones.
void PolicyReader::collect_entries(const YAML::Node& map, std::span<const std::string_view> known_keys, int merge_depth,
                                   Section& section) {
  std::vector<std::pair<YAML::Node, Position>> merges;
  std::unordered_set<std::string> seen_here;
  for (auto it = map.begin(); it != map.end(); ++it) {
    if (!count_node()) return;
    const YAML::Node key = it->first;
    const YAML::Node value = it->second;
    const Position key_position = position_of(key, section.position);
    if (!key.IsScalar()) {
      error(key_position, section.path, "keys must be plain words, got " + describe(key) + " as a key");
      continue;
    }
    const std::string& name = key.Scalar();
    if (name == "<<") {
      merges.emplace_back(value, key_position);
      continue;
    }
    const std::string path = join_path(section.path, name);
    if (std::find(known_keys.begin(), known_keys.end(), name) == known_keys.end()) {
      error(key_position, path, "unknown key" + did_you_mean(name, known_keys));
      continue;
    }
    if (!seen_here.insert(name).second) {
      error(key_position, path, "given twice in the same map");
      continue;
    }
    if (section.find(name)) {
      // Only reachable inside a merged map: the key written in the including map wins.
      continue;
    }
    // yaml-cpp marks an empty value at the next token (often the next line), so point at the key.
    const Position value_position = value.IsNull() ? key_position : position_of(value, key_position);
    section.entries.emplace_back(name, Field{value, path, value_position});
  }

  for (const auto& [merged, at] : merges) {
    const std::string path = join_path(section.path, "<<");
    if (merge_depth >= kMaxMergeDepth) {
      error(at, path, "merges nested more than " + std::to_string(kMaxMergeDepth) + " deep (an alias to itself?)");
      continue;
    }
    if (merged.IsMap()) {
      collect_entries(merged, known_keys, merge_depth + 1, section);
    } else if (merged.IsSequence()) {
      for (auto it = merged.begin(); it != merged.end(); ++it) {
        if (!count_node()) return;
        if (it->IsMap()) {
          collect_entries(*it, known_keys, merge_depth + 1, section);
        } else {
          error(position_of(*it, at), path, "expected a map to merge, got " + describe(*it));
        }
      }
    } else {
      error(at, path, "expected a map (or a list of maps) to merge, got " + describe(merged));
    }
  }
}

std::optional<std::vector<Field>> PolicyReader::open_list(const Field& field) {
  if (stopped_) return std::nullopt;
  if (!field.node.IsSequence()) {
    error(field.position, field.path, "expected a list, got " + describe(field.node));
    return std::nullopt;
  }
  std::vector<Field> items;
  size_t index = 0;
  for (auto it = field.node.begin(); it != field.node.end(); ++it, ++index) {
    if (!count_node()) return std::nullopt;
    const YAML::Node item = *it;
    items.push_back(Field{item, index_path(field.path, index), position_of(item, field.position)});
  }
  return items;
}

const Field* PolicyReader::require(const Section& section, std::string_view key, const char* why) {
  const Field* field = section.find(key);
  if (!field) error(section.position, join_path(section.path, key), std::string("missing; ") + why);
  return field;
}

std::optional<std::string> PolicyReader::read_text(const Field& field) {
  if (!field.node.IsScalar()) {
    error(field.position, field.path, "expected a string, got " + describe(field.node));
    return std::nullopt;
  }
  return field.node.Scalar();
}

// Listener and cluster names end up in metric labels, log lines and JSON; keeping them to a
// plain alphabet means none of those needs escaping and a name reads the same everywhere.
std::optional<std::string> PolicyReader::read_name(const Field& field) {
  auto name = read_text(field);
  if (!name) return std::nullopt;
  if (name->empty()) {
    error(field.position, field.path, "must not be empty");
    return std::nullopt;
  }
  bool plain = name->size() <= kMaxNameLength;
  for (char c : *name) {
    plain = plain && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
                      c == '_' || c == '.');
  }
  if (!plain) {
    error(field.position, field.path,
          quote(*name) + " is not a valid name: use up to " + std::to_string(kMaxNameLength) +
              " letters, digits, '-', '_' or '.'");
    return std::nullopt;
  }
  return name;
}

std::optional<std::string> PolicyReader::read_spiffe_id(const Field& field, bool wildcard_allowed) {
  auto id = read_text(field);
  if (!id) return std::nullopt;
  constexpr std::string_view kScheme = "spiffe://";
  if (!id->starts_with(kScheme)) {
    error(field.position, field.path, quote(*id) + " must start with spiffe://");
    return std::nullopt;
  }
  if (id->size() == kScheme.size()) {
    error(field.position, field.path, quote(*id) + " names no trust domain");
    return std::nullopt;
  }
  if (has_space_or_control(*id)) {
    error(field.position, field.path, quote(*id) + " must not contain spaces or control characters");
    return std::nullopt;
  }
  size_t star = id->find('*');
  if (star != std::string::npos) {
    if (!wildcard_allowed) {
      error(field.position, field.path, quote(*id) + ": '*' is not allowed here; the identity is matched exactly");
      return std::nullopt;
    }
    if (star + 1 != id->size()) {
      error(field.position, field.path, quote(*id) + ": '*' is allowed only as the last character");
      return std::nullopt;
    }
  }
  return id;
}

std::optional<bool> PolicyReader::read_bool(const Field& field) {
  if (field.node.IsScalar()) {
    const std::string& s = field.node.Scalar();
    if (s == "true" || s == "True" || s == "TRUE") return true;
    if (s == "false" || s == "False" || s == "FALSE") return false;
  }
  error(field.position, field.path, "expected true or false, got " + describe(field.node));
  return std::nullopt;
}

std::optional<uint64_t> PolicyReader::read_integer(const Field& field, uint64_t min, uint64_t max) {
  const std::string range = std::to_string(min) + "-" + std::to_string(max);
  if (!field.node.IsScalar()) {
    error(field.position, field.path, "expected an integer, got " + describe(field.node));
    return std::nullopt;
  }
  const std::string& text = field.node.Scalar();
  if (text.size() > 1 && text[0] == '-' && all_digits(std::string_view(text).substr(1))) {
    error(field.position, field.path, text.substr(0, 24) + " is out of range " + range);
    return std::nullopt;
  }
  if (!all_digits(text)) {
    error(field.position, field.path, "expected an integer, got " + quote(text));
    return std::nullopt;
  }
  uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || value < min || value > max) {
    std::string shown = ec == std::errc() ? std::to_string(value) : text.substr(0, 24) + "...";
    error(field.position, field.path, shown + " is out of range " + range);
    return std::nullopt;
  }
  return value;
}

std::optional<double> PolicyReader::read_number(const Field& field, double min, double max) {
  auto format = [](double v) {
    std::string s = std::to_string(v);
    s.erase(s.find_last_not_of('0') + 1);
    if (!s.empty() && s.back() == '.') s.pop_back();
    return s;
  };
  const std::string range = format(min) + "-" + format(max);
  if (!field.node.IsScalar()) {
    error(field.position, field.path, "expected a number, got " + describe(field.node));
    return std::nullopt;
  }
  const std::string& text = field.node.Scalar();
  double value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec == std::errc::result_out_of_range) {
    error(field.position, field.path, quote(text) + " is out of range " + range);
    return std::nullopt;
  }
  if (ec != std::errc() || end != text.data() + text.size() || !std::isfinite(value)) {
    error(field.position, field.path, "expected a number, got " + quote(text));
    return std::nullopt;
  }
  if (value < min || value > max) {
    error(field.position, field.path, text + " is out of range " + range);
    return std::nullopt;
  }
  return value;
}

std::optional<Duration> PolicyReader::read_duration(const Field& field, bool zero_allowed) {
  if (!field.node.IsScalar()) {
    error(field.position, field.path, "expected a duration such as 250ms or 5s, got " + describe(field.node));
    return std::nullopt;
  }
  Duration value{0};
  std::string why;
  if (!parse_duration(field.node.Scalar(), &value, &why)) {
    error(field.position, field.path, why);
    return std::nullopt;
  }
  if (!zero_allowed && value.count() == 0) {
    error(field.position, field.path, "must be more than 0");
    return std::nullopt;
  }
  return value;
}

std::optional<SocketAddress> PolicyReader::read_address(const Field& field, bool for_binding) {
  if (!field.node.IsScalar()) {
    std::string hint = field.node.IsSequence() ? " (quote an IPv6 address: \"[::1]:15001\")" : "";
    error(field.position, field.path, "expected HOST:PORT, got " + describe(field.node) + hint);
    return std::nullopt;
  }
  std::string why;
  auto address =
      for_binding ? parse_bind_address(field.node.Scalar(), &why) : parse_socket_address(field.node.Scalar(), &why);
  if (!address) error(field.position, field.path, why);
  return address;
}


// Relative file names in a policy mean "beside the policy file", so a policy folder can be moved
// or mounted anywhere. The result is absolute or relative to the working directory.
std::string PolicyReader::resolve_file(const std::string& path) const {
  std::filesystem::path file(path);
  if (file.is_absolute() || base_dir_.empty()) return path;
  return (std::filesystem::path(base_dir_) / file).lexically_normal().string();
}

}  // namespace pilotfish::policy_detail
