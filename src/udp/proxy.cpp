#include <net/if.h>
#include <netinet/in.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <unordered_map>

#include "netsteer/common/event_loop.h"
#include "netsteer/common/log.h"
#include "netsteer/udp/packet.h"
#include "netsteer/udp/udp.h"

namespace netsteer::udp {

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

Status set_int(int fd, int level, int opt, int val, const char* name) {
  if (::setsockopt(fd, level, opt, &val, sizeof val) < 0) return Error::from_errno(errno, name);
  return {};
}

enum class Kind : uint8_t { dns, outbound, inbound };
const char* to_string(Kind k) { return k == Kind::dns ? "dns" : k == Kind::outbound ? "udp outbound" : "udp inbound"; }

struct Endpoint {
  enum Type : uint8_t { kCapture, kUpstream, kReply } type;
  void* obj;
};

struct Session;

// One capture socket of a pod (15053, 15001/udp or 15006/udp).
struct CaptureSocket {
  Endpoint ep{Endpoint::kCapture, this};
  struct PodEntry* pod;
  Kind kind;
  int fd;
  uint16_t port = 0;  // its own port (bound to the wildcard address)
};

struct PodEntry {
  std::shared_ptr<PodUdp> pod;
  std::vector<std::unique_ptr<CaptureSocket>> sockets;
  UniqueFd raw4, raw6;  // IPPROTO_RAW in the pod netns, made on first need
  size_t dns_sessions = 0, udp_flows = 0;
};

// A flow's identity: the pod's capture entry, the kind, and the client's and original destination's
// addresses and ports, compared as bytes. Looked up for every datagram a capture socket reads (every
// inbound datagram), so no string is formatted for it.
struct FlowKey {
  const PodEntry* entry = nullptr;
  Kind kind{};
  IpAddr client_ip, odst_ip;
  uint16_t client_port = 0, odst_port = 0;
  bool operator==(const FlowKey&) const = default;
};

struct FlowKeyHash {
  size_t operator()(const FlowKey& k) const noexcept {
    uint64_t h = 1469598103934665603ull;  // FNV-1a, field by field (no padding bytes)
    auto mix = [&](const void* p, size_t n) {
      for (size_t i = 0; i < n; ++i) h = (h ^ static_cast<const uint8_t*>(p)[i]) * 1099511628211ull;
    };
    mix(&k.entry, sizeof k.entry);
    mix(&k.kind, sizeof k.kind);
    mix(k.client_ip.bytes.data(), k.client_ip.len());
    mix(k.odst_ip.bytes.data(), k.odst_ip.len());
    mix(&k.client_port, sizeof k.client_port);
    mix(&k.odst_port, sizeof k.odst_port);
    return static_cast<size_t>(h);
  }
};

struct Session {
  Endpoint up_ep{Endpoint::kUpstream, this}, reply_ep{Endpoint::kReply, this};
  PodEntry* entry;
  std::shared_ptr<PodUdp> pod;
  Kind kind;
  FlowKey key;
  SockAddr client, odst, target;
  // Outbound/DNS: up is connected to the target, reply is bound to odst and connected to the client.
  // Inbound: up is the delivery socket (bound to the client, connected to the app over lo); no reply.
  UniqueFd up, reply;
  std::unordered_map<uint16_t, int64_t> pending;  // DNS: query id -> when it went upstream
  size_t last_len = 0;                            // the last datagram's size (quoted in ICMP errors)
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
                          capture_graveyard_.clear();
                          pod_graveyard_.clear();
                        }});
  }

  void stop() { loop_.stop(); }

  // Runs fn on the loop thread and waits for it.
  void call(const std::function<void(Loop&)>& fn) {
    loop_.call([&] { fn(*this); });
  }
  // Runs fn on the loop thread, not waiting; before anything posted or called later.
  void post(std::function<void(Loop&)> fn) {
    loop_.post([this, fn = std::move(fn)] { fn(*this); });
  }

  void add_pod(const std::shared_ptr<PodUdp>& pod, PodSockets socks) {
    auto e = std::make_unique<PodEntry>();
    e->pod = pod;
    for (auto [fd, kind] : {std::pair{socks.dns, Kind::dns}, {socks.outbound, Kind::outbound}, {socks.inbound, Kind::inbound}}) {
      if (fd < 0) continue;
      auto c = std::make_unique<CaptureSocket>();
      c->pod = e.get();
      c->kind = kind;
      c->fd = fd;
      SockAddr self;
      self.len = sizeof self.ss;
      if (::getsockname(fd, self.sa(), &self.len) == 0) c->port = self.port();
      if (auto st = watch(fd, &c->ep); !st.ok()) {
        spdlog::error("udp: cannot watch the {} socket of pod {}: {}", to_string(kind), pod->uid, st.error().message);
        continue;
      }
      e->sockets.push_back(std::move(c));
    }
    pods_[pod.get()] = std::move(e);
  }

  // pod == nullptr: every pod's capture sockets (handover: flows go on until idle).
  void release_capture(const PodUdp* pod) {
    for (auto& [p, e] : pods_) {
      if (pod && p != pod) continue;
      for (auto& c : e->sockets) {
        loop_.forget(c->fd);
        c->fd = -1;  // an event for it may still be later in this batch
        capture_graveyard_.push_back(std::move(c));
      }
      e->sockets.clear();
    }
  }

  size_t pending_queries() const {
    size_t n = 0;
    for (const auto& [k, s] : sessions_) n += s->pending.size();
    return n;
  }

  void remove_pod(const PodUdp* pod) {
    netns_.leave(pod->netns);  // this thread must not keep the pod's netns alive
    release_capture(pod);
    std::vector<Session*> victims;
    for (auto& [k, s] : sessions_)
      if (s->pod.get() == pod) victims.push_back(s.get());
    for (Session* s : victims) close_session(*s);
    if (auto it = pods_.find(pod); it != pods_.end()) {
      pod_graveyard_.push_back(std::move(it->second));
      pods_.erase(it);
    }
  }

 private:
  Status watch(int fd, Endpoint* ep) { return loop_.ctl(EPOLL_CTL_ADD, fd, EPOLLIN, ep); }

  void dispatch(Endpoint* ep) {
    switch (ep->type) {
      case Endpoint::kCapture:
        if (auto* c = static_cast<CaptureSocket*>(ep->obj); c->fd >= 0) on_capture(*c);
        break;
      case Endpoint::kUpstream: on_upstream(*static_cast<Session*>(ep->obj)); break;
      case Endpoint::kReply: on_reply_socket(*static_cast<Session*>(ep->obj)); break;
    }
  }

  // A datagram steered to a capture socket: the first of a flow, or (inbound, where no connected
  // socket of ours matches the client's datagrams) every one.
  void on_capture(CaptureSocket& c) {
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
      ssize_t n = ::recvmsg(c.fd, &msg, MSG_DONTWAIT);
      if (n < 0) {
        if (errno == EINTR) continue;
        return;  // EAGAIN, or an error queued on the socket: nothing more to read now
      }
      from.len = msg.msg_namelen;
      auto odst = original_dst(msg);
      // Not steered: addressed to the capture socket itself (127.0.0.1:15001 in the pod, say; the
      // kernel reports that destination too). Forwarded, it would reach the same socket again from
      // a new flow, and so on: one datagram kept a core busy and 1,024 flows open. Dropped instead.
      if (!odst || (odst->port() == c.port && netns_.is_local(c.pod->pod->netns, odst->ip()))) {
        if (c.pod->pod->dns && c.kind == Kind::dns) c.pod->pod->dns->malformed++;
        else c.pod->pod->errors++;
        continue;
      }
      Session* s = session_for(*c.pod, c.kind, plain(from), *odst);
      if (s) forward_up(*s, static_cast<size_t>(n));
    }
  }

  Session* session_for(PodEntry& e, Kind kind, const SockAddr& client, const SockAddr& odst) {
    const auto& pod = e.pod;
    FlowKey key{&e, kind, client.ip(), odst.ip(), client.port(), odst.port()};
    if (auto it = sessions_.find(key); it != sessions_.end()) return it->second.get();
    bool is_dns = kind == Kind::dns;
    size_t& count = is_dns ? e.dns_sessions : e.udp_flows;
    if (count >= (is_dns ? opts_.dns_max_sessions_per_pod : opts_.udp_max_flows_per_pod)) evict_oldest(e, is_dns);
    auto s = std::make_unique<Session>();
    s->entry = &e;
    s->pod = pod;
    s->kind = kind;
    s->key = key;
    s->client = client;
    s->odst = odst;
    s->target = odst;
    if (is_dns && pod->dns && pod->dns->upstream) s->target = *pod->dns->upstream;
    else if (is_dns && opts_.dns_upstream) s->target = *opts_.dns_upstream;
    if (auto st = kind == Kind::inbound ? open_inbound(*s) : open_outbound(*s); !st.ok()) {
      if (is_dns && pod->dns) pod->dns->upstream_errors++;
      else pod->errors++;
      if (int64_t now = now_ms(); now - last_warn_ms_ >= 1000) {  // at most one line a second
        last_warn_ms_ = now;
        log::PodScope scope(pod->uid);
        spdlog::warn("pod {}: {} flow {} -> {}: {}", pod->uid, to_string(kind), client.str(), odst.str(), st.error().message);
      }
      return nullptr;
    }
    ++count;
    if (is_dns) {
      if (pod->dns) {
        pod->dns->sessions++;
        pod->dns->active_sessions++;
      }
    } else {
      (kind == Kind::inbound ? pod->inbound_flows : pod->outbound_flows)++;
      pod->active_flows++;
    }
    Session* raw = s.get();
    sessions_[key] = std::move(s);
    return raw;
  }

  // Sockets are created in the pod netns; the thread stays there for the next flow of the same pod
  // (NetnsCursor: one setns per change of pod, none per flow). Options and binds need no netns.
  // Each carries the agent's mark.
  struct SockSpec {
    UniqueFd* out;
    int family, type, proto;
  };
  Status pod_sockets(const PodUdp& pod, std::initializer_list<SockSpec> specs) {
    NS_TRY_STATUS(netns_.enter(pod.netns));
    for (const auto& sp : specs) {
      sp.out->reset(::socket(sp.family, sp.type | SOCK_NONBLOCK | SOCK_CLOEXEC, sp.proto));
      if (!*sp.out) return Error::from_errno(errno, "socket");
    }
    for (const auto& sp : specs)
      NS_TRY_STATUS(set_int(sp.out->get(), SOL_SOCKET, SO_MARK, static_cast<int>(opts_.mark), "SO_MARK"));
    return {};
  }

  // A burst (answers, or the client's datagrams on the reply socket) must not overflow.
  static void size_rcvbuf(int fd) {
    int rcvbuf = 1 << 20;
    ::setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf);
  }

  // A socket bound to `local` (an address of someone else: transparent) and connected to `peer`.
  Status bind_foreign(int fd, const SockAddr& local, const SockAddr& peer) {
    bool v6 = local.ip().family == AF_INET6;
    NS_TRY_STATUS(set_int(fd, v6 ? SOL_IPV6 : SOL_IP, v6 ? IPV6_TRANSPARENT : IP_TRANSPARENT, 1, "IP_TRANSPARENT"));
    NS_TRY_STATUS(set_int(fd, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR"));
    if (v6) NS_TRY_STATUS(set_int(fd, SOL_IPV6, IPV6_V6ONLY, 1, "IPV6_V6ONLY"));
    if (::bind(fd, local.sa(), local.len) < 0) return Error::from_errno(errno, "bind " + local.str());
    if (::connect(fd, peer.sa(), peer.len) < 0) return Error::from_errno(errno, "connect " + peer.str());
    return {};
  }

  Status open_outbound(Session& s) {
    NS_TRY_STATUS(pod_sockets(*s.pod, {{&s.up, s.target.ip().family, SOCK_DGRAM, 0},
                                       {&s.reply, s.odst.ip().family, SOCK_DGRAM, 0}}));
    size_rcvbuf(s.up.get());
    size_rcvbuf(s.reply.get());
    if (::connect(s.up.get(), s.target.sa(), s.target.len) < 0)
      return Error::from_errno(errno, "connect upstream " + s.target.str());
    // The answer must come from the address and port the app asked (connected resolvers drop
    // anything else): bind the original destination (not local: transparent) and connect the client.
    NS_TRY_STATUS(bind_foreign(s.reply.get(), s.odst, s.client));
    NS_TRY_STATUS(watch(s.up.get(), &s.up_ep));
    NS_TRY_STATUS(watch(s.reply.get(), &s.reply_ep));
    s.last_active = now_ms();
    return {};
  }

  Status open_inbound(Session& s) {
    NS_TRY_STATUS(pod_sockets(*s.pod, {{&s.up, s.client.ip().family, SOCK_DGRAM, 0}}));
    size_rcvbuf(s.up.get());
    // Over lo: sk_lookup tells this delivery from the client's own datagrams by the interface.
    if (::setsockopt(s.up.get(), SOL_SOCKET, SO_BINDTODEVICE, "lo", 3) < 0)
      return Error::from_errno(errno, "SO_BINDTODEVICE lo");
    NS_TRY_STATUS(bind_foreign(s.up.get(), s.client, s.odst));
    NS_TRY_STATUS(watch(s.up.get(), &s.up_ep));
    s.last_active = now_ms();
    return {};
  }

  static void count(std::atomic<uint64_t>& datagrams, std::atomic<uint64_t>& bytes, size_t n) {
    datagrams++;
    bytes += n;
  }

  // buf_[0..n) came from the session's client (outbound: the app; inbound: the remote client).
  void forward_up(Session& s, size_t n) {
    s.last_active = now_ms();
    s.last_len = n;
    if (s.kind == Kind::dns && !note_query(s, n)) return;
    if (s.kind != Kind::dns) count(s.pod->datagrams_up, s.pod->bytes_up, n);
    if (::send(s.up.get(), buf_, n, MSG_DONTWAIT) < 0) failed_send(s);
  }

  void failed_send(Session& s) {
    if (s.kind == Kind::dns && s.pod->dns) s.pod->dns->send_failed++;
    else s.pod->send_failed++;
  }

  bool note_query(Session& s, size_t n) {
    auto h = dns::parse_header({buf_, n});
    auto& d = *s.pod->dns;
    if (!h || h->response) {
      d.malformed++;
      return false;
    }
    d.queries++;
    s.pending[h->id] = s.last_active;
    if (spdlog::should_log(spdlog::level::debug)) {
      log::PodScope scope(s.pod->uid);
      spdlog::debug("pod {}: dns query id {} from {} to {} via {}", s.pod->uid, h->id, s.client.str(), s.odst.str(),
                    s.target.str());
    }
    return true;
  }

  // Outbound UDP (no per-datagram work): moves what `from` holds to the connected `to` in batches
  // (recvmmsg + sendmmsg: two system calls per batch, not two per datagram), at most 256 per call.
  void pump(Session& s, int from, int to, bool up) {
    for (int round = 0; round < 256 / kBatch; ++round) {
      for (int i = 0; i < kBatch; ++i) {
        iovs_[i] = {batch_[i], sizeof batch_[i]};
        msgs_[i] = {};
        msgs_[i].msg_hdr.msg_iov = &iovs_[i];
        msgs_[i].msg_hdr.msg_iovlen = 1;
      }
      int n = ::recvmmsg(from, msgs_, kBatch, MSG_DONTWAIT, nullptr);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (up && (errno == ECONNREFUSED || errno == EHOSTUNREACH || errno == ENETUNREACH)) {
          upstream_error(s, errno);
          continue;
        }
        return;
      }
      uint64_t bytes = 0;
      for (int i = 0; i < n; ++i) {
        iovs_[i].iov_len = msgs_[i].msg_len;
        bytes += msgs_[i].msg_len;
      }
      s.last_active = now_ms();
      if (!up) s.last_len = msgs_[n - 1].msg_len;
      (up ? s.pod->datagrams_down : s.pod->datagrams_up) += static_cast<uint64_t>(n);
      (up ? s.pod->bytes_down : s.pod->bytes_up) += bytes;
      int sent = ::sendmmsg(to, msgs_, static_cast<unsigned>(n), MSG_DONTWAIT);
      if (sent < n) s.pod->send_failed += static_cast<uint64_t>(n - std::max(sent, 0));
      if (n < kBatch) return;
    }
  }

  // Outbound/DNS: the client's next datagrams on the same flow arrive on the reply socket (it
  // matches the 4-tuple).
  void on_reply_socket(Session& s) {
    if (s.kind == Kind::outbound) return pump(s, s.reply.get(), s.up.get(), false);
    for (int i = 0; i < 256 && s.reply; ++i) {
      ssize_t n = ::recv(s.reply.get(), buf_, sizeof buf_, MSG_DONTWAIT);
      if (n < 0) {
        if (errno == EINTR) continue;
        return;
      }
      forward_up(s, static_cast<size_t>(n));
    }
  }

  // Outbound/DNS: the destination answered. Inbound: the app replied to its client.
  void on_upstream(Session& s) {
    if (s.kind == Kind::outbound) return pump(s, s.up.get(), s.reply.get(), true);
    for (int i = 0; i < 256 && s.up; ++i) {
      ssize_t n = ::recv(s.up.get(), buf_, sizeof buf_, MSG_DONTWAIT);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == ECONNREFUSED || errno == EHOSTUNREACH || errno == ENETUNREACH) {
          upstream_error(s, errno);
          continue;
        }
        return;
      }
      s.last_active = now_ms();
      if (s.kind == Kind::dns && !note_answer(s, static_cast<size_t>(n))) continue;
      if (s.kind != Kind::dns) count(s.pod->datagrams_down, s.pod->bytes_down, static_cast<size_t>(n));
      bool ok = s.kind == Kind::inbound ? send_raw(*s.entry, build_udp(s.odst, s.client, {buf_, static_cast<size_t>(n)}), s.client)
                                        : ::send(s.reply.get(), buf_, static_cast<size_t>(n), MSG_DONTWAIT) >= 0;
      if (!ok) failed_send(s);
    }
  }

  bool note_answer(Session& s, size_t n) {
    auto h = dns::parse_header({buf_, n});
    auto& d = *s.pod->dns;
    if (!h || !h->response) {
      d.malformed++;
      return false;
    }
    if (auto it = s.pending.find(h->id); it != s.pending.end()) {
      d.latency.observe(double(s.last_active - it->second) / 1000.0);
      s.pending.erase(it);
    }
    d.answers++;
    count_rcode(d, h->rcode);
    if (spdlog::should_log(spdlog::level::debug)) {
      log::PodScope scope(s.pod->uid);
      spdlog::debug("pod {}: dns answer id {} {} to {}{}", s.pod->uid, h->id, dns::rcode_name(h->rcode), s.client.str(),
                    h->truncated ? " (truncated)" : "");
    }
    return true;
  }

  // An ICMP error for what went upstream (outbound/DNS) or to the app (inbound). Outbound: the app
  // hears it as it would without capture, an ICMP error from the destination.
  void upstream_error(Session& s, int err) {
    if (s.kind == Kind::dns && s.pod->dns) {
      s.pod->dns->upstream_errors++;
      s.pending.clear();  // those queries will not be answered
    } else {
      s.pod->errors++;
    }
    if (s.kind == Kind::inbound) return;  // the kernel already told the client (the app's netns sent it)
    Unreach why = err == ECONNREFUSED ? Unreach::port : err == EHOSTUNREACH ? Unreach::host : Unreach::net;
    if (send_raw(*s.entry, build_icmp_unreach(s.client, s.odst, s.last_len, why), s.client)) s.pod->icmp_reflected++;
    else s.pod->send_failed++;
  }

  // Sends a whole IP packet through the pod's raw socket of its family (made on first use).
  bool send_raw(PodEntry& e, const std::vector<uint8_t>& pkt, const SockAddr& to) {
    bool v4 = to.ip().family == AF_INET;
    UniqueFd& raw = v4 ? e.raw4 : e.raw6;
    if (!raw) {
      // IPPROTO_RAW only sends (the kernel delivers nothing to it): no receive buffer to size.
      if (auto st = pod_sockets(*e.pod, {{&raw, v4 ? AF_INET : AF_INET6, SOCK_RAW, IPPROTO_RAW}}); !st.ok()) {
        raw.reset();
        if (int64_t now = now_ms(); now - last_warn_ms_ >= 1000) {
          last_warn_ms_ = now;
          spdlog::warn("pod {}: raw socket for UDP replies and ICMP errors: {}", e.pod->uid, st.error().message);
        }
        return false;
      }
    }
    SockAddr dst = SockAddr::make(to.ip(), 0);  // IPPROTO_RAW takes no port
    return ::sendto(raw.get(), pkt.data(), pkt.size(), MSG_DONTWAIT, dst.sa(), dst.len) >= 0;
  }

  static void count_rcode(dns::PodDns& p, uint8_t rcode) {
    std::string_view name = dns::rcode_name(rcode);
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
      if (s->kind != Kind::dns) {
        if (now - s->last_active >= opts_.udp_idle_ms) idle.push_back(s.get());
        continue;
      }
      for (auto it = s->pending.begin(); it != s->pending.end();) {
        if (now - it->second >= opts_.dns_query_timeout_ms) {
          if (s->pod->dns) s->pod->dns->upstream_timeouts++;
          if (spdlog::should_log(spdlog::level::debug)) {
            log::PodScope scope(s->pod->uid);
            spdlog::debug("pod {}: dns query id {} from {} to {}: no answer in {} ms", s->pod->uid, it->first,
                          s->client.str(), s->target.str(), opts_.dns_query_timeout_ms);
          }
          it = s->pending.erase(it);
        } else {
          ++it;
        }
      }
      if (s->pending.empty() && now - s->last_active >= opts_.dns_session_idle_ms) idle.push_back(s.get());
    }
    for (Session* s : idle) close_session(*s);
  }

  void evict_oldest(PodEntry& e, bool dns) {
    Session* oldest = nullptr;
    for (auto& [k, s] : sessions_)
      if (s->entry == &e && (s->kind == Kind::dns) == dns && (!oldest || s->last_active < oldest->last_active))
        oldest = s.get();
    if (!oldest) return;
    if (dns && e.pod->dns) e.pod->dns->sessions_evicted++;
    else if (!dns) e.pod->flows_evicted++;
    close_session(*oldest);
  }

  void close_session(Session& s) {
    for (int fd : {s.up.get(), s.reply.get()})
      if (fd >= 0) loop_.forget(fd);
    s.up.reset();
    s.reply.reset();
    if (s.kind == Kind::dns) {
      --s.entry->dns_sessions;
      if (s.pod->dns) s.pod->dns->active_sessions--;
    } else {
      --s.entry->udp_flows;
      s.pod->active_flows--;
    }
    auto it = sessions_.find(s.key);
    if (it != sessions_.end()) {
      graveyard_.push_back(std::move(it->second));  // an event of this batch may still point at it
      sessions_.erase(it);
    }
  }

  Options opts_;
  EventLoop loop_{"udp"};
  netns::NetnsCursor netns_{netns::NetnsHandle::host()};  // flow sockets are born in the pod's netns
  std::unordered_map<const PodUdp*, std::unique_ptr<PodEntry>> pods_;
  std::vector<std::unique_ptr<PodEntry>> pod_graveyard_;
  std::vector<std::unique_ptr<CaptureSocket>> capture_graveyard_;
  std::unordered_map<FlowKey, std::unique_ptr<Session>, FlowKeyHash> sessions_;
  std::vector<std::unique_ptr<Session>> graveyard_;
  int64_t last_warn_ms_ = 0;
  uint8_t buf_[65536];
  static constexpr int kBatch = 16;
  uint8_t batch_[kBatch][65536];
  mmsghdr msgs_[kBatch];
  iovec iovs_[kBatch];
};

