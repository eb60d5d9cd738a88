#include "netsteer/netns/netns.h"

#include <fcntl.h>
#include <linux/nsfs.h>
#include <sched.h>
#include <spdlog/spdlog.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <cstdlib>
#include <mutex>

#include "netsteer/common/log.h"

#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71  // Linux 5.14
#endif

namespace netsteer::netns {

namespace {
Result<NetnsId> id_of_fd(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) < 0) return Error::from_errno(errno, "fstat netns fd");
  return NetnsId{static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino)};
}
}  // namespace

Result<NetnsHandle> NetnsHandle::from_fd(UniqueFd fd) {
  if (!fd.valid()) return Error::msg("no netns fd", EBADF);
  int type = ::ioctl(fd.get(), NS_GET_NSTYPE);
  if (type < 0) {
    int e = errno;
    if (e == ENOTTY || e == EINVAL)
      return Error::msg("fd is not a namespace (NS_GET_NSTYPE failed: not an nsfs file)", EINVAL);
    return Error::from_errno(e, "NS_GET_NSTYPE on fd");
  }
  if (type != CLONE_NEWNET)
    return Error::msg("fd is a namespace but not a network namespace (type " + std::to_string(type) + ")",
                      EINVAL);
  NS_TRY(NetnsId id, id_of_fd(fd.get()));
  NetnsHandle h;
  h.fd_ = std::move(fd);
  h.id_ = id;
  return h;
}

Result<NetnsHandle> NetnsHandle::open(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return Error::from_errno(errno, "open netns " + path);
  auto h = from_fd(std::move(fd));
  if (!h.ok()) return std::move(h).error().wrap(path);
  return h;
}

Result<NetnsHandle> NetnsHandle::current() { return open("/proc/thread-self/ns/net"); }

const NetnsHandle& NetnsHandle::host() {
  static NetnsHandle h = [] {
    auto r = NetnsHandle::open("/proc/self/ns/net");
    if (!r.ok()) {
      spdlog::critical("cannot open the agent's own netns: {}", r.error().message);
      std::abort();
    }
    return std::move(r).value();
  }();
  return h;
}

Result<NetnsHandle> NetnsHandle::create_private(const std::function<Status()>& inside) {
  // unshare moves only the calling thread; this thread ends there, so nothing else ever runs in
  // the new netns.
  Result<NetnsHandle> out = Error::msg("no netns", EINVAL);
  std::thread([&] {
    if (::unshare(CLONE_NEWNET) < 0) {
      out = Error::from_errno(errno, "unshare(CLONE_NEWNET)");
      return;
    }
    auto h = current();
    if (!h.ok()) {
      out = std::move(h).error();
      return;
    }
    if (inside) {
      if (auto st = inside(); !st.ok()) {
        out = std::move(st).error();
        return;
      }
    }
    out = std::move(h);
  }).join();
  return out;
}

Result<NetnsHandle> NetnsHandle::dup() const {
  UniqueFd d = dup_fd(fd_.get());
  if (!d) return Error::from_errno(errno, "dup netns fd");
  NetnsHandle h;
  h.fd_ = std::move(d);
  h.id_ = id_;
  return h;
}

Status NetnsHandle::learn_cookie() {
  NS_TRY(id_.cookie, current_netns_cookie());
  return {};
}

Result<uint64_t> current_netns_cookie() {
  UniqueFd s(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!s) return Error::from_errno(errno, "socket for the netns cookie");
  uint64_t cookie = 0;
  socklen_t len = sizeof cookie;
  if (::getsockopt(s.get(), SOL_SOCKET, SO_NETNS_COOKIE, &cookie, &len) < 0) {
    if (errno != ENOPROTOOPT) return Error::from_errno(errno, "getsockopt SO_NETNS_COOKIE");
    static std::once_flag once;
    std::call_once(once, [] {
      spdlog::info("the kernel lacks SO_NETNS_COOKIE (5.14+ needed): a pod's netns is identified by dev+inode "
                   "only, which a netns recreated at the same path can reuse");
    });
    return uint64_t{0};
  }
  return cookie;
}

Result<NetnsId> netns_id_of_path(const std::string& path) {
  NS_TRY(NetnsHandle h, NetnsHandle::open(path));
  return h.id();
}

Result<ScopedNetns> ScopedNetns::enter(const NetnsHandle& target) {
  UniqueFd saved(::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
  if (!saved) return Error::from_errno(errno, "open current netns");
  if (::setns(target.fd(), CLONE_NEWNET) < 0) return Error::from_errno(errno, "setns into pod netns");
  return ScopedNetns(std::move(saved));
}

ScopedNetns::~ScopedNetns() {
  int fd = saved_.get();
  if (fd < 0) return;  // moved from
  if (::setns(fd, CLONE_NEWNET) < 0) {
    // Never run on in the wrong netns: sockets created later would land in the pod.
    spdlog::critical("setns back to the previous netns failed (errno {}): aborting", errno);
    std::abort();
  }
}

Status NetnsCursor::enter(const NetnsHandle& ns) {
  if (at(ns)) return {};
  if (::setns(ns.fd(), CLONE_NEWNET) < 0) return Error::from_errno(errno, "setns into pod netns");  // still at_
  at_ = ns.id();
  thread_ = std::this_thread::get_id();
  return {};
}

void NetnsCursor::home() {
  if (at(home_)) return;
  if (::setns(home_.fd(), CLONE_NEWNET) < 0) {
    spdlog::critical("setns back to the agent's netns failed (errno {}): aborting", errno);
    std::abort();
  }
  at_ = home_.id();
}

bool NetnsCursor::is_local(const NetnsHandle& ns, const IpAddr& ip) {
  if (!enter(ns).ok()) return false;
  UniqueFd probe(::socket(ip.family, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!probe) return false;
  SockAddr any_port = SockAddr::make(ip, 0);
  return ::bind(probe.get(), any_port.sa(), any_port.len) == 0;
}

NetnsCursor::~NetnsCursor() {
  // On another thread (the worker's thread has ended) there is nothing to undo: a thread's netns
  // reference ends with it.
  if (thread_ == std::this_thread::get_id()) home();
}

NetnsExecutor::NetnsExecutor(size_t threads) {
  (void)NetnsHandle::host();  // capture the host netns before any thread moves
  if (threads == 0) threads = 1;
  for (size_t i = 0; i < threads; ++i) threads_.push_back(log::start_thread("enrol", [this] { loop(); }));
}

NetnsExecutor::~NetnsExecutor() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

void NetnsExecutor::submit(std::function<void()> job) {
  {
    std::lock_guard lk(mu_);
    queue_.push_back(std::move(job));
  }
  cv_.notify_one();
}

void NetnsExecutor::loop() {
  for (;;) {
    std::function<void()> job;
    {
      std::unique_lock lk(mu_);
      cv_.wait(lk, [this] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    job();
  }
}

}  // namespace netsteer::netns
