// Logging setup shared by every binary: spdlog, text or JSON lines.
#pragma once

#include <spdlog/spdlog.h>

#include <string>

#include "netsteer/common/result.h"

namespace netsteer::log {

enum class Format { kText, kJson };

// Configure the default logger. `to_stderr` sinks to stderr (the CNI plugin must never write
// logs to stdout); `file` adds a file sink when non-empty.
Status setup(Format format, const std::string& level, const std::string& file = "", bool to_stderr = true);

Result<Format> parse_format(const std::string& s);

// JSON-escape a string for use inside a hand-built JSON log line.
std::string json_escape(std::string_view s);

}  // namespace netsteer::log
