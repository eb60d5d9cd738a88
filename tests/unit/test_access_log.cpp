// The access log's writer: every pushed line reaches the file whole and in each pusher's order,
// lines gather into few writes, and a full buffer drops (and counts) instead of blocking.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "netsteer/relay/access_log.h"

using netsteer::relay::AccessLog;

namespace {

struct TempDir {
  std::filesystem::path p;
  TempDir() {
    char tmpl[] = "/tmp/netsteer-alog-XXXXXX";
    p = ::mkdtemp(tmpl);
  }
  ~TempDir() { std::filesystem::remove_all(p); }
};

std::vector<std::string> lines_of(const std::filesystem::path& f) {
  std::vector<std::string> out;
  std::ifstream in(f);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

}  // namespace

TEST(AccessLog, EveryLineArrivesWholeAndInOrder) {
  TempDir d;
  auto file = d.p / "access.log";
  constexpr int kThreads = 4, kPer = 5000;
  {
    auto log = AccessLog::open(file.string());
    ASSERT_TRUE(log.ok()) << log.error().message;
    std::vector<std::thread> ts;
    for (int t = 0; t < kThreads; ++t)
      ts.emplace_back([&, t] {
        for (int i = 0; i < kPer; ++i) (*log)->push("{\"t\":" + std::to_string(t) + ",\"i\":" + std::to_string(i) + "}");
      });
    for (auto& t : ts) t.join();
    EXPECT_EQ((*log)->dropped(), 0u);
  }  // the destructor writes what is buffered
  auto lines = lines_of(file);
  ASSERT_EQ(lines.size(), size_t{kThreads * kPer});
  std::vector<int> next(kThreads, 0);
  for (const auto& l : lines) {
    int t = -1, i = -1;
    ASSERT_EQ(std::sscanf(l.c_str(), "{\"t\":%d,\"i\":%d}", &t, &i), 2) << l;
    ASSERT_TRUE(t >= 0 && t < kThreads) << l;
    EXPECT_EQ(i, next[t]++) << "thread " << t << " out of order";
  }
}

TEST(AccessLog, WrittenCountsLinesOnceTheyAreOut) {
  TempDir d;
  auto file = d.p / "access.log";
  auto log = AccessLog::open(file.string());
  ASSERT_TRUE(log.ok());
  for (int i = 0; i < 3; ++i) (*log)->push("x");
  // Not a timing assertion: waits (bounded) for the writer, then checks what it wrote.
  for (int i = 0; i < 500 && (*log)->written() < 3; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ((*log)->written(), 3u);
  EXPECT_EQ(lines_of(file), (std::vector<std::string>{"x", "x", "x"}));
}

TEST(AccessLog, FullBufferDropsAndCountsNeverBlocks) {
  TempDir d;
  auto file = d.p / "access.log";
  uint64_t written = 0, dropped = 0;
  {
    // 100 bytes of room; 50 lines of 10 (+ newline) pushed at once: the writer gathers for
    // kGatherMs after its first wake-up, so most do not fit and are dropped.
    auto log = AccessLog::open(file.string(), 100);
    ASSERT_TRUE(log.ok());
    for (int i = 0; i < 50; ++i) (*log)->push("0123456789");
    dropped = (*log)->dropped();
    EXPECT_GE(dropped, 1u);
  }
  written = lines_of(file).size();
  EXPECT_EQ(written + dropped, 50u);
}

TEST(AccessLog, BadTargetIsAClearError) {
  auto log = AccessLog::open("/nonexistent-dir/access.log");
  ASSERT_FALSE(log.ok());
  EXPECT_NE(log.error().message.find("/nonexistent-dir/access.log"), std::string::npos) << log.error().message;
}
