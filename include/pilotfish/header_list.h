#pragma once
// The headers of one HTTP message, as parsed. Names and values live in one string that is
// reused from message to message, so a keep-alive connection does not allocate per header.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "pilotfish/capacity_pool.h"

namespace pilotfish {

class HeaderList {
 public:
  struct Entry {
    uint32_t name_offset, name_length, value_offset, value_length;
  };

  void clear() {
    storage_.clear();
    entries_.clear();
    open_ = false;
  }
  // Parser callbacks may deliver a name or value in pieces; these append to the current one.
  // A header is finished by end_header(), which the parser calls even for an empty value.
  void append_name(std::string_view piece) {
    if (!open_) {
      entries_.push_back({static_cast<uint32_t>(storage_.size()), 0, 0, 0});
      open_ = true;
    }
    storage_.append(piece);
    entries_.back().name_length += static_cast<uint32_t>(piece.size());
  }
  void append_value(std::string_view piece) {
    Entry& e = entries_.back();
    if (e.value_length == 0) e.value_offset = static_cast<uint32_t>(storage_.size());
    storage_.append(piece);
    e.value_length += static_cast<uint32_t>(piece.size());
  }
  void end_header() {
    if (open_ && entries_.back().value_length == 0) entries_.back().value_offset = static_cast<uint32_t>(storage_.size());
    open_ = false;
  }
  void add(std::string_view name, std::string_view value) {
    append_name(name);
    append_value(value);
    end_header();
  }

  // Keeps the first `n` headers (n <= size()).
  void truncate(size_t n) {
    if (n >= entries_.size()) return;
    storage_.resize(entries_[n].name_offset);
    entries_.resize(n);
    open_ = false;
  }

  // A connection's heads borrow their two buffers from the thread's pool (capacity_pool.h) when
  // it starts and give them back, emptied, when it ends.
  void take_pooled() {
    StringPool<PoolRole::header_text>::take(storage_);
    EntryPool::take(entries_);
  }
  void give_pooled() {
    open_ = false;
    StringPool<PoolRole::header_text>::give(storage_);
    EntryPool::give(entries_);
  }

  size_t size() const { return entries_.size(); }
  std::string_view name(size_t i) const { return {storage_.data() + entries_[i].name_offset, entries_[i].name_length}; }
  std::string_view value(size_t i) const { return {storage_.data() + entries_[i].value_offset, entries_[i].value_length}; }
  size_t bytes() const { return storage_.size(); }

  // Index of the first header with this name (case-insensitive), or npos.
  size_t find(std::string_view lower_name, size_t from = 0) const;
  size_t count(std::string_view lower_name) const;
  static constexpr size_t npos = static_cast<size_t>(-1);

 private:
  using EntryPool = CapacityPool<std::vector<Entry>, PoolRole::header_entries>;
  std::string storage_;
  std::vector<Entry> entries_;
  bool open_ = false;
};

// Equal but for ASCII case. The sizes are compared inline: most comparisons of header names
// end there.
bool iequals_same_size(const char* a, const char* b, size_t n);
inline bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && iequals_same_size(a.data(), b.data(), a.size());
}
// Without the spaces and tabs around it.
inline std::string_view trim_ows(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

}  // namespace pilotfish
