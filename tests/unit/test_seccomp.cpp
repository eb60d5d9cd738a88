// The agent's seccomp allow-list: applied in a child process, listed calls work and others fail
// with EPERM (the agent never runs programs or traces processes).
#include <gtest/gtest.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include <sched.h>

#include "netsteer/agent/seccomp.h"

using namespace netsteer::agent;

namespace {
// Runs fn in a forked child after installing the filter; returns the child's exit code.
template <typename Fn>
int in_filtered_child(SeccompMode mode, Fn fn) {
  pid_t pid = ::fork();
  if (pid == 0) {
    ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    if (!install_seccomp(mode).ok()) ::_exit(100);
    ::_exit(fn());
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 200 + WTERMSIG(status);
}
}  // namespace

TEST(Seccomp, AllowsTheAgentsCallsAndRefusesOthersWithEperm) {
  EXPECT_EQ(in_filtered_child(SeccompMode::kEnforce, [] {
              int s = ::socket(AF_UNIX, SOCK_SEQPACKET, 0);  // allowed
              if (s < 0) return 1;
              ::close(s);
              char* argv[] = {const_cast<char*>("/bin/true"), nullptr};
              ::execve("/bin/true", argv, nullptr);  // not allowed: must fail, not run
              if (errno != EPERM) return 2;
              if (::ptrace(PTRACE_TRACEME, 0, nullptr, nullptr) != -1 || errno != EPERM) return 3;
              return 0;
            }),
            0);
}

TEST(Seccomp, UnshareOnlyForANewNetns) {
  // bpf::KeepWarm's private netns: CLONE_NEWNET alone passes the filter (and then needs
  // CAP_SYS_ADMIN); any other namespace, or more than one, fails with EPERM.
  EXPECT_EQ(in_filtered_child(SeccompMode::kEnforce, [] {
              for (int flags : {CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWNET | CLONE_NEWNS})
                if (::unshare(flags) != -1 || errno != EPERM) return 1;
              if (::geteuid() == 0 && ::unshare(CLONE_NEWNET) != 0) return 2;
              return 0;
            }),
            0);
}

TEST(Seccomp, OffInstallsNothingAndModesParse) {
  EXPECT_EQ(in_filtered_child(SeccompMode::kOff, [] {
              char* argv[] = {const_cast<char*>("/bin/true"), nullptr};
              ::execve("/bin/true", argv, nullptr);
              return 9;  // execve replaced us with /bin/true (exit 0) unless it failed
            }),
            0);
  EXPECT_TRUE(parse_seccomp_mode("on").ok());
  EXPECT_TRUE(parse_seccomp_mode("log").ok());
  EXPECT_FALSE(parse_seccomp_mode("maybe").ok());
  const auto& v = seccomp_allowed();
  for (const char* must : {"bpf", "setns", "splice", "sendmsg", "recvmsg", "epoll_wait"})
    EXPECT_NE(std::find(v.begin(), v.end(), must), v.end()) << must;
  for (const char* never : {"execve", "ptrace", "kexec_load", "init_module", "process_vm_writev"})
    EXPECT_EQ(std::find(v.begin(), v.end(), never), v.end()) << never;
}
