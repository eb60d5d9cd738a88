#include "netsteer/relay/access_log.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cerrno>

namespace netsteer::relay {

Result<std::unique_ptr<AccessLog>> AccessLog::open(const std::string& target, size_t capacity) {
  std::unique_ptr<AccessLog> l(new AccessLog());
  l->target_ = target;
  l->capacity_ = capacity;
  NS_TRY_STATUS(l->reopen_file());
  l->wake_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!l->wake_) return Error::from_errno(errno, "eventfd");
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGHUP);
  ::pthread_sigmask(SIG_BLOCK, &set, nullptr);  // netsteerd blocks it before any thread starts
  l->sig_.reset(::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!l->sig_) return Error::from_errno(errno, "signalfd for SIGHUP");
  l->thread_ = std::thread([p = l.get()] { p->run(); });
  return l;
}

AccessLog::~AccessLog() {
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
  }
  uint64_t one = 1;
  if (wake_) (void)!::write(wake_.get(), &one, sizeof one);
  if (thread_.joinable()) thread_.join();
}

Status AccessLog::reopen_file() {
  if (target_ == "stderr") {
    out_.reset(::fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 3));
  } else {
    out_.reset(::open(target_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640));
  }
  if (!out_) return Error::from_errno(errno, "access log " + target_);
  return {};
}

void AccessLog::push(std::string line) {
  bool was_empty;
  {
    std::lock_guard lk(mu_);
    if (q_.size() >= capacity_) {
      dropped_.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    was_empty = q_.empty();
    line.push_back('\n');
    q_.push_back(std::move(line));
  }
  if (was_empty) {
    uint64_t one = 1;
    (void)!::write(wake_.get(), &one, sizeof one);
  }
}

void AccessLog::run() {
  pollfd fds[2] = {{wake_.get(), POLLIN, 0}, {sig_.get(), POLLIN, 0}};
  std::deque<std::string> batch;
  for (;;) {
    if (::poll(fds, 2, -1) < 0 && errno != EINTR) return;
    if (fds[1].revents & POLLIN) {
      signalfd_siginfo si{};
      while (::read(sig_.get(), &si, sizeof si) == sizeof si) {
      }
      if (auto st = reopen_file(); st.ok()) reopened_.fetch_add(1, std::memory_order_relaxed);
      else spdlog::warn("SIGHUP: {}", st.error().message);
    }
    uint64_t n;
    (void)!::read(wake_.get(), &n, sizeof n);
    bool stop;
    {
      std::lock_guard lk(mu_);
      batch.swap(q_);
      stop = stopping_;
    }
    std::string buf;
    for (auto& l : batch) {
      buf += l;
      if (buf.size() >= (1 << 16)) {
        (void)!::write(out_.get(), buf.data(), buf.size());
        buf.clear();
      }
    }
    if (!buf.empty()) (void)!::write(out_.get(), buf.data(), buf.size());
    written_.fetch_add(batch.size(), std::memory_order_relaxed);
    batch.clear();
    if (stop) return;
  }
}

}  // namespace netsteer::relay
