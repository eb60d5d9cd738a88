// The deferred tc guard's pace decision (GuardPace), driven on made-up time points: no clock, no
// sleep. Each case is a kubelet's pattern of pod starts and what the attacher may do around it.
#include <gtest/gtest.h>

#include "netsteer/agent/guard_pace.h"

using namespace netsteer::agent;
using namespace std::chrono_literals;

namespace {

using TP = GuardPace::TimePoint;
const TP t0 = TP{} + 1h;  // any point after the epoch (the epoch means "never")

// Enrols that start `gap` apart and each take `takes`, the first at `from`; returns when the last
// one finished.
TP enrols(GuardPace& p, int n, TP from, std::chrono::milliseconds gap, std::chrono::milliseconds takes = 1ms) {
  TP end{};
  for (int i = 0; i < n; ++i) {
    p.enrol_started(from + i * gap);
    end = from + i * gap + takes;
    p.enrol_finished(end);
  }
  return end;
}

}  // namespace

TEST(GuardPace, WithoutAPaceALinkWaitsForTheQuietPeriod) {
  GuardPace p(20ms);
  EXPECT_TRUE(p.may_link(t0));  // nothing enrolled yet
  p.enrol_started(t0);
  EXPECT_FALSE(p.may_link(t0 + 500ms)) << "an enrol in flight";
  EXPECT_EQ(p.recheck_at(t0 + 500ms), t0 + 520ms);
  p.enrol_finished(t0 + 2ms);
  EXPECT_EQ(p.next_due(), TP{}) << "one start is no pace";
  EXPECT_FALSE(p.may_link(t0 + 3ms));
  EXPECT_TRUE(p.in_window(t0 + 21ms));
  EXPECT_FALSE(p.may_link(t0 + 21ms));
  EXPECT_EQ(p.recheck_at(t0 + 3ms), t0 + 22ms);
  EXPECT_TRUE(p.may_link(t0 + 22ms));
  EXPECT_FALSE(p.in_window(t0 + 22ms));
}

TEST(GuardPace, ASteadyPaceLeavesAWindowRightAfterEachEnrol) {
  GuardPace p(20ms);
  // Three gaps already say when the next pod is due, but open no window yet.
  TP end = enrols(p, 4, t0, 100ms);
  EXPECT_EQ(p.next_due(), t0 + 400ms);
  EXPECT_FALSE(p.may_link(end + 1ms)) << "a window needs 4 gaps";
  EXPECT_TRUE(p.may_link(end + 20ms)) << "a quiet moment that fits";
  end = enrols(p, 1, t0 + 400ms, 100ms);
  ASSERT_EQ(p.next_due(), t0 + 500ms);
  EXPECT_TRUE(p.may_link(end + 1ms)) << "a 20 ms link ends 10 ms before the next enrol";
  EXPECT_TRUE(p.in_window(end + 1ms));
  // The last start that fits: 500 - 20 (link, unmeasured) - 10 (margin).
  EXPECT_TRUE(p.may_link(t0 + 470ms));
  EXPECT_FALSE(p.may_link(t0 + 471ms)) << "a link started now would still hold rtnl when the next pod comes";
  EXPECT_EQ(p.recheck_at(t0 + 471ms), t0 + 501ms);
  EXPECT_TRUE(p.may_link(t0 + 501ms)) << "the next enrol is overdue and the quiet period is over";
}

TEST(GuardPace, TheLongestMeasuredLinkSetsTheWindow) {
  GuardPace p(20ms);
  TP end = enrols(p, 5, t0, 100ms);  // next due at t0 + 500 ms
  p.link_took(30ms);
  p.link_took(85ms);
  p.link_took(40ms);
  EXPECT_TRUE(p.may_link(end + 1ms));
  EXPECT_TRUE(p.may_link(t0 + 405ms)) << "405 + 85 + 10 = 500";
  EXPECT_FALSE(p.may_link(t0 + 406ms)) << "the 85 ms link, not the last one (40 ms), decides";
  // Four shorter links push the 85 ms one out.
  for (int i = 0; i < 4; ++i) p.link_took(20ms);
  EXPECT_TRUE(p.may_link(t0 + 470ms));
}

TEST(GuardPace, APaceTooFastForALinkLeavesNoWindowAndNoQuietMoment) {
  GuardPace p(20ms);
  TP end = enrols(p, 5, t0, 25ms);  // next due at t0 + 125 ms
  for (TP now = end; now <= t0 + 125ms; now += 1ms) EXPECT_FALSE(p.may_link(now)) << (now - t0).count();
  EXPECT_TRUE(p.may_link(t0 + 126ms)) << "the pods stopped coming";
}

TEST(GuardPace, TheShortestOfTheLastGapsIsThePace) {
  GuardPace p(20ms);
  enrols(p, 4, t0, 200ms);
  enrols(p, 1, t0 + 650ms, 0ms);  // one gap of 50 ms among 200 ms ones
  EXPECT_EQ(p.next_due(), t0 + 700ms);
  enrols(p, 4, t0 + 850ms, 200ms);  // four 200 ms gaps push it out
  EXPECT_EQ(p.next_due(), t0 + 1650ms);
}

