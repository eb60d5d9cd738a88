// accept_or_shed: out of fds, a queued client is reset (not left waiting), and a thread whose
// reserve descriptor was lost takes it back once fds are free again.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <thread>

#include "netsteer/common/accept.h"
#include "netsteer/common/unique_fd.h"

namespace netsteer {
namespace {

// The lowest fd number not in use: with RLIMIT_NOFILE at it, no fd can be allocated.
int lowest_free() {
  int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (fd >= 0) ::close(fd);
  return fd;
}

bool set_limit(rlim_t cur) {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return false;
  rl.rlim_cur = cur;
  return ::setrlimit(RLIMIT_NOFILE, &rl) == 0;
}

// In a child process (the fd limit is per process). Exit code: 0 when every step held, else the
// step that failed.
int lost_reserve_comes_back() {
  UniqueFd l(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof sa;
  if (!l || ::bind(l.get(), reinterpret_cast<sockaddr*>(&sa), len) != 0 || ::listen(l.get(), 16) != 0 ||
      ::getsockname(l.get(), reinterpret_cast<sockaddr*>(&sa), &len) != 0)
    return 10;
  // Two clients queued before the limit comes down (their own sockets need fds).
  UniqueFd c1(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)), c2(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (::connect(c1.get(), reinterpret_cast<sockaddr*>(&sa), len) != 0 ||
      ::connect(c2.get(), reinterpret_cast<sockaddr*>(&sa), len) != 0)
    return 11;
  rlimit saved{};
  if (::getrlimit(RLIMIT_NOFILE, &saved) != 0) return 10;
  int rc = 0;
  std::thread([&] {
    // The limit comes back up before this thread ends: the sanitizers' runtimes open files (to
    // check a type, to print a report), and with no fd free they fail where nothing is wrong.
    struct Restore {
      const rlimit& r;
      ~Restore() { ::setrlimit(RLIMIT_NOFILE, &r); }
    } restore{saved};
    // This thread's reserve is first taken here, with no fd free: it has none.
    int low = lowest_free();
    if (low < 0 || !set_limit(static_cast<rlim_t>(low))) return void(rc = 12);
    Accepted a = accept_or_shed(l.get(), nullptr, nullptr, SOCK_CLOEXEC);
    if (a.result != AcceptResult::error || a.err != EMFILE) return void(rc = 13);  // cannot shed
    // Two numbers free: c1 is accepted into one, and the reserve is taken back into the other.
    if (!set_limit(static_cast<rlim_t>(low + 2))) return void(rc = 14);
    Accepted got = accept_or_shed(l.get(), nullptr, nullptr, SOCK_CLOEXEC);
    if (got.result != AcceptResult::accepted) return void(rc = 15);
    // Out of fds again: c2 is shed with the reserve, not accepted into a free number.
    Accepted shed = accept_or_shed(l.get(), nullptr, nullptr, SOCK_CLOEXEC);
    if (shed.result != AcceptResult::shed) return void(rc = 16);
    char b;
    if (::recv(c2.get(), &b, 1, 0) != -1 || errno != ECONNRESET) return void(rc = 17);  // refused at once
  }).join();
  return rc;
}

TEST(AcceptShed, LostReserveIsTakenBackOnceFdsAreFree) {
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) ::_exit(lost_reserve_comes_back());
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "failed at step " << WEXITSTATUS(status);
}

}  // namespace
}  // namespace netsteer
