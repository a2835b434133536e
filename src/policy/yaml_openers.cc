#include "policy/yaml_openers.h"

#include <vector>

namespace pilotfish {
namespace {

// Brackets deeper than this are counted but not placed, so that a file of a million '[' does
// not make the scan keep a million positions; yaml-cpp refuses more than a few hundred levels.
constexpr size_t kMaxPlaced = 1024;

bool is_blank(char c) { return c == ' ' || c == '\t' || c == '\r'; }

// "---" or "..." at the start of a line, followed by a blank or the end of the line.
bool is_document_marker(std::string_view text, size_t i) {
  std::string_view rest = text.substr(i);
  if (!rest.starts_with("---") && !rest.starts_with("...")) return false;
  return rest.size() == 3 || is_blank(rest[3]) || rest[3] == '\n';
}

class Scan {
 public:
  explicit Scan(std::string_view text) : text_(text) {}

  std::optional<YamlOpener> run() {
    for (i_ = 0; i_ < text_.size(); ++i_) step(text_[i_]);
    if (quote_) return quote_;
    if (unplaced_ > 0 || flows_.empty()) return std::nullopt;
    return flows_.back();
  }

 private:
  void step(char c) {
    if (c == '\n') {
      new_line();
      return;
    }
    ++column_;
    if (quote_) {
      in_quote(c);
      previous_ = c;
      return;
    }
    if (comment_) return;
    if (line_start_) {
      if (c == ' ') {
        ++indent_;
        previous_ = c;
        return;
      }
      line_start_ = false;
      if (block_scalar_ >= -1) {
        // A line indented more than the block scalar's owner is its text, whatever it holds.
        if (indent_ > block_scalar_ || c == '\r') {
          comment_ = true;
          return;
        }
        block_scalar_ = -2;
      }
      if (column_ == 1 && is_document_marker(text_, i_)) {
        i_ += 2;
        column_ += 2;
        node_start_ = true;
        previous_ = '-';
        return;
      }
    }
    if (is_blank(c)) {
      if (indicator_) confirm_indicator();
      if (properties_) {
        properties_ = false;
        node_start_ = true;
      }
      previous_ = c;
      return;
    }
    if (c == '#' && (is_blank(previous_) || previous_ == '\n')) {
      comment_ = true;
      return;
    }
    indicator_ = 0;  // ':', '-' or '?' followed by text was text
    if (flows_.empty())
      in_block(c);
    else
      in_flow(c);
    previous_ = c;
  }

  void new_line() {
    ++line_;
    column_ = 0;
    line_start_ = true;
    indent_ = 0;
    comment_ = false;
    escaped_ = false;  // a backslash before a line break escapes the break
    previous_ = '\n';
    if (quote_) return;  // quoted text goes on over lines
    if (indicator_) confirm_indicator();
    properties_ = false;
    owner_ = -1;
    // In block context every line may begin a node; inside brackets, a line break changes
    // nothing (after "a," a node may begin, after "a" it may not).
    if (flows_.empty()) node_start_ = true;
  }

  void in_quote(char c) {
    if (escaped_) {
      escaped_ = false;
    } else if (quote_->symbol == '"' && c == '\\') {
      escaped_ = true;
    } else if (c == quote_->symbol) {
      if (c == '\'' && i_ + 1 < text_.size() && text_[i_ + 1] == '\'') {
        ++i_;  // '' is a quote inside single quotes
        ++column_;
      } else {
        quote_.reset();
        node_start_ = false;
      }
    }
  }

  void in_block(char c) {
    if (!node_start_) {
      if (c == ':') indicator(c);  // after a key
      return;
    }
    node_start_ = false;
    token_column_ = column_;
    switch (c) {
      case '[':
      case '{':
        open_flow(c);
        break;
      case '"':
      case '\'':
        quote_ = YamlOpener{c, line_, column_};
        break;
      case '|':
      case '>':
        // The header's indicators and comment, then lines indented more than the owner.
        block_scalar_ = owner_ >= 0 ? owner_ : indent_;
        comment_ = true;
        break;
      case '-':
      case '?':
        indicator(c);
        break;
      case '&':
      case '!':
        properties_ = true;
        break;
      default:
        break;  // a plain scalar or an alias
    }
  }

  void in_flow(char c) {
    switch (c) {
      case '[':
      case '{':
        open_flow(c);
        break;
      case ']':
      case '}':
        close_flow();
        node_start_ = false;
        break;
      // After ':' a node may begin even without a blank ({"a":"b"}, as JSON writes it).
      case ',':
      case ':':
        node_start_ = true;
        break;
      case '"':
      case '\'':
        if (node_start_) quote_ = YamlOpener{c, line_, column_};
        node_start_ = false;
        break;
      case '&':
      case '!':
        if (node_start_) properties_ = true;
        node_start_ = false;
        break;
      default:
        node_start_ = false;
        break;
    }
  }

  void indicator(char c) {
    indicator_ = c;
    indicator_column_ = column_;
  }

  // The ':', '-' or '?' read last is an indicator: a node may begin after it, and a block
  // scalar there belongs to the key before the ':' or to the '-' entry.
  void confirm_indicator() {
    if (flows_.empty()) owner_ = (indicator_ == ':' ? token_column_ : indicator_column_) - 1;
    indicator_ = 0;
    node_start_ = true;
  }

  void open_flow(char c) {
    if (flows_.size() < kMaxPlaced)
      flows_.push_back({c, line_, column_});
    else
      ++unplaced_;
    node_start_ = true;
  }

  void close_flow() {
    if (unplaced_ > 0)
      --unplaced_;
    else if (!flows_.empty())
      flows_.pop_back();
  }

  std::string_view text_;
  size_t i_ = 0;
  int line_ = 1;
  int column_ = 0;
  std::vector<YamlOpener> flows_;  // the '[' and '{' open now, innermost last
  size_t unplaced_ = 0;            // open brackets deeper than kMaxPlaced
  std::optional<YamlOpener> quote_;
  bool escaped_ = false;    // inside double quotes, after a backslash
  bool comment_ = false;    // the rest of the line is a comment, a block scalar header or its text
  bool line_start_ = true;  // only spaces so far on this line
  int indent_ = 0;          // those spaces
  int block_scalar_ = -2;   // >= -1: in a block scalar, whose text is indented more than this
  bool node_start_ = true;  // a node (a quote, a bracket) may begin at the next character
  char indicator_ = 0;      // ':', '-' or '?' just read: an indicator if a blank follows
  int indicator_column_ = 0;
  bool properties_ = false;  // an anchor or a tag just read: a node may begin after a blank
  int token_column_ = 0;     // where the last token of block context began (a key, before ':')
  int owner_ = -1;           // indentation of the key or '-' that owns a node later on this line
  char previous_ = '\n';
};

}  // namespace

std::optional<YamlOpener> find_unclosed_opener(std::string_view text) {
  // A byte order mark is not part of the text yaml-cpp places marks in.
  if (text.starts_with("\xEF\xBB\xBF")) text.remove_prefix(3);
  return Scan(text).run();
}

}  // namespace pilotfish
