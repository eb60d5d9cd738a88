#include <netinet/in.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <functional>
#include <unordered_map>

#include "netsteer/common/event_loop.h"
#include "netsteer/common/log.h"
#include "netsteer/dns/dns.h"

namespace netsteer::dns {

using nlohmann::json;

namespace {

int64_t now_ms() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

// A v4-mapped address as the plain IPv4 one (a dual-stack socket reports v4 peers mapped).
SockAddr plain(const SockAddr& a) { return SockAddr::make(a.ip().unmapped(), a.port()); }

// The original destination of a datagram steered by sk_lookup (IP(V6)_ORIGDSTADDR).
std::optional<SockAddr> original_dst(msghdr& msg) {
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    SockAddr a;
    if (c->cmsg_level == SOL_IP && c->cmsg_type == IP_ORIGDSTADDR) a.len = sizeof(sockaddr_in);
    else if (c->cmsg_level == SOL_IPV6 && c->cmsg_type == IPV6_ORIGDSTADDR) a.len = sizeof(sockaddr_in6);
    else continue;
    std::memcpy(&a.ss, CMSG_DATA(c), a.len);
    return plain(a);
  }
  return std::nullopt;
}

struct Endpoint {
  enum Kind : uint8_t { kPodSocket, kUpstream, kReply } kind;
  void* obj;
};

struct PodEntry {
  Endpoint ep{Endpoint::kPodSocket, this};
  std::shared_ptr<PodDns> pod;
  int fd;
};

struct Session {
  Endpoint up_ep{Endpoint::kUpstream, this}, reply_ep{Endpoint::kReply, this};
  std::shared_ptr<PodDns> pod;
  std::string key;
  SockAddr client, odst, target;
  UniqueFd up, reply;
  std::unordered_map<uint16_t, int64_t> pending;  // query id -> when it went upstream
  int64_t last_active = 0;
};

}  // namespace

class Proxy::Loop {
 public:
  explicit Loop(const Options& o) : opts_(o) {}
  ~Loop() {
    stop();
    sessions_.clear();
  }

  Status init() {
    return loop_.start(std::chrono::milliseconds(250),
                       {[this](void* p, uint32_t) { dispatch(static_cast<Endpoint*>(p)); }, [this] { on_tick(); },
                        [this] {
                          graveyard_.clear();  // closed in this batch: no event can refer to them now
                          pod_graveyard_.clear();
                        }});
  }

  void stop() { loop_.stop(); }

  // Runs fn on the loop thread and waits for it.
  void call(const std::function<void(Loop&)>& fn) {
    loop_.call([&] { fn(*this); });
  }

  void add_pod(const std::shared_ptr<PodDns>& pod, int fd) {
    auto e = std::make_unique<PodEntry>();
    e->pod = pod;
    e->fd = fd;
    if (auto st = watch(fd, &e->ep); !st.ok()) {
      spdlog::error("dns: cannot watch the 15053 socket of pod {}: {}", pod->uid, st.error().message);
      return;
    }
    pods_.push_back(std::move(e));
  }

  // pod == nullptr: every pod's 15053 socket (handover: sessions go on until idle).
  void release_pods(const PodDns* pod) {
    for (auto it = pods_.begin(); it != pods_.end();) {
      if (!pod || (*it)->pod.get() == pod) {
        loop_.forget((*it)->fd);
        (*it)->fd = -1;  // an event for it may still be later in this batch
        pod_graveyard_.push_back(std::move(*it));
        it = pods_.erase(it);
      } else {
        ++it;
      }
    }
  }

  size_t pending_queries() const {
    size_t n = 0;
    for (const auto& [k, s] : sessions_) n += s->pending.size();
    return n;
  }

  void remove_pod(const PodDns* pod) {
    release_pods(pod);
    std::vector<Session*> victims;
    for (auto& [k, s] : sessions_)
      if (s->pod.get() == pod) victims.push_back(s.get());
    for (Session* s : victims) close_session(*s);
  }