TEST(GuardPace, AWindowLinkThatMetAnEnrolTurnsWindowsOffUntilAQuietLinkMeetsNone) {
  GuardPace p(20ms);
  TP end = enrols(p, 5, t0, 100ms);
  ASSERT_TRUE(p.may_link(end + 1ms));
  auto c = p.attempt_ended(/*met=*/true, /*in_window=*/true, /*yielded=*/true);
  EXPECT_TRUE(c.windows_off);
  EXPECT_FALSE(p.windows());
  EXPECT_EQ(p.quiet(), 40ms) << "met: the quiet period doubles";
  EXPECT_FALSE(p.may_link(end + 1ms)) << "no window now";
  // A quiet moment still fits the pace (no enrol for 40 ms, 20 + 10 ms before the next is due).
  EXPECT_TRUE(p.may_link(end + 40ms));
  EXPECT_FALSE(p.attempt_ended(true, true, false).windows_off) << "already off";
  // A yielded attempt at a quiet moment does not turn them back on; a whole one that met none does.
  p.attempt_ended(false, false, true);
  EXPECT_FALSE(p.windows());
  p.attempt_ended(false, false, false);
  EXPECT_TRUE(p.windows());
}

TEST(GuardPace, TheQuietPeriodDoublesUpToOneSecondAndHalvesBack) {
  GuardPace p(20ms);
  std::chrono::milliseconds seen[] = {40ms, 80ms, 160ms, 320ms, 640ms, 1000ms, 1000ms};
  for (auto want : seen) {
    p.attempt_ended(true, false, false);
    EXPECT_EQ(p.quiet(), want);
  }
  EXPECT_FALSE(p.attempt_ended(true, false, false).quiet_changed);
  p.attempt_ended(false, false, false);
  EXPECT_EQ(p.quiet(), 500ms);
  for (int i = 0; i < 10; ++i) p.attempt_ended(false, false, false);
  EXPECT_EQ(p.quiet(), 20ms) << "never below the configured period";
  // A configured period longer than the cap is its own cap.
  GuardPace slow(2000ms);
  slow.attempt_ended(true, false, false);
  EXPECT_EQ(slow.quiet(), 2000ms);
  // The doubled period holds a link back after an enrol.
  p.attempt_ended(true, false, false);
  p.enrol_started(t0);
  p.enrol_finished(t0 + 1ms);
  EXPECT_FALSE(p.may_link(t0 + 30ms));
  EXPECT_TRUE(p.may_link(t0 + 41ms));
}

TEST(GuardPace, OverlappingEnrolsAllHoldTheAttacherBack) {
  GuardPace p(20ms);
  p.enrol_started(t0);
  p.enrol_started(t0 + 1ms);
  p.enrol_finished(t0 + 2ms);
  EXPECT_EQ(p.in_flight(), 1);
  EXPECT_FALSE(p.may_link(t0 + 100ms));
  p.enrol_finished(t0 + 3ms);
  EXPECT_TRUE(p.may_link(t0 + 100ms));
}

TEST(GuardPace, WithoutThePaceTheQuietPeriodAloneDecides) {
  GuardPace p(20ms, /*pace=*/false);
  TP end = enrols(p, 5, t0, 100ms);
  EXPECT_EQ(p.next_due(), TP{});
  EXPECT_FALSE(p.may_link(end + 1ms)) << "no window";
  EXPECT_TRUE(p.may_link(end + 20ms));
  EXPECT_TRUE(p.may_link(t0 + 490ms)) << "no pace to end 10 ms before";
}

TEST(GuardPace, FromTheSecondPodOnAQuietLinkMustEndBeforeTheNextIsDue) {
  // Pods 50 ms apart: the 20 ms quiet period ends 21 ms after an enrol, and a link then (20 ms, plus
  // the margin) would still hold rtnl when the next pod comes. One gap is enough to know that.
  GuardPace p(20ms);
  enrols(p, 1, t0, 0ms);
  EXPECT_TRUE(p.may_link(t0 + 21ms)) << "one pod is no pace: the quiet period decides";
  TP end = enrols(p, 1, t0 + 50ms, 0ms);
  ASSERT_EQ(p.next_due(), t0 + 100ms);
  EXPECT_FALSE(p.may_link(end + 20ms));
  EXPECT_FALSE(p.may_link(t0 + 100ms));
  EXPECT_EQ(p.recheck_at(end + 20ms), t0 + 101ms);
  EXPECT_TRUE(p.may_link(t0 + 101ms)) << "the third pod is overdue";
  // Pods a second apart leave room at every quiet moment.
  GuardPace slow(20ms);
  end = enrols(slow, 2, t0, 1000ms);
  EXPECT_TRUE(slow.may_link(end + 20ms));
}
