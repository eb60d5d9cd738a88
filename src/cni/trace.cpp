#include "netsteer/cni/trace.h"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "netsteer/common/unique_fd.h"

namespace netsteer::cni::trace {

namespace {
std::array<int64_t, kMarks> marks{};
}

void mark(Mark m) {
  // steady_clock is CLOCK_MONOTONIC: the bench's time.monotonic_ns() is on the same clock.
  marks[m] = std::chrono::duration_cast<std::chrono::nanoseconds>(
                 std::chrono::steady_clock::now().time_since_epoch()).count();
}

void write(const std::string& container_id) {
  const char* path = std::getenv("NETSTEER_CNI_TRACE");
  if (path == nullptr || *path == '\0') return;
  nlohmann::json j{{"id", container_id},  // invalid UTF-8 is replaced, never thrown on
                   {"main", marks[kMain]}, {"connect", marks[kConnect]},
                   {"reply", marks[kReply]}, {"end", marks[kEnd]}};
  std::string line = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  UniqueFd fd(::open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600));
  if (fd) (void)!::write(fd.get(), line.data(), line.size());  // one write: lines of concurrent runs stay whole
}

}  // namespace netsteer::cni::trace
