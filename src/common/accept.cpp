#include "netsteer/common/accept.h"

#include <fcntl.h>
#include <sys/resource.h>

#include <cerrno>
#include <fstream>
#include <mutex>
#include <string>
#include <vector>

namespace netsteer {

namespace {

UniqueFd open_reserve() { return UniqueFd(::open("/dev/null", O_RDONLY | O_CLOEXEC)); }

thread_local UniqueFd t_reserve;

std::mutex g_pool_mu;
std::vector<UniqueFd> g_pool;  // reserves opened at start-up, for the threads to take

}  // namespace

void reserve_accept_fds(unsigned count) {
  std::lock_guard lock(g_pool_mu);
  while (g_pool.size() < count)
    if (UniqueFd fd = open_reserve()) g_pool.push_back(std::move(fd));
    else break;
}

void prepare_accept_reserve() {
  if (t_reserve) return;
  {
    std::lock_guard lock(g_pool_mu);
    if (!g_pool.empty()) {
      t_reserve = std::move(g_pool.back());
      g_pool.pop_back();
      return;
    }
  }
  t_reserve = open_reserve();
}

Accepted accept_or_shed(int listen_fd, sockaddr* peer, socklen_t* plen, int flags) {
  int fd = ::accept4(listen_fd, peer, plen, flags);
  if (fd >= 0) {
    // A reserve lost to another thread (it took the freed number before the shed's accept, so
    // the reserve could not be taken back) is taken again as soon as fds are free: without it this
    // thread could never shed again, and its refused clients would wait in the accept queue.
    if (!t_reserve) t_reserve = open_reserve();
    return {AcceptResult::accepted, UniqueFd(fd), 0};
  }
  int err = errno;
  if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR || err == ECONNABORTED)
    return {AcceptResult::again, {}, err};
  if (err != EMFILE && err != ENFILE && err != ENOBUFS && err != ENOMEM) return {AcceptResult::error, {}, err};
  t_reserve.reset();
  UniqueFd victim(::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC));
  if (victim) {
    linger lg{1, 0};  // reset, so the client is refused at once
    ::setsockopt(victim.get(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  }
  bool shed = victim.valid();
  victim.reset();
  t_reserve = open_reserve();
  return {shed ? AcceptResult::shed : AcceptResult::error, {}, err};
}

unsigned long raise_nofile_limit() {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return 0;
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    (void)::setrlimit(RLIMIT_NOFILE, &rl);
    (void)::getrlimit(RLIMIT_NOFILE, &rl);
  }
  return rl.rlim_cur;
}

unsigned long presize_fd_table(unsigned long want) {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < want) want = rl.rlim_cur;
  if (want > 0) {
    // The lowest free fd >= want - 1 is want - 1 in a fresh process: the table grows to hold it.
    UniqueFd any = open_reserve();
    if (any) UniqueFd high(::fcntl(any.get(), F_DUPFD_CLOEXEC, static_cast<int>(want - 1)));
  }
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);)
    if (line.starts_with("FDSize:")) return std::stoul(line.substr(7));
  return 0;
}

}  // namespace netsteer
