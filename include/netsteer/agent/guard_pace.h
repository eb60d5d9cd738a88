// When the deferred tc guard attacher may take rtnl for a link. A tcx attach holds rtnl through an
// RCU grace period, and an enrol needs rtnl for its rules and routes, so a link made beside an enrol
// puts the grace period back on the enrol's (the pod start-up) path. This is the decision alone:
// it is given every time point (no clock, no lock, no thread), so a unit test can drive it through
// a pace of pods without sleeping. GuardAttacher owns one under its pace mutex.
//
// The rules:
// - Never while an enrol is in flight.
// - At a quiet moment: no enrol finished in the last `quiet` (starts at the configured period; it
//   doubles, up to 1 s, after an attempt an enrol met, and halves back after one none met).
// - The pace: the next enrol is due the shortest of the last 4 gaps between enrol starts (of those
//   seen, from the second enrol on) after the last start. A link is expected to take the longest
//   of the last 4 link times (20 ms before any is measured).
// - At a quiet moment, no link starts that would not end 10 ms before the next enrol is due. So
//   from the second pod of a stream on, a link no longer starts at a quiet moment the next pod
//   would meet (the first version waited for 4 gaps, and the ADDs of pods 2-5 met the links).
// - In a window: once 4 gaps are known, pods arriving at a steady pace leave one right after each
//   enrol, and a link may start in it when it ends 10 ms before the next enrol is due. Windows turn
//   off after a link made in one met an enrol, and on again after a link made at a quiet moment
//   met none.
// - No enrol yet, or the next one overdue (the pods stopped coming): the quiet period alone decides.
// Without the pace (`--guard-pace off`, the attacher before it learned one), the quiet period alone
// decides always.
#pragma once

#include <array>
#include <chrono>

namespace netsteer::agent {

class GuardPace {
 public:
  using Clock = std::chrono::steady_clock;
  using TimePoint = Clock::time_point;
  static constexpr int kKept = 4;  // gaps and link times the pace is learned from
  static constexpr std::chrono::milliseconds kMargin{10};
  static constexpr std::chrono::milliseconds kUnmeasuredLink{20};
  static constexpr std::chrono::milliseconds kMaxQuiet{1000};

  explicit GuardPace(std::chrono::milliseconds quiet, bool pace = true);

  void enrol_started(TimePoint now);
  void enrol_finished(TimePoint now);
  void link_took(Clock::duration d);

  // Whether a link may start now (the rules above).
  bool may_link(TimePoint now) const;
  // Whether now is inside the quiet period after the last enrol (a link now would be in a window).
  bool in_window(TimePoint now) const;
  // When may_link can next turn true without an enrol finishing (which wakes the attacher anyway).
  TimePoint recheck_at(TimePoint now) const;
  // When the next enrol is due by the pace; the epoch while there is no pace yet.
  TimePoint next_due() const;

  // One interface's attempt ended. met: an enrol came in while a link was made; in_window: its last
  // link was made in a window; yielded: it stopped early to let an enrol have rtnl.
  struct Change {
    bool windows_off = false;    // windows just turned off
    bool quiet_changed = false;  // the quiet period doubled or halved
  };
  Change attempt_ended(bool met, bool in_window, bool yielded);

  std::chrono::milliseconds quiet() const { return quiet_; }
  bool windows() const { return windows_; }
  int in_flight() const { return in_flight_; }

 private:
  bool fits(TimePoint now) const;
  std::chrono::milliseconds base_quiet_, quiet_;
  bool pace_;
  int in_flight_ = 0;
  TimePoint last_enrol_{};  // when the last enrol finished
  TimePoint last_start_{};
  std::array<Clock::duration, kKept> gaps_{};
  int gaps_seen_ = 0;
  std::array<Clock::duration, kKept> link_times_{};
  int links_seen_ = 0;
  bool windows_ = true;
};

}  // namespace netsteer::agent
