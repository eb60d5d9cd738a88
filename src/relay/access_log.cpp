#include "netsteer/relay/access_log.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cerrno>

#include "netsteer/common/log.h"

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
  l->thread_ = log::start_thread("access-log", [p = l.get()] { p->run(); });
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

void AccessLog::push(std::string_view line) {
  bool was_empty;
  {
    std::lock_guard lk(mu_);
    if (buf_.size() + line.size() + 1 > capacity_) {
      dropped_.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    was_empty = buf_.empty();
    buf_.append(line);
    buf_.push_back('\n');
    buf_lines_++;
  }
  if (was_empty) {
    uint64_t one = 1;
    (void)!::write(wake_.get(), &one, sizeof one);
  }
}

namespace {

void write_all(int fd, const std::string& s) {
  for (size_t off = 0; off < s.size();) {
    ssize_t n = ::write(fd, s.data() + off, s.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // a full disk or a closed stderr loses the batch; the relay goes on
    off += static_cast<size_t>(n);
  }
}

}  // namespace

void AccessLog::run() {
  pollfd fds[2] = {{wake_.get(), POLLIN, 0}, {sig_.get(), POLLIN, 0}};
  std::string batch;
  for (;;) {
    if (::poll(fds, 2, -1) < 0 && errno != EINTR) return;
    if (fds[0].revents & POLLIN) {
      uint64_t n;
      (void)!::read(wake_.get(), &n, sizeof n);
      // Let lines gather: workers do not wake us again while the buffer is not empty. The stop
      // request (a write to wake_) or SIGHUP cuts the wait short.
      bool stop;
      {
        std::lock_guard lk(mu_);
        stop = stopping_;
      }
      if (!stop) (void)::poll(fds, 2, kGatherMs);
    }
    if (fds[1].revents & POLLIN) {
      signalfd_siginfo si{};
      while (::read(sig_.get(), &si, sizeof si) == sizeof si) {
      }
      if (auto st = reopen_file(); st.ok()) reopened_.fetch_add(1, std::memory_order_relaxed);
      else spdlog::warn("SIGHUP: {}", st.error().message);
    }
    bool stop;
    uint64_t lines;
    {
      std::lock_guard lk(mu_);
      batch.swap(buf_);
      lines = buf_lines_;
      buf_lines_ = 0;
      stop = stopping_;
    }
    write_all(out_.get(), batch);
    written_.fetch_add(lines, std::memory_order_relaxed);
    batch.clear();
    if (batch.capacity() > (1u << 20)) batch.shrink_to_fit();  // a burst's buffer is not kept
    if (stop) return;
  }
}

}  // namespace netsteer::relay
