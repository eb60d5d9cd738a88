// presize_fd_table: the agent grows its fd table once, before its threads, so no enrol or accept
// later waits out the RCU grace period a table expansion takes in a threaded process.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <algorithm>
#include <fstream>
#include <string>

#include "netsteer/common/accept.h"
#include "netsteer/common/unique_fd.h"

namespace netsteer {
namespace {

unsigned long fd_size() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);)
    if (line.starts_with("FDSize:")) return std::stoul(line.substr(7));
  return 0;
}

TEST(FdTable, CappedByTheSoftLimit) {
  rlimit saved{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &saved), 0);
  rlimit low = saved;
  low.rlim_cur = 512;
  const unsigned long before = fd_size();  // 64 in a fresh process; the table never shrinks
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &low), 0);
  unsigned long got = presize_fd_table(1UL << 20);
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &saved), 0);
  EXPECT_GE(got, 512u);
  // A power of two that holds fd 511 and no more (unless it was larger already).
  EXPECT_LT(got, std::max(1024UL, before + 1));
  EXPECT_EQ(got, fd_size());
}

TEST(FdTable, GrowsOnceAndKeepsLowFdsFirst) {
  ASSERT_GE(raise_nofile_limit(), 4096u);
  ASSERT_LT(fd_size(), 4096u) << "the table was already large";
  unsigned long got = presize_fd_table(4096);
  EXPECT_GE(got, 4096u);
  EXPECT_EQ(got, fd_size());
  // Nothing stays open up there: the next fd is the lowest free one, and the table keeps its size.
  UniqueFd next(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(next);
  EXPECT_LT(next.get(), 64);
  EXPECT_EQ(::fcntl(4095, F_GETFD), -1);
  EXPECT_EQ(fd_size(), got);
}

}  // namespace
}  // namespace netsteer
