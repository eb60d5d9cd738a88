// Log line timestamps: UTC by calendar arithmetic (no tzset), the same text gmtime gives.
#include <gtest/gtest.h>

#include <pthread.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <regex>
#include <string>
#include <unistd.h>

#include "netsteer/common/log.h"

using namespace std::chrono;

namespace {

std::string via_gmtime(system_clock::time_point t) {
  std::time_t s = system_clock::to_time_t(floor<seconds>(t));
  std::tm tm{};
  ::gmtime_r(&s, &tm);
  char buf[32], out[40];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  std::snprintf(out, sizeof out, "%s.%03d", buf, static_cast<int>((floor<milliseconds>(t) - floor<seconds>(t)).count()));
  return out;
}

TEST(LogTimestamp, MatchesGmtime) {
  for (long long s : {0LL, 951782400LL /* 2000-02-29 */, 1709164799LL, 1796299558LL, 4102444799LL /* 2099-12-31 */}) {
    for (int ms : {0, 7, 325, 999}) {
      auto t = system_clock::time_point{seconds{s} + milliseconds{ms} + microseconds{400}};
      EXPECT_EQ(netsteer::log::utc_timestamp(t).view(), via_gmtime(t)) << s << " " << ms;
    }
  }
  EXPECT_EQ(netsteer::log::utc_timestamp(system_clock::time_point{seconds{1796299558} + milliseconds{325}}).view(),
            "2026-12-03T12:05:58.325");
}

TEST(LogTimestamp, LinesCarryIt) {
  char path[] = "/tmp/netsteer-log-test-XXXXXX";
  int fd = ::mkstemp(path);
  ASSERT_GE(fd, 0);
  ::close(fd);
  for (auto fmt : {netsteer::log::Format::kText, netsteer::log::Format::kJson}) {
    ASSERT_TRUE(netsteer::log::setup(fmt, "info", path, false).ok());
    auto before = system_clock::now();
    spdlog::info("stamp check");
    std::ifstream in(path);
    std::string line, last;
    while (std::getline(in, line)) last = line;
    std::smatch m;
    ASSERT_TRUE(std::regex_search(last, m, std::regex(R"((\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})(Z info|\+00:00","level":"info"))")))
        << last;
    // The stamp is now's, to the millisecond (or the next one, had the clock ticked).
    std::string a(netsteer::log::utc_timestamp(before).view()), b(netsteer::log::utc_timestamp(system_clock::now()).view());
    EXPECT_TRUE(m[1] >= a && m[1] <= b) << m[1] << " not in [" << a << ", " << b << "]";
  }
  (void)netsteer::log::setup(netsteer::log::Format::kText, "info", "", true);
  ::unlink(path);
}

// The point of utc_timestamp: a short-lived process that logs (netsteer-cni, here on its error
// path: ADD without CNI_CONTAINERID logs one line) never opens /etc/localtime. spdlog's %Y..%e
// called gmtime, whose tzset read the zone file in every CNI ADD.
TEST(LogTimestamp, CniProcessNeverReadsTheZoneFile) {
  if (::system("command -v strace >/dev/null 2>&1") != 0) {
    if (const char* ci = std::getenv("CI"); ci && std::string(ci) == "true")
      FAIL() << "strace is not installed (scripts/setup.sh installs it) and CI=true: refusing to skip";
    GTEST_SKIP() << "strace not installed";
  }
  char trace[] = "/tmp/netsteer-cni-trace-XXXXXX";
  int fd = ::mkstemp(trace);
  ASSERT_GE(fd, 0);
  ::close(fd);
  std::string cmd = std::string("echo '{}' | env -i CNI_COMMAND=ADD strace -f -e trace=open,openat -o ") + trace +
                    " " NETSTEER_CNI_BIN " 2>&1 >/dev/null";
  FILE* p = ::popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[1024];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  ::pclose(p);
  std::ifstream in(trace);
  std::string opens((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ::unlink(trace);
  ASSERT_NE(out.find("Z error netsteer-cni: CNI_CONTAINERID"), std::string::npos) << "no log line:\n" << out;
  ASSERT_NE(opens.find("exited with"), std::string::npos) << "strace traced nothing:\n" << opens;
  EXPECT_EQ(opens.find("/etc/localtime"), std::string::npos) << opens;
}

// A thread started by start_thread carries its name by the time start_thread returns, before its
// body has run at all: the agent says it is ready right after starting its threads, and top -H,
// perf and the tests read the names then.
TEST(StartThread, IsNamedBeforeItsBodyRuns) {
  std::atomic<bool> go{false}, ran{false};
  std::thread t = netsteer::log::start_thread("a-long-thread-name", [&] {
    while (!go.load()) std::this_thread::yield();
    ran = true;
  });
  char name[16] = {};
  ASSERT_EQ(::pthread_getname_np(t.native_handle(), name, sizeof name), 0);
  EXPECT_FALSE(ran.load());
  EXPECT_STREQ(name, "ns-a-long-threa");  // cut to the kernel's 15 characters
  go = true;
  t.join();
  EXPECT_TRUE(ran.load());
}

}  // namespace
