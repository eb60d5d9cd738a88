#include "netsteer/common/event_loop.h"

#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <cstring>
#include <latch>

#include "netsteer/common/log.h"

namespace netsteer {

Status EventLoop::start(std::chrono::milliseconds tick, Callbacks cb) {
  cb_ = std::move(cb);
  epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll_) return Error::from_errno(errno, "epoll_create1");
  wake_.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!wake_) return Error::from_errno(errno, "eventfd");
  timer_.reset(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
  if (!timer_) return Error::from_errno(errno, "timerfd_create");
  timespec period{static_cast<time_t>(tick.count() / 1000), static_cast<long>(tick.count() % 1000) * 1000000};
  itimerspec its{period, period};
  if (::timerfd_settime(timer_.get(), 0, &its, nullptr) < 0) return Error::from_errno(errno, "timerfd_settime");
  NS_TRY_STATUS(ctl(EPOLL_CTL_ADD, wake_.get(), EPOLLIN, &wake_tag_));
  NS_TRY_STATUS(ctl(EPOLL_CTL_ADD, timer_.get(), EPOLLIN, &timer_tag_));
  thread_ = log::start_thread(name_, [this] { run(); });
  return {};
}

void EventLoop::stop() {
  if (!thread_.joinable()) return;
  post([this] { stopping_ = true; });
  thread_.join();
}

void EventLoop::post(std::function<void()> fn) {
  {
    std::lock_guard lk(mu_);
    cmds_.push_back(std::move(fn));
  }
  uint64_t one = 1;
  (void)!::write(wake_.get(), &one, sizeof one);
}

void EventLoop::call(const std::function<void()>& fn) {
  std::latch done(1);
  post([&] {
    fn();
    done.count_down();
  });
  done.wait();
}

Status EventLoop::ctl(int op, int fd, uint32_t events, void* ptr) {
  epoll_event ev{};
  ev.events = events;
  ev.data.ptr = ptr;
  if (::epoll_ctl(epoll_.get(), op, fd, &ev) < 0) return Error::from_errno(errno, "epoll_ctl");
  return {};
}

void EventLoop::forget(int fd) { ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr); }

void EventLoop::run_commands() {
  uint64_t v;
  (void)!::read(wake_.get(), &v, sizeof v);
  std::deque<std::function<void()>> cmds;
  {
    std::lock_guard lk(mu_);
    cmds.swap(cmds_);
  }
  for (auto& c : cmds) c();
}

void EventLoop::run() {
  epoll_event evs[256];
  while (!stopping_) {
    int n = ::epoll_wait(epoll_.get(), evs, 256, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      spdlog::critical("{}: epoll_wait: {}", name_, std::strerror(errno));
      return;
    }
    ++batch_;
    for (int i = 0; i < n; ++i) {
      void* p = evs[i].data.ptr;
      if (p == &wake_tag_) {
        run_commands();
      } else if (p == &timer_tag_) {
        uint64_t v;
        (void)!::read(timer_.get(), &v, sizeof v);
        if (cb_.on_tick) cb_.on_tick();
      } else {
        cb_.dispatch(p, evs[i].events);
      }
    }
    if (cb_.after_batch) cb_.after_batch();
  }
}

}  // namespace netsteer
