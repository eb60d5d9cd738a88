// Pod label requirements ("excludePodLabels" in the netconf, "skip_labels" on the wire).
//
// A requirement is `key` (the label exists) or `key=value` (it has this value), with Kubernetes'
// syntax rules for keys and values. A pod is skipped when any requirement matches its labels.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "netsteer/common/result.h"

namespace netsteer::protocol {

using Labels = std::map<std::string, std::string>;

struct LabelRequirement {
  std::string key;
  std::optional<std::string> value;  // nullopt: the key only has to exist
  bool matches(const Labels& labels) const;
  std::string str() const;
};

Result<LabelRequirement> parse_label_requirement(std::string_view s);
Result<std::vector<LabelRequirement>> parse_label_requirements(const std::vector<std::string>& v);

// The first requirement the labels satisfy, if any.
std::optional<LabelRequirement> first_match(const std::vector<LabelRequirement>& reqs, const Labels& labels);

}  // namespace netsteer::protocol