Result<std::unique_ptr<Proxy>> Proxy::start(const Options& opts) {
  std::unique_ptr<Proxy> p(new Proxy());
  p->opts_ = opts;
  (void)netns::NetnsHandle::host();  // the loop returns to it after creating flow sockets
  p->loop_ = std::make_unique<Loop>(opts);
  NS_TRY_STATUS(p->loop_->init());
  return p;
}

Proxy::~Proxy() = default;

Status Proxy::add_pod(const std::shared_ptr<PodUdp>& pod, PodSockets socks) {
  if (socks.dns < 0 && socks.outbound < 0 && socks.inbound < 0)
    return Error::msg("pod " + pod->uid + " has no UDP capture socket", EINVAL);
  if (socks.dns >= 0 && !pod->dns) return Error::msg("pod " + pod->uid + ": a DNS socket without DNS counters", EINVAL);
  // Not waited for (one wake-up less on every enrol): the sockets queue what arrives meanwhile.
  loop_->post([pod, socks](Loop& l) { l.add_pod(pod, socks); });
  return {};
}

void Proxy::remove_pod(const std::shared_ptr<PodUdp>& pod) {
  loop_->call([&](Loop& l) { l.remove_pod(pod.get()); });
}

size_t Proxy::pending_queries() {
  size_t n = 0;
  loop_->call([&](Loop& l) { n = l.pending_queries(); });
  return n;
}

