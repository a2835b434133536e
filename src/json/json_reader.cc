#include "json/json_reader.h"

#include <vector>

namespace pilotfish {

namespace {

using json = nlohmann::json;

// Builds the DOM as nlohmann's own DOM parser does, with the limits and the duplicate-key check
// added. Returning false from any event stops the parse; nothing throws, since parse_error
// answers false instead of raising the exception it is handed.
class StrictBuilder final : public nlohmann::json_sax<json> {
 public:
  StrictBuilder(json& root, size_t max_depth, std::string* error)
      : root_(root), max_depth_(max_depth), error_(error) {}

  bool null() override { return put(json(nullptr)); }
  bool boolean(bool v) override { return put(json(v)); }
  bool number_integer(number_integer_t v) override { return put(json(v)); }
  bool number_unsigned(number_unsigned_t v) override { return put(json(v)); }
  bool number_float(number_float_t v, const string_t&) override { return put(json(v)); }
  bool string(string_t& v) override { return put(json(std::move(v))); }
  bool binary(binary_t&) override { return fail("not JSON"); }
  bool start_object(std::size_t) override { return open(json::object()); }
  bool end_object() override { return close(); }
  bool start_array(std::size_t) override { return open(json::array()); }
  bool end_array() override { return close(); }
  bool key(string_t& k) override {
    json& object = *stack_.back();
    if (object.contains(k)) return fail("duplicate key");
    key_ = &object[k];
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override {
    return fail("not JSON");
  }

 private:
  bool fail(const char* why) {
    if (error_->empty()) *error_ = why;
    return false;
  }
  // Where the next value goes: the root, the key just read, or the end of the open array.
  json* slot() {
    if (stack_.empty()) return &root_;
    if (stack_.back()->is_object()) return key_;
    stack_.back()->push_back(nullptr);
    return &stack_.back()->back();
  }
  bool put(json v) {
    *slot() = std::move(v);
    return true;
  }
  bool open(json v) {
    if (stack_.size() >= max_depth_) return fail("nested too deeply");
    json* s = slot();
    *s = std::move(v);
    stack_.push_back(s);
    return true;
  }
  bool close() {
    stack_.pop_back();
    return true;
  }

  json& root_;
  size_t max_depth_;
  std::string* error_;
  std::vector<json*> stack_;
  json* key_ = nullptr;
};

}  // namespace

std::optional<json> parse_json_strict(std::string_view text, const JsonLimits& limits, std::string* error) {
  error->clear();
  if (text.size() > limits.max_bytes) {
    *error = "too large";
    return std::nullopt;
  }
  json root;
  StrictBuilder builder(root, limits.max_depth, error);
  bool ok = false;
  try {
    // strict: nothing may follow the document; comments are not JSON.
    ok = json::sax_parse(text.begin(), text.end(), &builder, json::input_format_t::json, /*strict=*/true,
                         /*ignore_comments=*/false);
  } catch (const std::exception&) {  // allocation failure only: the SAX handler never throws
    ok = false;
  }
  if (!ok) {
    if (error->empty()) *error = "not JSON";
    return std::nullopt;
  }
  return root;
}

}  // namespace pilotfish
