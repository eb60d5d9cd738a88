// One thread's epoll loop, shared by the relay workers and the DNS proxy: watched fds carry a
// pointer that is handed back to the dispatch callback; commands posted from other threads run on
// the loop thread (an eventfd wakes it); a timerfd ticks at a fixed period. Objects closed during
// an epoll batch must outlive the batch (an event for them may still be in it): after_batch is
// where the owner frees them.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

#include "netsteer/common/result.h"
#include "netsteer/common/unique_fd.h"

namespace netsteer {

class EventLoop {
 public:
  struct Callbacks {
    std::function<void(void* ptr, uint32_t events)> dispatch;  // a watched fd is ready
    std::function<void()> on_tick;                             // every tick
    std::function<void()> after_batch;                         // after each epoll_wait batch
  };

  explicit EventLoop(std::string name) : name_(std::move(name)) {}
  ~EventLoop() { stop(); }
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  // Creates the epoll, eventfd and timerfd and starts the thread.
  Status start(std::chrono::milliseconds tick, Callbacks cb);
  // Runs what is queued, then ends the thread and joins it (no-op when not running).
  void stop();
  // Runs fn on the loop thread; call() also waits for it (never from the loop thread).
  void post(std::function<void()> fn);
  void call(const std::function<void()>& fn);
  // epoll_ctl on the loop's epoll with `ptr` as the event's data.
  Status ctl(int op, int fd, uint32_t events, void* ptr);
  void forget(int fd);  // EPOLL_CTL_DEL, errors ignored (the fd is about to close)
  // Counts the epoll_wait batches (loop thread only). The events of batch N were collected before
  // anything the loop does while batch() == N: a read made then that found an edge-triggered fd
  // drained makes a later EPOLLIN for that fd in the same batch old news.
  uint64_t batch() const { return batch_; }

 private:
  void run();
  void run_commands();

  std::string name_;
  Callbacks cb_;
  UniqueFd epoll_, wake_, timer_;
  char wake_tag_ = 0, timer_tag_ = 0;  // their addresses tell the two internal fds apart
  std::thread thread_;
  bool stopping_ = false;
  uint64_t batch_ = 0;
  std::mutex mu_;
  std::deque<std::function<void()>> cmds_;
};

}  // namespace netsteer
