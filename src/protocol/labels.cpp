#include "netsteer/protocol/labels.h"

#include <algorithm>
#include <cctype>

namespace netsteer::protocol {

namespace {

bool alnum(char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0; }

// A label name or value: at most 63 chars of [A-Za-z0-9_.-], starting and ending alphanumeric.
bool valid_name(std::string_view s, bool allow_empty) {
  if (s.empty()) return allow_empty;
  if (s.size() > 63 || !alnum(s.front()) || !alnum(s.back())) return false;
  return std::all_of(s.begin(), s.end(), [](char c) { return alnum(c) || c == '-' || c == '_' || c == '.'; });
}

// A key prefix: a DNS subdomain (lowercase, at most 253 chars, dot-separated labels).
bool valid_prefix(std::string_view s) {
  if (s.empty() || s.size() > 253) return false;
  size_t start = 0;
  while (start <= s.size()) {
    size_t dot = s.find('.', start);
    std::string_view part = s.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start);
    if (part.empty() || part.size() > 63 || part.front() == '-' || part.back() == '-') return false;
    for (char c : part)
      if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) return false;
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  return true;
}

}  // namespace

bool LabelRequirement::matches(const Labels& labels) const {
  auto it = labels.find(key);
  return it != labels.end() && (!value || it->second == *value);
}

std::string LabelRequirement::str() const { return value ? key + "=" + *value : key; }

Result<LabelRequirement> parse_label_requirement(std::string_view s) {
  auto bad = [&](std::string why) {
    return Error::msg("label requirement '" + std::string(s) + "': " + why, EINVAL);
  };
  LabelRequirement r;
  std::string_view key = s;
  if (auto eq = s.find('='); eq != std::string_view::npos) {
    key = s.substr(0, eq);
    std::string_view value = s.substr(eq + 1);
    if (!value.empty() && value.front() == '=') value.remove_prefix(1);  // "k==v" as in label selectors
    if (key.size() && key.back() == '!') return bad("only 'key' and 'key=value' are supported");
    if (!valid_name(value, true))
      return bad("value must be at most 63 characters of [A-Za-z0-9_.-], starting and ending alphanumeric");
    r.value = std::string(value);
  }
  std::string_view name = key;
  if (auto slash = key.find('/'); slash != std::string_view::npos) {
    if (!valid_prefix(key.substr(0, slash))) return bad("key prefix must be a lowercase DNS subdomain");
    name = key.substr(slash + 1);
  }
  if (!valid_name(name, false))
    return bad("key name must be 1..63 characters of [A-Za-z0-9_.-], starting and ending alphanumeric");
  r.key = std::string(key);
  return r;
}

Result<std::vector<LabelRequirement>> parse_label_requirements(const std::vector<std::string>& v) {
  std::vector<LabelRequirement> out;
  for (const auto& s : v) {
    NS_TRY(auto r, parse_label_requirement(s));
    out.push_back(std::move(r));
  }
  return out;
}

std::optional<LabelRequirement> first_match(const std::vector<LabelRequirement>& reqs, const Labels& labels) {
  for (const auto& r : reqs)
    if (r.matches(labels)) return r;
  return std::nullopt;
}

}  // namespace netsteer::protocol
