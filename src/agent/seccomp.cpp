#include "netsteer/agent/seccomp.h"

#include <sched.h>
#include <seccomp.h>

#include <cerrno>
#include <memory>

namespace netsteer::agent {

Result<SeccompMode> parse_seccomp_mode(std::string_view s) {
  if (s == "off") return SeccompMode::kOff;
  if (s == "on" || s == "enforce") return SeccompMode::kEnforce;
  if (s == "log") return SeccompMode::kLog;
  return Error::msg("--seccomp must be on, off or log, got '" + std::string(s) + "'", EINVAL);
}

const std::vector<std::string>& seccomp_allowed() {
  static const std::vector<std::string> v{
      // memory, threads, time, process basics (glibc, libstdc++, spdlog, OpenSSL)
      "brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "futex", "set_robust_list", "get_robust_list",
      "set_tid_address", "rseq", "clone", "clone3", "exit", "exit_group", "arch_prctl", "prctl", "sched_yield",
      "sched_getaffinity", "nanosleep", "clock_nanosleep", "clock_gettime", "clock_getres", "gettimeofday", "time",
      "getrandom", "uname", "getpid", "gettid", "getppid", "getuid", "geteuid", "getgid", "getegid", "getgroups",
      "getresuid", "getresgid", "getrlimit", "setrlimit", "prlimit64", "getrusage", "sysinfo", "restart_syscall",
      "tgkill", "membarrier", "capget", "capset", "umask", "wait4",
      // the BPF preload thread lowers its own priority (raising one needs CAP_SYS_NICE, not kept)
      "setpriority", "sched_setscheduler",
      // signals (signalfd-driven shutdown, sigtimedwait while draining)
      "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigtimedwait", "sigaltstack", "signalfd", "signalfd4",
      // files: state file, pins, /proc, /sys, kernel BTF
      "read", "write", "readv", "writev", "pread64", "pwrite64", "open", "openat", "close", "close_range", "stat",
      "fstat", "lstat", "newfstatat", "statx", "statfs", "fstatfs", "lseek", "access", "faccessat", "faccessat2",
      "getdents64", "getcwd", "rename", "renameat", "renameat2", "mkdir", "mkdirat", "rmdir", "unlink",
      "unlinkat", "readlink", "readlinkat", "chmod", "fchmod", "fchmodat", "fsync", "fdatasync", "ftruncate",
      "fcntl", "flock", "ioctl", "dup", "dup2", "dup3", "pipe", "pipe2", "fadvise64",
      // event loops and the relay's hot path
      "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2", "poll", "ppoll",
      "select", "pselect6", "eventfd", "eventfd2", "timerfd_create", "timerfd_settime", "timerfd_gettime",
      "splice",
      // sockets: control socket (SCM_RIGHTS), listeners, upstreams, rtnetlink, metrics, Kubernetes API
      "socket", "socketpair", "bind", "listen", "accept", "accept4", "connect", "getsockname", "getpeername",
      "setsockopt", "getsockopt", "sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg", "shutdown",
      // the agent's job: pod netns, bpffs, BPF (and unshare(CLONE_NEWNET) alone: install_seccomp)
      "setns", "mount", "bpf",
  };
  return v;
}

Status install_seccomp(SeccompMode mode) {
  if (mode == SeccompMode::kOff) return {};
  uint32_t deny = mode == SeccompMode::kLog ? SCMP_ACT_LOG : SCMP_ACT_ERRNO(EPERM);
  std::unique_ptr<void, decltype(&seccomp_release)> ctx(seccomp_init(deny), seccomp_release);
  if (!ctx) return Error::msg("seccomp_init failed", ENOMEM);
  for (const auto& name : seccomp_allowed()) {
    int nr = seccomp_syscall_resolve_name(name.c_str());
    if (nr == __NR_SCMP_ERROR) continue;  // not on this architecture
    if (int r = seccomp_rule_add(ctx.get(), SCMP_ACT_ALLOW, nr, 0); r < 0)
      return Error::from_errno(-r, "seccomp rule for " + name);
  }
  // unshare(2) for a new netns only (bpf::KeepWarm's, once at start): never a user, mount or PID
  // namespace, nor several at once.
  if (int nr = seccomp_syscall_resolve_name("unshare"); nr != __NR_SCMP_ERROR)
    if (int r = seccomp_rule_add(ctx.get(), SCMP_ACT_ALLOW, nr, 1, SCMP_A0(SCMP_CMP_EQ, CLONE_NEWNET)); r < 0)
      return Error::from_errno(-r, "seccomp rule for unshare");
  // A binary tree over the syscall numbers: the relay's splice/epoll calls pay a few comparisons,
  // not a walk of the whole list (libseccomp >= 2.5; older ones keep the linear filter).
  (void)seccomp_attr_set(ctx.get(), SCMP_FLTATR_CTL_OPTIMIZE, 2);
  if (int r = seccomp_attr_set(ctx.get(), SCMP_FLTATR_CTL_TSYNC, 1); r < 0)
    return Error::from_errno(-r, "seccomp TSYNC");
  if (int r = seccomp_load(ctx.get()); r < 0) return Error::from_errno(-r, "seccomp_load");
  return {};
}

}  // namespace netsteer::agent
