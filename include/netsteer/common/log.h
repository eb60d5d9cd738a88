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

// The pod a thread is working for: while a PodScope lives, every JSON log line this thread emits
// carries "pod_uid" (and "pod" = namespace/name when known) as separate fields. Scopes nest; the
// innermost wins.
class PodScope {
 public:
  PodScope(std::string uid, std::string ns = "", std::string name = "");
  ~PodScope();
  PodScope(const PodScope&) = delete;
  PodScope& operator=(const PodScope&) = delete;

 private:
  const PodScope* prev_;
  std::string uid_, pod_;
  friend struct PodScopeAccess;
};

// Names the calling thread ("ns-" + name, cut to the kernel's 15 characters): what top -H, perf
// and /proc/<pid>/task/*/comm show for it.
void name_thread(std::string_view name);

// JSON-escape a string for use inside a hand-built JSON log line.
std::string json_escape(std::string_view s);

}  // namespace netsteer::log