void Proxy::stop_accepting() {
  loop_->call([](Loop& l) { l.release_capture(nullptr); });
}

json Proxy::options() const {
  return {{"dns_upstream", opts_.dns_upstream ? opts_.dns_upstream->str() : ""},
          {"dns_query_timeout_ms", opts_.dns_query_timeout_ms},
          {"dns_session_idle_ms", opts_.dns_session_idle_ms},
          {"dns_max_sessions_per_pod", opts_.dns_max_sessions_per_pod},
          {"udp_idle_ms", opts_.udp_idle_ms},
          {"udp_max_flows_per_pod", opts_.udp_max_flows_per_pod}};
}

Totals& Totals::operator+=(const Totals& o) {
#define NS_UDP_ADD(n) n += o.n;
  NS_UDP_COUNTER_FIELDS(NS_UDP_ADD)
#undef NS_UDP_ADD
  active_flows += o.active_flows;
  return *this;
}

json Totals::to_json() const {
  json j;
#define NS_UDP_JSON(n) j[#n] = n;
  NS_UDP_COUNTER_FIELDS(NS_UDP_JSON)
#undef NS_UDP_JSON
  j["active_flows"] = active_flows;
  return j;
}

Totals PodUdp::snapshot() const {
  Totals t;
#define NS_UDP_LOAD(n) t.n = n.load(std::memory_order_relaxed);
  NS_UDP_COUNTER_FIELDS(NS_UDP_LOAD)
#undef NS_UDP_LOAD
  t.active_flows = active_flows.load(std::memory_order_relaxed);
  return t;
}

json PodUdp::to_json() const { return snapshot().to_json(); }

}  // namespace netsteer::udp
