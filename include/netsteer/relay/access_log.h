// The connection access log: one JSON object per finished relayed connection (what ztunnel logs
// for every connection), written by a thread of its own so that a relay worker never waits on the
// disk. Workers append to one bounded buffer (a full buffer drops the line and counts it) and
// wake the writer only when the buffer was empty; the writer then lets lines gather for
// kGatherMs before one write(). So at any rate the log costs at most ~1000/kGatherMs wake-ups
// and writes a second, and a worker pays one lock and one append per connection. SIGHUP reopens
// the file (logrotate's move-and-signal); the writer reads it from its own signalfd, so netsteerd
// blocks SIGHUP in every thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include "netsteer/common/result.h"
#include "netsteer/common/unique_fd.h"

namespace netsteer::relay {

class AccessLog {
 public:
  // target: a file path (appended to, created 0640) or "stderr". ("off" is no AccessLog at all.)
  // capacity: bytes that may wait for the writer (~50k typical lines).
  static Result<std::unique_ptr<AccessLog>> open(const std::string& target, size_t capacity = 16u << 20);
  ~AccessLog();  // writes what is buffered, then stops the thread

  static constexpr int kGatherMs = 50;

  void push(std::string_view line);  // one record without the newline; never blocks on I/O
  uint64_t written() const { return written_.load(std::memory_order_relaxed); }
  uint64_t dropped() const { return dropped_.load(std::memory_order_relaxed); }
  uint64_t reopened() const { return reopened_.load(std::memory_order_relaxed); }
  const std::string& target() const { return target_; }

 private:
  AccessLog() = default;
  Status reopen_file();
  void run();

  std::string target_;
  size_t capacity_ = 0;
  UniqueFd out_, wake_, sig_;
  std::mutex mu_;
  std::string buf_;  // whole lines, each ending in '\n'
  uint64_t buf_lines_ = 0;
  bool stopping_ = false;
  std::atomic<uint64_t> written_{0}, dropped_{0}, reopened_{0};
  std::thread thread_;
};

}  // namespace netsteer::relay