 private:
  Status watch(int fd, Endpoint* ep) { return loop_.ctl(EPOLL_CTL_ADD, fd, EPOLLIN, ep); }

  void dispatch(Endpoint* ep) {
    switch (ep->kind) {
      case Endpoint::kPodSocket:
        if (auto* e = static_cast<PodEntry*>(ep->obj); e->fd >= 0) on_pod_socket(*e);
        break;
      case Endpoint::kUpstream: on_upstream(*static_cast<Session*>(ep->obj)); break;
      case Endpoint::kReply: on_reply_socket(*static_cast<Session*>(ep->obj)); break;
    }
  }

  // A query steered to the pod's 15053 socket: the first of a flow, or one whose session is gone.
  void on_pod_socket(PodEntry& e) {
    for (int i = 0; i < 256; ++i) {
      SockAddr from;
      alignas(cmsghdr) char ctrl[256];
      iovec iov{buf_, sizeof buf_};
      msghdr msg{};
      msg.msg_name = &from.ss;
      msg.msg_namelen = sizeof from.ss;
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = ctrl;
      msg.msg_controllen = sizeof ctrl;
      ssize_t n = ::recvmsg(e.fd, &msg, MSG_DONTWAIT);
      if (n < 0) {
        if (errno == EINTR) continue;
        return;  // EAGAIN, or an error queued on the socket: nothing more to read now
      }
      from.len = msg.msg_namelen;
      auto odst = original_dst(msg);
      if (!odst) {  // not steered (addressed to 15053 itself): nothing to forward to
        e.pod->malformed++;
        continue;
      }
      Session* s = session_for(e.pod, plain(from), *odst);
      if (s) forward(*s, static_cast<size_t>(n));
    }
  }

  Session* session_for(const std::shared_ptr<PodDns>& pod, const SockAddr& client, const SockAddr& odst) {
    std::string key = pod->uid + '|' + client.str() + '|' + odst.str();
    if (auto it = sessions_.find(key); it != sessions_.end()) return it->second.get();
    if (pod->active_sessions.load() >= opts_.max_sessions_per_pod) evict_oldest(pod.get());
    auto s = std::make_unique<Session>();
    s->pod = pod;
    s->key = key;
    s->client = client;
    s->odst = odst;
    s->target = pod->upstream ? *pod->upstream : opts_.upstream ? *opts_.upstream : odst;
    if (auto st = open_sockets(*s); !st.ok()) {
      pod->upstream_errors++;
      if (int64_t now = now_ms(); now - last_warn_ms_ >= 1000) {  // at most one line a second
        last_warn_ms_ = now;
        log::PodScope scope(pod->uid);
        spdlog::warn("pod {}: dns session {} -> {}: {}", pod->uid, client.str(), odst.str(), st.error().message);
      }
      return nullptr;
    }
    pod->sessions++;
    pod->active_sessions++;
    Session* raw = s.get();
    sessions_[key] = std::move(s);
    return raw;
  }

