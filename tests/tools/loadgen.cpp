// netsteer_loadgen: the test load for upgrades and crashes (tests/privileged/test_upgrade.py).
//
//   netsteer_loadgen server PORT
//       dual-stack echo server (epoll); prints "ready"; on SIGTERM prints {"accepted":N} and exits.
//   netsteer_loadgen client IP PORT RATE STREAMS SECONDS
//       RATE short connections per second (connect, 64-byte message, its echo, close) and STREAMS
//       long connections that send a deterministic byte pattern for SECONDS, check every echoed
//       byte, then half-close and expect the echo of everything. Prints one JSON summary:
//       {"short_ok","short_failed","streams_ok","streams_broken","stream_bytes","errors":{...}}
//
// Single-threaded and non-blocking, so the rate is what it says on a loaded 2-core host.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

uint8_t pattern_byte(uint64_t i, uint32_t seed) { return static_cast<uint8_t>((i * 7 + 3 + seed) % 251); }


// ---- server -----------------------------------------------------------------------------------

struct EchoConn {
  int fd;
  std::string pending;  // bytes read but not yet written back
  bool eof = false;
};

int server(int port) {
  int l = ::socket(AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1, zero = 0;
  ::setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  ::setsockopt(l, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
  sockaddr_in6 a{};
  a.sin6_family = AF_INET6;
  a.sin6_port = htons(static_cast<uint16_t>(port));
  if (::bind(l, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0 || ::listen(l, 4096) < 0) {
    std::perror("bind/listen");
    return 1;
  }
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigprocmask(SIG_BLOCK, &set, nullptr);
  int sfd = ::signalfd(-1, &set, SFD_CLOEXEC);
  int ep = ::epoll_create1(EPOLL_CLOEXEC);
  epoll_event ev{EPOLLIN, {.fd = l}};
  ::epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev);
  ev.data.fd = sfd;
  ::epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev);
  std::map<int, EchoConn> conns;
  uint64_t accepted = 0;
  std::printf("ready\n");
  std::fflush(stdout);
  auto close_conn = [&](int fd) {
    ::close(fd);
    conns.erase(fd);
  };
  char buf[65536];
  for (;;) {
    epoll_event evs[256];
    int n = ::epoll_wait(ep, evs, 256, -1);
    for (int i = 0; i < n; ++i) {
      int fd = evs[i].data.fd;
      if (fd == sfd) {
        std::printf("{\"accepted\": %llu}\n", static_cast<unsigned long long>(accepted));
        return 0;
      }
      if (fd == l) {
        for (;;) {
          int c = ::accept4(l, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (c < 0) break;
          ++accepted;
          conns[c] = EchoConn{c, {}, false};
          epoll_event cev{EPOLLIN | EPOLLOUT | EPOLLET | EPOLLRDHUP, {.fd = c}};
          ::epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
        }
        continue;
      }
      auto it = conns.find(fd);
      if (it == conns.end()) continue;
      EchoConn& c = it->second;
      bool dead = false;
      for (;;) {  // edge-triggered: read and write until both would block
        bool progress = false;
        if (!c.pending.empty()) {
          ssize_t w = ::send(fd, c.pending.data(), c.pending.size(), MSG_NOSIGNAL);
          if (w > 0) {
            c.pending.erase(0, static_cast<size_t>(w));
            progress = true;
          } else if (w < 0 && errno != EAGAIN) {
            dead = true;
            break;
          }
        }
        if (!c.eof && c.pending.size() < (1 << 20)) {
          ssize_t r = ::recv(fd, buf, sizeof buf, 0);
          if (r > 0) {
            c.pending.append(buf, static_cast<size_t>(r));
            progress = true;
          } else if (r == 0) {
            c.eof = true;
            progress = true;
          } else if (errno != EAGAIN) {
            dead = true;
            break;
          }
        }
        if (c.eof && c.pending.empty()) {
          dead = true;  // everything echoed: close (the client sees EOF after the echo)
          break;
        }
        if (!progress) break;
      }
      if (dead) close_conn(fd);
    }
  }
}

// ---- client -----------------------------------------------------------------------------------

struct Conn {
  enum Kind { kShort, kStream } kind;
  int fd = -1;
  uint32_t seed = 0;
  bool connected = false, half_closed = false;
  uint64_t sent = 0, received = 0;
  Clock::time_point deadline;
};

struct Stats {
  uint64_t short_ok = 0, short_failed = 0, streams_ok = 0, streams_broken = 0, stream_bytes = 0;
  std::map<std::string, uint64_t> errors;
};

constexpr size_t kShortLen = 64;
constexpr size_t kStreamChunk = 4096;
constexpr double kStreamBytesPerSec = 512 * 1024;  // per stream: long-lived, not a bulk test

int client(const char* ip, int port, double rate, int streams, double seconds) {
  sockaddr_storage ss{};
  socklen_t slen;
  if (std::strchr(ip, ':')) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(static_cast<uint16_t>(port));
    inet_pton(AF_INET6, ip, &a->sin6_addr);
    slen = sizeof *a;
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(static_cast<uint16_t>(port));
    inet_pton(AF_INET, ip, &a->sin_addr);
    slen = sizeof *a;
  }
  int ep = ::epoll_create1(EPOLL_CLOEXEC);
  std::map<int, std::unique_ptr<Conn>> conns;
  Stats st;
  uint32_t next_seed = 1;
  auto fail = [&](Conn& c, const std::string& why) {
    (c.kind == Conn::kShort ? st.short_failed : st.streams_broken)++;
    st.errors[(c.kind == Conn::kShort ? "short: " : "stream: ") + why]++;
    ::close(c.fd);
    conns.erase(c.fd);
  };
  // Checks r received bytes against the connection's pattern; a mismatch fails (and closes) it.
  auto echoed = [&](Conn& c, const char* data, ssize_t r) {
    for (ssize_t k = 0; k < r; ++k)
      if (static_cast<uint8_t>(data[k]) != pattern_byte(c.received + static_cast<uint64_t>(k), c.seed)) {
        fail(c, "echo mismatch");
        return false;
      }
    c.received += static_cast<uint64_t>(r);
    return true;
  };
  auto open_conn = [&](Conn::Kind kind) {
    int fd = ::socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    auto c = std::make_unique<Conn>();
    c->kind = kind;
    c->fd = fd;
    c->seed = next_seed++;
    c->deadline = Clock::now() + std::chrono::seconds(kind == Conn::kShort ? 10 : 3600);
    int r = ::connect(fd, reinterpret_cast<sockaddr*>(&ss), slen);
    Conn& ref = *c;
    conns[fd] = std::move(c);
    if (r < 0 && errno != EINPROGRESS) return fail(ref, std::string("connect: ") + std::strerror(errno));
    epoll_event ev{EPOLLIN | EPOLLOUT | EPOLLRDHUP, {.fd = fd}};
    ::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
  };
  auto start = Clock::now();
  auto end = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  for (int i = 0; i < streams; ++i) open_conn(Conn::kStream);
  uint64_t started_short = 0;
  bool finishing = false;
  char buf[65536];
  std::vector<uint8_t> out(kStreamChunk);
  while (!conns.empty() || Clock::now() < end) {
    auto now = Clock::now();
    if (now < end) {
      double due = rate * std::chrono::duration<double>(now - start).count();
      while (started_short < static_cast<uint64_t>(due)) {
        open_conn(Conn::kShort);
        ++started_short;
      }
    } else if (!finishing) {
      finishing = true;  // streams: half-close, then expect the rest of the echo and EOF
      for (auto& [fd, c] : conns)
        if (c->kind == Conn::kStream && c->connected) {
          ::shutdown(fd, SHUT_WR);
          c->half_closed = true;
          c->deadline = now + std::chrono::seconds(20);
          epoll_event ev{EPOLLIN | EPOLLRDHUP, {.fd = fd}};
          ::epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
        }
    }
    epoll_event evs[256];
    int n = ::epoll_wait(ep, evs, 256, 2);
    for (int i = 0; i < n; ++i) {
      auto it = conns.find(evs[i].data.fd);
      if (it == conns.end()) continue;
      Conn& c = *it->second;
      if (!c.connected) {
        int err = 0;
        socklen_t el = sizeof err;
        ::getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) {
          fail(c, std::string("connect: ") + std::strerror(err));
          continue;
        }
        c.connected = true;
        if (c.kind == Conn::kStream) {  // from now on sends happen on the tick below
          epoll_event ev{EPOLLIN | EPOLLRDHUP, {.fd = c.fd}};
          ::epoll_ctl(ep, EPOLL_CTL_MOD, c.fd, &ev);
        }
      }
      if (c.kind == Conn::kShort) {
        if (c.sent < kShortLen && (evs[i].events & EPOLLOUT)) {
          for (size_t k = 0; k < kShortLen; ++k) out[k] = pattern_byte(k, c.seed);
          ssize_t w = ::send(c.fd, out.data() + c.sent, kShortLen - c.sent, MSG_NOSIGNAL);
          if (w < 0 && errno != EAGAIN) {
            fail(c, std::string("send: ") + std::strerror(errno));
            continue;
          }
          if (w > 0) c.sent += static_cast<uint64_t>(w);
          if (c.sent == kShortLen) {
            epoll_event ev{EPOLLIN | EPOLLRDHUP, {.fd = c.fd}};
            ::epoll_ctl(ep, EPOLL_CTL_MOD, c.fd, &ev);
          }
        }
        if (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
          ssize_t r = ::recv(c.fd, buf, sizeof buf, 0);
          if (r < 0 && errno == EAGAIN) continue;
          if (r <= 0) {
            fail(c, r == 0 ? "eof before the echo" : std::string("recv: ") + std::strerror(errno));
            continue;
          }
          if (!echoed(c, buf, r)) continue;
          if (c.received == kShortLen) {
            ++st.short_ok;
            ::close(c.fd);
            conns.erase(c.fd);
          }
        }
      } else {
        if (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
          ssize_t r = ::recv(c.fd, buf, sizeof buf, 0);
          if (r < 0 && errno == EAGAIN) continue;
          if (r < 0) {
            fail(c, std::string("recv: ") + std::strerror(errno));
            continue;
          }
          if (r == 0) {
            if (c.half_closed && c.received == c.sent) {
              ++st.streams_ok;
              st.stream_bytes += c.received;
              ::close(c.fd);
              conns.erase(c.fd);
            } else {
              fail(c, "eof before every byte came back");
            }
            continue;
          }
          (void)echoed(c, buf, r);
        }
      }
    }
    // Streams send at their rate, with at most 256 KiB not yet echoed.
    now = Clock::now();
    if (!finishing) {
      uint64_t budget = static_cast<uint64_t>(kStreamBytesPerSec * std::chrono::duration<double>(now - start).count());
      std::vector<std::pair<Conn*, std::string>> broken;
      for (auto& [fd, c] : conns) {
        if (c->kind != Conn::kStream || !c->connected || c->half_closed) continue;
        while (c->sent < budget && c->sent < c->received + (256 << 10)) {
          for (size_t k = 0; k < kStreamChunk; ++k) out[k] = pattern_byte(c->sent + k, c->seed);
          ssize_t w = ::send(fd, out.data(), kStreamChunk, MSG_NOSIGNAL);
          if (w < 0) {
            if (errno != EAGAIN) broken.emplace_back(c.get(), std::string("send: ") + std::strerror(errno));
            break;
          }
          c->sent += static_cast<uint64_t>(w);
        }
      }
      for (auto& [c, why] : broken) fail(*c, why);
    }
    // Deadlines (a connection that hangs is a failure, not a wait).
    std::vector<Conn*> late;
    for (auto& [fd, c] : conns)
      if (now > c->deadline) late.push_back(c.get());
    for (Conn* c : late) fail(*c, "timeout");
    if (finishing && Clock::now() > end + std::chrono::seconds(30)) break;
  }
  double secs = std::chrono::duration<double>(Clock::now() - start).count();
  std::printf("{\"short_ok\": %llu, \"short_failed\": %llu, \"streams_ok\": %llu, \"streams_broken\": %llu, "
              "\"stream_bytes\": %llu, \"seconds\": %.2f, \"errors\": {",
              static_cast<unsigned long long>(st.short_ok), static_cast<unsigned long long>(st.short_failed),
              static_cast<unsigned long long>(st.streams_ok), static_cast<unsigned long long>(st.streams_broken),
              static_cast<unsigned long long>(st.stream_bytes), secs);
  bool first = true;
  for (const auto& [k, v] : st.errors) {
    std::printf("%s\"%s\": %llu", first ? "" : ", ", k.c_str(), static_cast<unsigned long long>(v));
    first = false;
  }
  std::printf("}}\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  if (argc == 3 && std::strcmp(argv[1], "server") == 0) return server(std::atoi(argv[2]));
  if (argc == 7 && std::strcmp(argv[1], "client") == 0)
    return client(argv[2], std::atoi(argv[3]), std::atof(argv[4]), std::atoi(argv[5]), std::atof(argv[6]));
  std::fprintf(stderr, "usage: %s server PORT | client IP PORT RATE STREAMS SECONDS\n", argv[0]);
  return 2;
}
