// Network namespace handles and switching.
//
// setns(CLONE_NEWNET) changes only the calling thread. ScopedNetns enters a pod netns on the
// current thread and restores the thread's previous netns when it goes out of scope; when
// restoring fails the process aborts: running on in the wrong netns is never acceptable.
// NetnsExecutor runs tasks inside a netns on a small fixed pool of threads (no thread per pod).
#pragma once

#include <sys/types.h>

#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "netsteer/common/inet.h"
#include "netsteer/common/result.h"
#include "netsteer/common/unique_fd.h"

namespace netsteer::netns {

// Identity of a netns: the (st_dev, st_ino) of its nsfs inode and its cookie (SO_NETNS_COOKIE).
// nsfs inode numbers are reused: a netns deleted and recreated at the same path can get the old
// (dev, ino) back, so a record of those alone can match a later netns. The cookie is never reused
// while the system runs. cookie 0 = unknown (not read yet, a record of an older agent, or a kernel
// before 5.14 without SO_NETNS_COOKIE): then dev and ino alone decide. (For two open handles dev
// and ino suffice: an open netns keeps its inode.)
struct NetnsId {
  uint64_t dev = 0;
  uint64_t ino = 0;
  uint64_t cookie = 0;
  // The same netns as far as both sides know: dev and ino, and the cookies when both are known.
  bool operator==(const NetnsId& o) const {
    return dev == o.dev && ino == o.ino && (cookie == 0 || o.cookie == 0 || cookie == o.cookie);
  }
};

// An owned fd that is verified to refer to a network namespace.
class NetnsHandle {
 public:
  NetnsHandle() = default;
  // Takes ownership of fd (closed on any error); checks NS_GET_NSTYPE == CLONE_NEWNET.
  static Result<NetnsHandle> from_fd(UniqueFd fd);
  // Opens a netns file (/var/run/netns/NAME, /proc/PID/ns/net) and validates it.
  static Result<NetnsHandle> open(const std::string& path);
  // The netns of the calling thread.
  static Result<NetnsHandle> current();
  // The netns the process started in (the agent's "host" netns), captured on first use.
  static const NetnsHandle& host();
  // A new, empty netns (only a loopback that is down), made on a short-lived thread that first
  // runs inside(): what that does by ifindex or netlink happens in the new netns. The handle keeps
  // the netns alive. Needs CAP_SYS_ADMIN (unshare CLONE_NEWNET).
  static Result<NetnsHandle> create_private(const std::function<Status()>& inside = {});

  int fd() const { return fd_.get(); }
  bool valid() const { return fd_.valid(); }
  const NetnsId& id() const { return id_; }
  Result<NetnsHandle> dup() const;
  // Reads the netns cookie into id().cookie (0 on a kernel without SO_NETNS_COOKIE). Call it only
  // on a thread that is inside this netns (a NetnsExecutor::run task for it): the cookie is read
  // from a throwaway socket created there, which costs no setns of its own.
  Status learn_cookie();

 private:
  UniqueFd fd_;
  NetnsId id_;
};

// Identity of the netns file at path without keeping it open (dev and ino; cookie 0).
Result<NetnsId> netns_id_of_path(const std::string& path);

// The cookie of the calling thread's netns, from a throwaway socket; 0 when the kernel lacks
// SO_NETNS_COOKIE (< 5.14, logged once).
Result<uint64_t> current_netns_cookie();

// RAII: enter `target` on this thread; restore the previous netns on destruction (abort on failure).
class ScopedNetns {
 public:
  // (Threads that make sockets in pod netns on a hot path use NetnsCursor instead.)
  static Result<ScopedNetns> enter(const NetnsHandle& target);
  ScopedNetns(ScopedNetns&& o) noexcept : saved_(std::move(o.saved_)) {}
  ScopedNetns& operator=(ScopedNetns&&) = delete;
  ScopedNetns(const ScopedNetns&) = delete;
  ~ScopedNetns();

 private:
  explicit ScopedNetns(UniqueFd saved) : saved_(std::move(saved)) {}
  UniqueFd saved_;
};

// A thread that makes sockets in many netns (a relay worker, the UDP proxy) stays in the last one it entered:
// the next socket for the same pod costs no setns, and a run of pods costs one each instead of
// two. The owner must call leave(ns) before that netns's handle goes away (a thread inside a netns
// keeps it alive), and the destructor returns the thread home when it runs on that thread. Use on
// one thread only.
class NetnsCursor {
 public:
  explicit NetnsCursor(const NetnsHandle& home) : home_(home), at_(home.id()) {}
  ~NetnsCursor();
  NetnsCursor(const NetnsCursor&) = delete;
  NetnsCursor& operator=(const NetnsCursor&) = delete;
  // Puts the thread in ns (setns only when it is elsewhere).
  Status enter(const NetnsHandle& ns);
  // Back home (aborts when that fails, like ScopedNetns).
  void home();
  // Back home if the thread is in ns.
  void leave(const NetnsHandle& ns) {
    if (at(ns)) home();
  }
  bool at(const NetnsHandle& ns) const { return at_.dev == ns.id().dev && at_.ino == ns.id().ino; }
  // Whether ip is an address of ns (enters it): a datagram socket binds to it only then (no
  // IP_FREEBIND, no IP_TRANSPARENT). False when ns cannot be entered. For rare paths: a socket and
  // a bind per call. It tells a connection or datagram addressed to an agent socket's own port in
  // the pod (127.0.0.1:15001) from a steered one to another host's service on that port.
  bool is_local(const NetnsHandle& ns, const IpAddr& ip);

 private:
  const NetnsHandle& home_;
  NetnsId at_;
  std::thread::id thread_;  // the thread that left home
};

// Fixed pool of threads that run tasks inside a given netns and return to the host netns.
class NetnsExecutor {
 public:
  explicit NetnsExecutor(size_t threads = 2);
  ~NetnsExecutor();
  NetnsExecutor(const NetnsExecutor&) = delete;
  NetnsExecutor& operator=(const NetnsExecutor&) = delete;

  // Runs fn() inside `ns` on a pool thread and waits for it. fn returns Result<T>.
  template <typename F>
  auto run(const NetnsHandle& ns, F&& fn) -> decltype(fn()) {
    using R = decltype(fn());
    std::packaged_task<R()> task([&ns, &fn]() -> R {
      auto scope = ScopedNetns::enter(ns);
      if (!scope.ok()) return std::move(scope).error();
      return fn();
    });
    auto fut = task.get_future();
    submit([&task] { task(); });
    return fut.get();
  }

  // Queues fn() to run on a pool thread (in the host netns) without waiting for it. Jobs still
  // queued when the executor is destroyed run before its threads exit.
  void post(std::function<void()> fn) { submit(std::move(fn)); }

  size_t threads() const { return threads_.size(); }

 private:
  void submit(std::function<void()> job);
  void loop();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace netsteer::netns