  // Both sockets of a session, born in the pod netns with the agent's mark.
  Status open_sockets(Session& s) {
    int rfam = s.odst.ip().family, ufam = s.target.ip().family;
    {
      NS_TRY(auto scope, netns::ScopedNetns::enter(s.pod->netns, netns::NetnsHandle::host()));
      s.up.reset(::socket(ufam, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
      if (!s.up) return Error::from_errno(errno, "upstream socket");
      s.reply.reset(::socket(rfam, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
      if (!s.reply) return Error::from_errno(errno, "reply socket");
    }
    int mark = static_cast<int>(opts_.mark), one = 1, rcvbuf = 1 << 20;
    for (int fd : {s.up.get(), s.reply.get()}) {
      if (::setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof mark) < 0) return Error::from_errno(errno, "SO_MARK");
      // A burst of answers (or of the client's queries on the reply socket) must not overflow.
      ::setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf);
    }
    if (::connect(s.up.get(), s.target.sa(), s.target.len) < 0)
      return Error::from_errno(errno, "connect upstream " + s.target.str());
    // The answer must come from the address and port the app asked (connected resolvers drop
    // anything else): bind the original destination (not local: transparent) and connect the client.
    bool v6 = rfam == AF_INET6;
    if (::setsockopt(s.reply.get(), v6 ? SOL_IPV6 : SOL_IP, v6 ? IPV6_TRANSPARENT : IP_TRANSPARENT, &one, sizeof one) < 0)
      return Error::from_errno(errno, "IP_TRANSPARENT");
    ::setsockopt(s.reply.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (v6) ::setsockopt(s.reply.get(), SOL_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (::bind(s.reply.get(), s.odst.sa(), s.odst.len) < 0) return Error::from_errno(errno, "bind " + s.odst.str());
    if (::connect(s.reply.get(), s.client.sa(), s.client.len) < 0)
      return Error::from_errno(errno, "connect " + s.client.str());
    NS_TRY_STATUS(watch(s.up.get(), &s.up_ep));
    NS_TRY_STATUS(watch(s.reply.get(), &s.reply_ep));
    s.last_active = now_ms();
    return {};
  }

  // buf_[0..n) is a query of the session's client: send it upstream.
  void forward(Session& s, size_t n) {
    auto h = parse_header({buf_, n});
    if (!h || h->response) {
      s.pod->malformed++;
      return;
    }
    s.pod->queries++;
    s.last_active = now_ms();
    s.pending[h->id] = s.last_active;
    if (spdlog::should_log(spdlog::level::debug)) {
      log::PodScope scope(s.pod->uid);
      spdlog::debug("pod {}: dns query id {} from {} to {} via {}", s.pod->uid, h->id, s.client.str(), s.odst.str(),
                    s.target.str());
    }
    if (::send(s.up.get(), buf_, n, MSG_DONTWAIT) < 0) s.pod->send_failed++;
  }

  // The client's next queries on the same flow arrive on the reply socket (it matches the 4-tuple).
  void on_reply_socket(Session& s) {
    for (int i = 0; i < 256 && s.reply; ++i) {
      ssize_t n = ::recv(s.reply.get(), buf_, sizeof buf_, MSG_DONTWAIT);
      if (n < 0) {
        if (errno == EINTR) continue;
        return;
      }
      forward(s, static_cast<size_t>(n));
    }
  }

  void on_upstream(Session& s) {
    for (int i = 0; i < 256 && s.up; ++i) {
      ssize_t n = ::recv(s.up.get(), buf_, sizeof buf_, MSG_DONTWAIT);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == ECONNREFUSED || errno == EHOSTUNREACH || errno == ENETUNREACH) {
          // An ICMP error for what went upstream: those queries will not be answered.
          s.pod->upstream_errors++;
          s.pending.clear();
          continue;
        }
        return;
      }
      auto h = parse_header({buf_, static_cast<size_t>(n)});
      if (!h || !h->response) {
        s.pod->malformed++;
        continue;
      }
      int64_t now = now_ms();
      s.last_active = now;
      if (auto it = s.pending.find(h->id); it != s.pending.end()) {
        s.pod->latency.observe(double(now - it->second) / 1000.0);
        s.pending.erase(it);
      }
      s.pod->answers++;
      count_rcode(*s.pod, h->rcode);
      if (spdlog::should_log(spdlog::level::debug)) {
        log::PodScope scope(s.pod->uid);
        spdlog::debug("pod {}: dns answer id {} {} to {}{}", s.pod->uid, h->id, rcode_name(h->rcode), s.client.str(),
                      h->truncated ? " (truncated)" : "");
      }
      if (::send(s.reply.get(), buf_, static_cast<size_t>(n), MSG_DONTWAIT) < 0) s.pod->send_failed++;
    }
  }

  static void count_rcode(PodDns& p, uint8_t rcode) {
    std::string_view name = rcode_name(rcode);
#define NS_DNS_COUNT(n) \
  if (name == #n) {     \
    p.n++;              \
    return;             \
  }
    NS_DNS_RCODES(NS_DNS_COUNT)
#undef NS_DNS_COUNT
  }

  void on_tick() {
    int64_t now = now_ms();
    std::vector<Session*> idle;
    for (auto& [k, s] : sessions_) {
      for (auto it = s->pending.begin(); it != s->pending.end();) {
        if (now - it->second >= opts_.query_timeout_ms) {
          s->pod->upstream_timeouts++;
          if (spdlog::should_log(spdlog::level::debug)) {
            log::PodScope scope(s->pod->uid);
            spdlog::debug("pod {}: dns query id {} from {} to {}: no answer in {} ms", s->pod->uid, it->first,
                          s->client.str(), s->target.str(), opts_.query_timeout_ms);
          }
          it = s->pending.erase(it);
        } else {
          ++it;
        }
      }
      if (s->pending.empty() && now - s->last_active >= opts_.session_idle_ms) idle.push_back(s.get());
    }
    for (Session* s : idle) close_session(*s);
  }

  void evict_oldest(PodDns* pod) {
    Session* oldest = nullptr;
    for (auto& [k, s] : sessions_)
      if (s->pod.get() == pod && (!oldest || s->last_active < oldest->last_active)) oldest = s.get();
    if (!oldest) return;
    pod->sessions_evicted++;
    close_session(*oldest);
  }

  void close_session(Session& s) {
    for (int fd : {s.up.get(), s.reply.get()})
      if (fd >= 0) loop_.forget(fd);
    s.up.reset();
    s.reply.reset();
    s.pod->active_sessions--;
    auto it = sessions_.find(s.key);
    if (it != sessions_.end()) {
      graveyard_.push_back(std::move(it->second));  // an event of this batch may still point at it
      sessions_.erase(it);
    }
  }

  Options opts_;
  EventLoop loop_{"dns proxy"};
  std::vector<std::unique_ptr<PodEntry>> pods_, pod_graveyard_;
  std::unordered_map<std::string, std::unique_ptr<Session>> sessions_;
  std::vector<std::unique_ptr<Session>> graveyard_;
  int64_t last_warn_ms_ = 0;
  uint8_t buf_[65536];
};

Result<std::unique_ptr<Proxy>> Proxy::start(const Options& opts) {
  std::unique_ptr<Proxy> p(new Proxy());
  p->opts_ = opts;
  (void)netns::NetnsHandle::host();  // the loop returns to it after creating session sockets
  p->loop_ = std::make_unique<Loop>(opts);
  NS_TRY_STATUS(p->loop_->init());
  return p;
}

Proxy::~Proxy() = default;

Status Proxy::add_pod(const std::shared_ptr<PodDns>& pod, int udp_fd) {
  if (udp_fd < 0) return Error::msg("pod " + pod->uid + " has no DNS socket", EINVAL);
  loop_->call([&](Loop& l) { l.add_pod(pod, udp_fd); });
  return {};
}

void Proxy::remove_pod(const std::shared_ptr<PodDns>& pod) {
  loop_->call([&](Loop& l) { l.remove_pod(pod.get()); });
}

size_t Proxy::pending_queries() {
  size_t n = 0;
  loop_->call([&](Loop& l) { n = l.pending_queries(); });
  return n;
}

void Proxy::stop_accepting() {
  loop_->call([](Loop& l) { l.release_pods(nullptr); });
}

json Proxy::options() const {
  return {{"upstream", opts_.upstream ? opts_.upstream->str() : ""},
          {"query_timeout_ms", opts_.query_timeout_ms},
          {"session_idle_ms", opts_.session_idle_ms},
          {"max_sessions_per_pod", opts_.max_sessions_per_pod}};
}

}  // namespace netsteer::dns
