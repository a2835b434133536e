// Per-connection state of HTTP/2 streams, by stream id, in one vector.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace pilotfish {

// The entries of a connection's streams in id order. Ids only grow and are never reused, so a new
// stream goes at the end, a lookup is a binary search, and no node is allocated per stream. A
// removed entry is left empty (a default T: nullptr) in place until half of them are, since
// streams end in about the order they began and erasing each one from the front would move all
// the others every time. T is a pointer or a unique_ptr: empty means removed.
template <typename T>
class StreamTable {
 public:
  // The entry of `id`, or nullptr when there is none (never added, or removed).
  T* find(int32_t id) { return const_cast<T*>(std::as_const(*this).find(id)); }
  const T* find(int32_t id) const {
    auto it = at_or_after(id);
    return it != entries_.end() && it->first == id && it->second ? &it->second : nullptr;
  }

  void add(int32_t id, T value) {
    auto it = std::as_const(*this).at_or_after(id);
    entries_.emplace(it, id, std::move(value));
  }

  // Removes the entry of `id` and returns it (empty when there was none).
  T take(int32_t id) {
    T* slot = find(id);
    if (slot == nullptr) return T();
    T value = std::move(*slot);
    *slot = T();
    if (++removed_ > 16 && removed_ * 2 > entries_.size()) {
      entries_.erase(std::remove_if(entries_.begin(), entries_.end(), [](const auto& e) { return !e.second; }),
                     entries_.end());
      removed_ = 0;
    }
    return value;
  }

  size_t size() const { return entries_.size() - removed_; }
  bool empty() const { return size() == 0; }

  // Calls f(id, T&) for every entry, in id order.
  template <typename F>
  void for_each(F&& f) {
    for (auto& [id, value] : entries_)
      if (value) f(id, value);
  }

  void swap(StreamTable& other) {
    entries_.swap(other.entries_);
    std::swap(removed_, other.removed_);
  }

 private:
  using Entries = std::vector<std::pair<int32_t, T>>;
  typename Entries::const_iterator at_or_after(int32_t id) const {
    return std::lower_bound(entries_.begin(), entries_.end(), id, [](const auto& e, int32_t v) { return e.first < v; });
  }

  Entries entries_;
  size_t removed_ = 0;  // empty entries, left in place
};

}  // namespace pilotfish
