// fd ownership: every fd that arrives is owned (and closed) whatever is wrong with the packet.
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>

#include "netsteer/agent/control.h"
#include "netsteer/common/unique_fd.h"
#include "netsteer/netns/netns.h"
#include "netsteer/protocol/channel.h"

using namespace netsteer;
using namespace netsteer::protocol;

namespace {

size_t open_fds() {
  size_t n = 0;
  DIR* d = ::opendir("/proc/self/fd");
  while (dirent* e = ::readdir(d))
    if (e->d_name[0] != '.') ++n;
  ::closedir(d);
  return n - 1;  // the DIR's own fd
}

struct Pair {
  SeqpacketChannel a, b;
  Pair() {
    int sv[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
    a = SeqpacketChannel(UniqueFd(sv[0]));
    b = SeqpacketChannel(UniqueFd(sv[1]));
  }
};

}  // namespace

TEST(UniqueFd, ClosesOnDestructionAndMoves) {
  size_t base = open_fds();
  int raw;
  {
    UniqueFd f(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    raw = f.get();
    ASSERT_GE(raw, 0);
    UniqueFd g(std::move(f));
    EXPECT_FALSE(f.valid());
    EXPECT_EQ(g.get(), raw);
    EXPECT_EQ(open_fds(), base + 1);
  }
  EXPECT_EQ(open_fds(), base);
  UniqueFd h(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  int r = h.release();
  EXPECT_FALSE(h.valid());
  EXPECT_EQ(open_fds(), base + 1);
  ::close(r);
}

TEST(Channel, FdsAreOwnedAndCloexec) {
  Pair p;
  size_t base = open_fds();
  {
    UniqueFd f(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    ASSERT_TRUE(p.a.send("{}", {f.get(), f.get()}).ok());
  }
  {
    auto pk = p.b.recv(kMaxMessageSize);
    ASSERT_TRUE(pk.ok());
    EXPECT_EQ(pk->data, "{}");
    ASSERT_EQ(pk->fds.size(), 2u);
    EXPECT_FALSE(pk->ctrl_truncated);
    EXPECT_TRUE(::fcntl(pk->fds[0].get(), F_GETFD) & FD_CLOEXEC);
    EXPECT_EQ(open_fds(), base + 2);
  }
  EXPECT_EQ(open_fds(), base);
}

TEST(Channel, TooManyFdsIsControlTruncationAndLeaksNothing) {
  Pair p;
  size_t base = open_fds();
  {
    UniqueFd f(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    ASSERT_TRUE(p.a.send("{}", std::vector<int>(12, f.get())).ok());  // the limit is 8
  }
  {
    auto pk = p.b.recv(kMaxMessageSize);
    ASSERT_TRUE(pk.ok());
    EXPECT_TRUE(pk->ctrl_truncated);
  }
  EXPECT_EQ(open_fds(), base);
}

TEST(Channel, OversizedPacketIsTruncated) {
  Pair p;
  std::string big(kMaxMessageSize + 100, 'x');
  ASSERT_TRUE(p.a.send(big).ok());
  auto pk = p.b.recv(kMaxMessageSize);
  ASSERT_TRUE(pk.ok());
  EXPECT_TRUE(pk->truncated);
}

class HandlerTest : public ::testing::Test {
 protected:
  netns::NetnsExecutor exec{1};
  agent::EnrolmentManager mgr{exec};
  agent::RequestHandler handler{mgr, nullptr};

  Reply handle_with(const std::string& data, std::vector<UniqueFd> fds) {
    Packet pk;
    pk.data = data;
    pk.fds = std::move(fds);
    return handler.handle(pk);
  }
};

constexpr const char* kAdd = R"({"type":"add","version":1,"pod":{"uid":"p1"}})";

TEST_F(HandlerTest, BadFdsAnsweredWithErrorsAndClosed) {
  size_t base = open_fds();
  struct Case {
    const char* what;
    std::vector<const char*> paths;
    const char* expect;
  } cases[] = {
      {"no fd", {}, "exactly one netns fd"},
      {"two fds", {"/proc/self/ns/net", "/proc/self/ns/net"}, "got 2"},
      {"regular file", {"/dev/null"}, "not a namespace"},
      {"pid namespace", {"/proc/self/ns/pid"}, "not a network namespace"},
      {"own netns", {"/proc/self/ns/net"}, "own (host) network namespace"},
  };
  for (const auto& c : cases) {
    std::vector<UniqueFd> fds;
    for (const char* path : c.paths) fds.emplace_back(::open(path, O_RDONLY | O_CLOEXEC));
    Reply r = handle_with(kAdd, std::move(fds));
    EXPECT_FALSE(r.ok) << c.what;
    EXPECT_NE(r.error.find(c.expect), std::string::npos) << c.what << ": " << r.error;
    EXPECT_EQ(open_fds(), base) << "fd leaked on " << c.what;
  }
  EXPECT_EQ(mgr.size(), 0u);
}

TEST_F(HandlerTest, FramingErrorsAndFdsOnOtherMessages) {
  size_t base = open_fds();
  {
    Packet pk;
    pk.truncated = true;
    pk.fds.emplace_back(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    Reply r = handler.handle(pk);
    EXPECT_FALSE(r.ok);
    EXPECT_NE(r.error.find("too large"), std::string::npos);
  }
  {
    Packet pk;
    pk.ctrl_truncated = true;
    pk.data = kAdd;
    Reply r = handler.handle(pk);
    EXPECT_NE(r.error.find("truncated control data"), std::string::npos);
  }
  std::vector<UniqueFd> fds;
  fds.emplace_back(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  Reply r = handle_with(R"({"type":"list","version":1})", std::move(fds));
  EXPECT_NE(r.error.find("carries no fds"), std::string::npos);
  EXPECT_FALSE(handle_with("{garbage", {}).ok);
  Reply del = handle_with(R"({"type":"del","version":1,"uid":"ghost"})", {});
  EXPECT_FALSE(del.ok);
  EXPECT_NE(del.error.find("unknown pod"), std::string::npos);
  EXPECT_EQ(open_fds(), base);
}

TEST_F(HandlerTest, HelloAndListAnswer) {
  Reply h = handle_with(R"({"type":"hello","version":1})", {});
  EXPECT_TRUE(h.ok);
  EXPECT_EQ(h.data["version"], 1);
  Reply l = handle_with(R"({"type":"list","version":1})", {});
  EXPECT_TRUE(l.ok);
  EXPECT_TRUE(l.data["pods"].is_array());
}

// A listener that never accepts (a stuck or flooded agent): once its queue is full, connect waits
// no longer than the caller's deadline and says what happened, instead of hanging the CNI plugin.
TEST(Channel, ConnectToAFullQueueTimesOut) {
  std::string path = "/tmp/netsteer-unit-" + std::to_string(::getpid()) + ".sock";
  auto l = listen_seqpacket(path, 0);
  ASSERT_TRUE(l.ok()) << l.error().message;
  std::vector<SeqpacketChannel> queued;
  Result<SeqpacketChannel> c = Error::msg("not tried", EINVAL);
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 8; ++i) {
    c = SeqpacketChannel::connect(path, std::chrono::milliseconds(200));
    if (!c.ok()) break;
    queued.push_back(std::move(*c));
  }
  auto waited = std::chrono::steady_clock::now() - t0;
  ASSERT_FALSE(c.ok()) << "8 connects fitted a backlog-0 queue";
  EXPECT_EQ(c.error().code, ETIMEDOUT) << c.error().message;
  EXPECT_NE(c.error().message.find("accept queue"), std::string::npos) << c.error().message;
  EXPECT_GE(waited, std::chrono::milliseconds(150));
  EXPECT_LT(waited, std::chrono::seconds(5));
  ::unlink(path.c_str());
}
