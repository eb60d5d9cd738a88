#include "netsteer/agent/guard_pace.h"

#include <algorithm>

namespace netsteer::agent {

GuardPace::GuardPace(std::chrono::milliseconds quiet, bool pace) : base_quiet_(quiet), quiet_(quiet), pace_(pace) {}

void GuardPace::enrol_started(TimePoint now) {
  in_flight_++;
  if (last_start_ != TimePoint{}) gaps_[gaps_seen_++ % kKept] = now - last_start_;
  last_start_ = now;
}

void GuardPace::enrol_finished(TimePoint now) {
  in_flight_--;
  last_enrol_ = now;
}

void GuardPace::link_took(Clock::duration d) { link_times_[links_seen_++ % kKept] = d; }

GuardPace::TimePoint GuardPace::next_due() const {
  if (!pace_ || gaps_seen_ == 0) return {};
  return last_start_ + *std::min_element(gaps_.begin(), gaps_.begin() + std::min(gaps_seen_, kKept));
}

bool GuardPace::fits(TimePoint now) const {
  auto due = next_due();
  if (due == TimePoint{} || now > due) return true;  // no pace yet, or the pods stopped coming
  // The margin: the pace is a kubelet's, not a clock's, and a grace period varies.
  const auto link = links_seen_ ? *std::max_element(link_times_.begin(), link_times_.end())
                                : Clock::duration(kUnmeasuredLink);
  return now + link + kMargin <= due;
}

bool GuardPace::in_window(TimePoint now) const { return now - last_enrol_ < quiet_; }

bool GuardPace::may_link(TimePoint now) const {
  if (in_flight_ != 0 || !fits(now)) return false;
  if (!in_window(now)) return true;  // a quiet moment
  auto due = next_due();
  return windows_ && gaps_seen_ >= kKept && due != TimePoint{} && now <= due;  // a window in the pace
}

GuardPace::TimePoint GuardPace::recheck_at(TimePoint now) const {
  // The end of the quiet period, or once the next enrol is overdue (the pace no longer holds).
  auto until = std::max(last_enrol_ + quiet_, next_due() + std::chrono::milliseconds(1));
  return in_flight_ || until <= now ? now + quiet_ : until;
}

GuardPace::Change GuardPace::attempt_ended(bool met, bool in_window, bool yielded) {
  Change c;
  auto was = quiet_;
  // An enrol that came in while a link was being made waited out a grace period: pods are arriving
  // closer together than the quiet period, so the guards wait for the burst to end.
  quiet_ = met ? std::min(quiet_ * 2, std::max(kMaxQuiet, base_quiet_)) : std::max(quiet_ / 2, base_quiet_);
  c.quiet_changed = quiet_ != was;
  c.windows_off = met && in_window && windows_;
  if (c.windows_off)
    windows_ = false;
  else if (!met && !in_window && !yielded)
    windows_ = true;
  return c;
}

}  // namespace netsteer::agent
