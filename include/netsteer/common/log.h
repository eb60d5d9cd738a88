// Logging setup shared by every binary: spdlog, text or JSON lines.
#pragma once

#include <spdlog/spdlog.h>

#include <chrono>
#include <functional>
#include <string>
#include <string_view>
#include <thread>

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

// Starts a thread named "ns-" + name (cut to the kernel's 15 characters: what top -H, perf and
// /proc/<pid>/task/*/comm show for it) that runs body, and returns once the thread has named itself:
// whoever goes on after this (the agent saying it is ready, a test reading /proc) sees the name,
// however late the new thread is first scheduled.
std::thread start_thread(std::string_view name, std::function<void()> body);

// A log line's timestamp, "YYYY-MM-DDTHH:MM:SS.mmm" in UTC, by calendar arithmetic: glibc's
// gmtime reads and parses /etc/localtime at its first call in a process (tzset; 0.3-0.4 ms of a
// 1-pod CNI ADD, bench/RESULTS.md) and takes a process-wide lock per call. No allocation: the
// relay stamps its access-log records with it.
struct UtcStamp {
  char text[40];  // room for any int year; 23 characters for years 0-9999
  int len = 0;
  std::string_view view() const { return {text, static_cast<size_t>(len)}; }
};
UtcStamp utc_timestamp(std::chrono::system_clock::time_point t);

// JSON-escape a string for use inside a hand-built JSON log line.
std::string json_escape(std::string_view s);

}  // namespace netsteer::log
