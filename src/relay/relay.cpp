#include "netsteer/relay/relay.h"

#include <fcntl.h>
#include <linux/netfilter_ipv4.h>
#include <linux/netfilter_ipv6/ip6_tables.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <sys/timerfd.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <deque>
#include <latch>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>

#include "netsteer/common/accept.h"
#include "netsteer/common/event_loop.h"
#include "netsteer/common/log.h"
#include "netsteer/handoff/proxy_v2.h"
#include "netsteer/relay/access_log.h"
#include "netsteer/relay/http_connect.h"

namespace netsteer::relay {

using nlohmann::json;

const char* to_string(Direction d) {
  switch (d) {
    case Direction::outbound: return "outbound";
    case Direction::inbound: return "inbound";
    case Direction::tunnel: return "tunnel";
  }
  return "?";
}

DirectionTotals& DirectionTotals::operator+=(const DirectionTotals& o) {
#define NS_ADD(n) n += o.n;
  NS_RELAY_COUNTER_FIELDS(NS_ADD)
#undef NS_ADD
  return *this;
}

json DirectionTotals::to_json() const {
  json j;
#define NS_JSON(n) j[#n] = n;
  NS_RELAY_COUNTER_FIELDS(NS_JSON)
#undef NS_JSON
  return j;
}

DirectionTotals DirectionCounters::snapshot() const {
  DirectionTotals t;
#define NS_LOAD(n) t.n = n.load(std::memory_order_relaxed);
  NS_RELAY_COUNTER_FIELDS(NS_LOAD)
#undef NS_LOAD
  return t;
}

json PodContext::counters_json() const {
  json j;
  for (auto d : {Direction::outbound, Direction::inbound, Direction::tunnel})
    j[to_string(d)] = counters[static_cast<int>(d)].to_json();
  return j;
}

namespace {

using Clock = std::chrono::steady_clock;

int64_t now_ms() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void set_linger_zero(int fd) {
  linger l{1, 0};  // close() sends RST
  ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
}

int sock_error(int fd) {
  int err = 0;
  socklen_t len = sizeof err;
  if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) return errno;
  return err;
}

// Every relayed socket, both sides: no Nagle, and dead-peer detection (keepalive, user timeout).
// The client side inherits all of it from the listeners (Relay::add_pod). Upstreams get no Nagle
// at socket() and the dead-peer options once they have lived a second (Worker::on_tick) when both
// bounds are 10 s or more (the defaults are 60 s): a shorter connection would pay five system
// calls for bounds it cannot reach.
void set_nodelay(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

void set_dead_peer_bounds(int fd, const RelayOptions& o) {
  int one = 1;
  if (o.tcp_user_timeout_ms > 0) {
    unsigned ut = static_cast<unsigned>(o.tcp_user_timeout_ms);
    ::setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &ut, sizeof ut);
  }
  if (o.keepalive_idle_s > 0) {
    ::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &o.keepalive_idle_s, sizeof o.keepalive_idle_s);
    ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &o.keepalive_interval_s, sizeof o.keepalive_interval_s);
    ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &o.keepalive_count, sizeof o.keepalive_count);
  }
}

void tune_socket(int fd, const RelayOptions& o) {
  set_nodelay(fd);
  set_dead_peer_bounds(fd, o);
}

// Below this a flow is copied through the worker's buffer (recv + send); a read that fills it
// means the flow moves bulk, and from then on it is spliced through a pipe (HAProxy's splice-auto).
constexpr size_t kCopyChunk = 16 * 1024;

struct Pipe {
  UniqueFd r, w;
};

// What epoll's data.ptr points at.
struct Endpoint {
  enum Kind : uint8_t { kListener, kDown, kUp, kSpare } kind;
  void* obj;
  // The batch in which an upstream socket's endpoint got its present owner (a new connection, or
  // the spare pool): events for it collected in that batch are about its former life, so they are
  // not delivered (a reused socket keeps its epoll registration, see Spare).
  uint64_t since = 0;
};

}  // namespace

struct Listener {
  Endpoint ep;
  std::shared_ptr<PodContext> pod;
  Direction dir;
  int fd;
  uint16_t port = 0;  // the listener's own port (15001/15006/15008)
};

constexpr uint16_t kDnsPort = 15053;  // the TCP DNS listener: relayed like outbound, never proxied

// Connection ids are unique across agents and restarts: a random salt per process, XORed with the
// worker and a per-worker sequence number.
uint64_t conn_id_salt() {
  static const uint64_t salt = [] {
    uint64_t s = 0;
    if (::getrandom(&s, sizeof s, 0) != sizeof s) s = static_cast<uint64_t>(::time(nullptr)) * 0x9E3779B97F4A7C15ull;
    return s & 0x00ffffffffffffffull;
  }();
  return salt;
}

// One direction of a connection: src → dst, copied while small, then spliced through a pipe.
struct Flow {
  int src = -1, dst = -1;
  std::unique_ptr<Pipe> pipe;
  size_t in_pipe = 0;
  std::string pending;  // bytes to write to dst first (tunnel reply, PROXY header, a copy's rest)
  uint64_t moved = 0;   // bytes taken from src for dst over the connection's life
  bool src_eof = false, dst_shut = false;
  bool bulk = false;       // splice from now on
  bool readable = true;    // src may have bytes: cleared by a short read, set by its next event
  bool hup_seen = false;   // src reported its FIN: read on to the 0 despite short reads
  bool fin_sent = false;   // dst was shut (SHUT_WR) while the other way still ran
  uint64_t drained_in = 0;  // the epoll batch in which a read last found src drained
  bool done() const { return src_eof && in_pipe == 0 && pending.empty() && dst_shut; }
  void drained(uint64_t batch) {
    readable = false;
    drained_in = batch;
  }
  // Edge-triggered: an event on src is the only news that it has bytes, or its FIN, again. A bare
  // EPOLLIN collected in the batch where a read already found src drained is that same news: the
  // read took those bytes, and bytes after it raise an event in the next batch. (Measured: one
  // recv to EAGAIN per short connection, the client's request, whose event comes in the batch that
  // connects the upstream.)
  void note(uint32_t events, uint64_t batch) {
    if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR) || ((events & EPOLLIN) && drained_in != batch)) readable = true;
    if (events & (EPOLLRDHUP | EPOLLHUP)) hup_seen = true;
  }
};

struct Conn {
  enum State : uint8_t { kRequest, kConnecting, kEstablished, kDead } state = kConnecting;
  Endpoint down_ep{Endpoint::kDown, this};
  std::unique_ptr<Endpoint> up_ep;  // travels with the upstream socket when it is kept as a spare
  UniqueFd down, up;
  IpAddr up_src;  // the upstream's source: the client's address (kept source) or the family's any
  std::shared_ptr<PodContext> pod;
  Direction dir;
  Flow to_up, to_down;  // client → upstream, upstream → client
  std::string request;  // tunnel request head being read
  SockAddr bypass;      // registered bypass entry (inbound/tunnel) for the upstream's whole life
  bool bypass_set = false;
  bool redirected = false;  // arrived through a NAT redirect (SO_ORIGINAL_DST)
  bool half_closed = false;  // deadline_ms is the half-close timeout
  bool proxied = false;      // sent to the pod's proxy (PROXY v2), not to the destination
  SockAddr proxy;
  SockAddr client, dst;         // the client and the original destination (or DNS upstream)
  int64_t started_ms = 0;
  const char* reason = "closed";  // why it ended (access log)
  uint64_t id = 0;           // the connection id (PROXY v2 UNIQUE_ID)
  int64_t deadline_ms = 0;  // connect deadline, then idle (or half-close) deadline
  bool up_tuned = false;    // the upstream has its dead-peer options (set once it lived a second)
};

// An upstream socket kept after a clean close for the next connection of the same pod from the
// same source (issue 17: socket() and close() of a TCP socket cost 5.9 us here, twice the rest of
// what a reuse costs). Its FIN goes out by shutdown(); once the socket is in CLOSE (at once on a
// local path, after the peer's last ACK otherwise) connect(AF_UNSPEC) disconnects it and it is
// ready. Kept with it: its epoll registration, its options (mark, nodelay, dead-peer bounds,
// IP_TRANSPARENT), its netns. Its port is released; the next connect (or bind) takes a new one.
struct Spare {
  UniqueFd fd;
  std::unique_ptr<Endpoint> ep;
  std::shared_ptr<PodContext> pod;
  IpAddr src;
  SockAddr bypass;  // the last connection's bypass entry: removed once the socket is in CLOSE
  bool bypass_set = false;
  bool tuned = false;
  bool ready = false;
  int64_t since_ms = 0;  // kept (closing) or ready since
};

class Worker {
 public:
  Worker(size_t id, const RelayOptions& opts) : id_(id), opts_(opts), loop_("relay-" + std::to_string(id)) {}
  ~Worker() {
    stop();
    std::vector<Conn*> all;
    for (auto& [p, c] : conns_) all.push_back(p);
    for (Conn* c : all) finish(*c, false, false);
    drop_spares(nullptr);
    graveyard_.clear();
  }

  Status init() {
    NS_TRY_STATUS(loop_.start(std::chrono::seconds(1),
                              {[this](void* p, uint32_t ev) { dispatch(static_cast<Endpoint*>(p), ev); },
                               [this] { on_tick(); },
                               [this] {
                                 graveyard_.clear();  // closed in this batch: no event can refer to them now
                                 listener_graveyard_.clear();
                                 endpoint_graveyard_.clear();
                               }}));
    loop_.post([] { prepare_accept_reserve(); });  // on the worker thread
    return {};
  }

  void stop() { loop_.stop(); }
  void set_peers(std::vector<Worker*> peers) { peers_ = std::move(peers); }

  // Runs fn on the worker thread.
  void post(std::function<void(Worker&)> fn) {
    loop_.post([this, fn = std::move(fn)] { fn(*this); });
  }

  void add_listener(const std::shared_ptr<PodContext>& pod, Direction dir, int fd) {
    auto l = std::make_unique<Listener>(Listener{{Endpoint::kListener, nullptr}, pod, dir, fd});
    SockAddr own;
    own.len = sizeof own.ss;
    if (::getsockname(fd, own.sa(), &own.len) == 0) l->port = own.port();
    if (l->port && std::find(own_ports_.begin(), own_ports_.end(), l->port) == own_ports_.end())
      own_ports_.push_back(l->port);
    l->ep.obj = l.get();
    // EPOLLEXCLUSIVE: one of the workers waiting on this listener wakes per event.
    if (auto st = ctl(EPOLL_CTL_ADD, fd, EPOLLIN | EPOLLEXCLUSIVE, &l->ep); !st.ok()) {
      log::PodScope scope(pod->uid);
      spdlog::error("relay worker {}: cannot watch {} listener of pod {}: {}", id_, to_string(dir), pod->uid,
                    st.error().message);
      return;
    }
    listeners_.push_back(std::move(l));
  }

  // pod == nullptr: every pod's listeners (handover: established connections stay).
  // fd >= 0: only that listener of the pod.
  void release_listeners(const PodContext* pod, int fd = -1) {
    for (auto it = listeners_.begin(); it != listeners_.end();) {
      if (!pod || ((*it)->pod.get() == pod && (fd < 0 || (*it)->fd == fd))) {
        loop_.forget((*it)->fd);
        // An event for it may still sit later in this epoll batch: keep the object until the
        // batch ends, and mark it so that event is ignored.
        (*it)->fd = -1;
        listener_graveyard_.push_back(std::move(*it));
        it = listeners_.erase(it);
      } else {
        ++it;
      }
    }
  }

  size_t connections() const { return conns_.size(); }

  void remove_pod(const PodContext* pod) {
    netns_.leave(pod->netns);  // this thread must not keep the pod's netns alive
    release_listeners(pod);
    std::vector<Conn*> victims;
    for (auto& [p, c] : conns_)
      if (c->pod.get() == pod) victims.push_back(p);
    for (Conn* c : victims) {
      c->reason = "evicted";  // the pod was unenrolled
      finish(*c, true, false);
    }
    drop_spares(pod);
    ready_.erase(pod);  // its (now empty) list of ready spares
  }

  json connections_json(const std::string& uid) const {
    json a = json::array();
    int64_t now = now_ms();
    for (const auto& [p, c] : conns_) {
      if (!uid.empty() && c->pod->uid != uid) continue;
      a.push_back({{"id", fmt::format("{:016x}", c->id)}, {"pod_uid", c->pod->uid}, {"direction", to_string(c->dir)},
                   {"client", c->client.str()}, {"destination", c->dst.len ? c->dst.str() : ""},
                   {"sent_to", sent_to(*c)}, {"state", c->state == Conn::kEstablished ? "established" : "connecting"},
                   {"age_s", double(now - c->started_ms) / 1000.0}, {"bytes_up", c->to_up.moved},
                   {"bytes_down", c->to_down.moved}});
    }
    return a;
  }

  json stats() const {
    return {{"worker", id_}, {"connections", nconns_.load()}, {"pipes_idle", idle_pipes_.load()}, {"accept_shed", shed_.load()},
            {"pipes_in_use", pipes_in_use_.load()}, {"upstream_spares", nspares_.load()},
            {"upstreams_reused", reused_.load()}, {"accepts_handed_over", handed_.load()}};
  }

 private:
  Status ctl(int op, int fd, uint32_t events, Endpoint* ep) { return loop_.ctl(op, fd, events, ep); }

  void dispatch(Endpoint* ep, uint32_t events) {
    switch (ep->kind) {
      case Endpoint::kListener:
        if (static_cast<Listener*>(ep->obj)->fd >= 0) on_accept(*static_cast<Listener*>(ep->obj));
        break;
      case Endpoint::kDown:
      case Endpoint::kUp:
        if (ep->since != loop_.batch()) on_conn(*static_cast<Conn*>(ep->obj), ep->kind == Endpoint::kUp, events);
        break;
      case Endpoint::kSpare:
        if (ep->since != loop_.batch()) on_spare(*static_cast<Spare*>(ep->obj), events);
        break;
    }
  }

  void on_tick() {
    int64_t now = now_ms();
    std::vector<Conn*> expired;
    for (auto& [p, c] : conns_) {
      if (c->deadline_ms && now >= c->deadline_ms) expired.push_back(p);
      if (!c->up_tuned && c->up && now - c->started_ms >= 1000) {  // see set_dead_peer_bounds
        set_dead_peer_bounds(c->up.get(), opts_);
        c->up_tuned = true;
      }
    }
    for (Conn* c : expired) {
      auto& ctr = c->pod->of(c->dir);
      if (c->state == Conn::kEstablished && c->half_closed) {
        ctr.half_close_timeouts++;
        c->reason = "half_close_timeout";
      } else {
        ctr.timeouts++;
        c->reason = "idle_timeout";
        if (c->state == Conn::kConnecting || c->state == Conn::kRequest) {
          ctr.failed++;
          c->reason = "connect_failed";
        }
      }
      finish(*c, true, true);
    }
    expire_spares(now);
  }

  // ---- accept and upstream -------------------------------------------------------------------

  void on_accept(Listener& l) {
    for (int i = 0; i < 64; ++i) {
      sockaddr_storage peer{};
      socklen_t plen = sizeof peer;
      Accepted a = accept_or_shed(l.fd, reinterpret_cast<sockaddr*>(&peer), &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (a.result == AcceptResult::again) return;
      if (a.result != AcceptResult::accepted) {
        if (a.result == AcceptResult::shed) {
          l.pod->of(l.dir).failed++;
          shed_++;
        }
        if (uint64_t now = now_ms(); now - last_accept_warn_ms_ >= 1000) {  // at most one line a second
          last_accept_warn_ms_ = now;
          log::PodScope scope(l.pod->uid);
          spdlog::warn("relay: accept on {} listener of pod {}: {}{}", to_string(l.dir), l.pod->uid,
                       std::strerror(a.err), a.result == AcceptResult::shed ? " (connection reset)" : "");
        }
        if (a.result == AcceptResult::shed) continue;
        return;
      }
      if (Worker* to = balance_target()) {
        hand_over(l, *to, std::move(a.fd), peer, plen);
        continue;
      }
      take_accepted(l, std::move(a.fd), peer, plen);
    }
  }

  // Accepts are spread over the workers. A listener wakes the first idle worker waiting on it
  // (EPOLLEXCLUSIVE), and that worker takes the whole accept queue, so a burst of connections to
  // an idle relay (a client opening its streams or its pool at once) used to land on one worker:
  // measured, 9 of iperf3's 9 connections. When this worker holds more connections than the least
  // loaded one by a margin (2, plus a quarter of that worker's own, so a busy relay's normal
  // jitter hands nothing over), the new one is handed to it. Returns that worker, or nullptr.
  Worker* balance_target() const {
    if (!opts_.balance_accepts || peers_.size() < 2) return nullptr;
    Worker* best = nullptr;
    size_t best_load = SIZE_MAX;
    for (Worker* w : peers_)
      if (size_t l = w->load(); w != this && l < best_load) {
        best = w;
        best_load = l;
      }
    return load() + 1 > best_load + 2 + best_load / 4 ? best : nullptr;
  }

  // Connections of this worker, with those handed to it and not yet taken up.
  size_t load() const { return nconns_.load(std::memory_order_relaxed) + incoming_.load(std::memory_order_relaxed); }

  void hand_over(const Listener& l, Worker& to, UniqueFd fd, const sockaddr_storage& peer, socklen_t plen) {
    handed_++;
    to.incoming_++;
    // A copy: the other worker's own Listener for this fd is not needed, only its pod, direction
    // and port. fd -1: nothing here is watched by epoll.
    Listener from{{Endpoint::kListener, nullptr}, l.pod, l.dir, -1, l.port};
    auto owned = std::make_shared<UniqueFd>(std::move(fd));  // std::function needs a copyable closure
    to.post([from = std::move(from), owned, peer, plen](Worker& w) {
      w.incoming_--;
      // Unenrolled meanwhile (Relay::remove_pod marks the pod before any worker drops it): the
      // fd closes here, and the client gets a reset, as for any connection of a removed pod.
      if (from.pod->removed.load()) return;
      w.take_accepted(from, std::move(*owned), peer, plen);
    });
  }

  // A connection accepted on l's listener (by this worker or handed over by another).
  void take_accepted(const Listener& l, UniqueFd accepted, const sockaddr_storage& peer, socklen_t plen) {
    int fd = accepted.release();
    auto c = std::make_unique<Conn>();
    c->down.reset(fd);
    c->pod = l.pod;
    c->dir = l.dir;
    c->started_ms = now_ms();
    Conn* raw = c.get();
    conns_[raw] = std::move(c);
    nconns_++;
    auto& ctr = l.pod->of(l.dir);
    ctr.opened++;
    ctr.active++;
    // No setsockopt here: accepted sockets inherit TCP_NODELAY, keepalive and the user timeout
    // from the listener (tuned once in add_pod).
    if (l.dir == Direction::tunnel) {
      raw->state = Conn::kRequest;
      raw->deadline_ms = now_ms() + opts_.connect_timeout_ms;
      if (!ctl(EPOLL_CTL_ADD, fd, EPOLLIN | EPOLLRDHUP | EPOLLET, &raw->down_ep).ok()) {
        fail(*raw, "epoll");
        return;
      }
      on_conn(*raw, false, EPOLLIN);
      return;
    }
    // The original destination: sk_lookup assigned the SYN without rewriting it.
    SockAddr local;
    local.len = sizeof local.ss;
    if (::getsockname(fd, local.sa(), &local.len) < 0) {
      fail(*raw, "getsockname");
      return;
    }
    SockAddr client;
    client.ss = peer;
    client.len = plen;
    SockAddr dst = SockAddr::make(local.ip().unmapped(), local.port());
    if (local.port() == l.port) {
      // Addressed to the listener itself: the connection was NAT-redirected (iptables/nft
      // REDIRECT) rather than steered by sk_lookup; conntrack has the original destination.
      if (auto orig = original_dst(fd); orig && !(orig->ip().unmapped() == dst.ip() && orig->port() == dst.port())) {
        dst = SockAddr::make(orig->ip().unmapped(), orig->port());
        raw->redirected = true;
      }
    }
    if (!raw->redirected && dst.port() == l.port && netns_.is_local(raw->pod->netns, dst.ip())) {
      // A client in the pod connected straight to this listener (127.0.0.1:15006, say): relayed,
      // the upstream would reach the same listener again, and so on until the process is out of
      // fds (measured: ~10,000 hops in a fraction of a second). Reset it instead. The listener
      // is bound to the wildcard address, so a local address on its port is the listener itself;
      // a steered connection to another host's service on that port (remote:15001) is relayed.
      fail(*raw, "addressed to the relay's own listener " + dst.str() + " (not a captured connection)");
      return;
    }
    if (l.dir == Direction::outbound && dst.port() == 53 && l.pod->dns_upstream) dst = *l.pod->dns_upstream;
    raw->id = conn_id_salt() ^ (static_cast<uint64_t>(id_) << 56 | ++conn_seq_);
    if (l.port != kDnsPort && l.dir != Direction::tunnel && l.pod->proxy[static_cast<int>(l.dir)]) {
      start_proxied(*raw, *l.pod->proxy[static_cast<int>(l.dir)], dst, client);
      return;
    }
    start_upstream(*raw, dst, client);
  }

  // SO_ORIGINAL_DST of a NAT-redirected connection (IPv4 conntrack first: a dual-stack listener
  // carries IPv4 as v4-mapped), or nothing.
  static std::optional<SockAddr> original_dst(int fd) {
    SockAddr a;
    a.len = sizeof(sockaddr_in);
    if (::getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, a.sa(), &a.len) == 0) return a;
    a = SockAddr{};
    a.len = sizeof(sockaddr_in6);
    if (::getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, a.sa(), &a.len) == 0) return a;
    return std::nullopt;
  }

  // Creates the upstream socket in the pod netns and starts a non-blocking connect to dst.
  // Inbound (and tunnel) upstreams keep the client's address as source — except after a NAT
  // redirect, where the pod has no route steering the app's replies back to the relay.
  void start_upstream(Conn& c, const SockAddr& dst, const SockAddr& client) {
    note_ends(c, dst, client);
    bool keep_source = c.dir != Direction::outbound && !c.redirected && opts_.preserve_client_source;
    int family = dst.ip().family;
    IpAddr cip = client.ip().unmapped();
    if (keep_source && cip.family != family) return fail(c, "client and destination address families differ");
    c.up_src = keep_source ? cip : IpAddr{family, {}};
    UniqueFd up = take_spare(c);
    bool reused = static_cast<bool>(up);
    if (!reused) {
      if (auto st = netns_.enter(c.pod->netns); !st.ok()) return fail(c, st.error().message);
      up.reset(::socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
      if (!up) return fail(c, std::string("upstream socket: ") + std::strerror(errno));
      int mark = static_cast<int>(opts_.mark), one = 1;
      ::setsockopt(up.get(), SOL_SOCKET, SO_MARK, &mark, sizeof mark);
      tune_upstream(c, up.get());
      if (keep_source) {
        if (family == AF_INET6) ::setsockopt(up.get(), IPPROTO_IPV6, IPV6_TRANSPARENT, &one, sizeof one);
        else ::setsockopt(up.get(), IPPROTO_IP, IP_TRANSPARENT, &one, sizeof one);
      }
    }
    if (keep_source) {
      // A spare was disconnected: its port went with it and it binds again like a new socket.
      SockAddr src = SockAddr::make(cip, 0);
      if (::bind(up.get(), src.sa(), src.len) < 0) return fail(c, std::string("bind upstream to client address: ") + std::strerror(errno));
      SockAddr bound;
      bound.len = sizeof bound.ss;
      ::getsockname(up.get(), bound.sa(), &bound.len);
      if (bound.port() == client.port()) {
        // The app's reply tuple would equal the relay's downstream tuple: pick another port.
        UniqueFd retry;
        std::swap(retry, up);
        return start_upstream(c, dst, client);
      }
      if (auto st = c.pod->bypass(bound, true); !st.ok()) {
        if (st.error().code == ENOSPC) return bypass_full(c);
        return fail(c, "register bypass: " + st.error().message);
      }
      c.bypass = bound;
      c.bypass_set = true;
    }
    int r = ::connect(up.get(), dst.sa(), dst.len);
    if (r < 0 && errno != EINPROGRESS) return fail(c, std::string("connect ") + dst.str() + ": " + std::strerror(errno));
    watch_connecting(c, std::move(up), reused);
  }

  void tune_upstream(Conn& c, int fd) {
    set_nodelay(fd);
    if (defer_bounds_) return;  // on_tick, once the connection has lived a second
    set_dead_peer_bounds(fd, opts_);
    c.up_tuned = true;
  }

  // registered: a spare's socket, still in the epoll set (its endpoint now names c).
  void watch_connecting(Conn& c, UniqueFd up, bool registered = false) {
    c.up = std::move(up);
    c.state = Conn::kConnecting;
    c.deadline_ms = now_ms() + opts_.connect_timeout_ms;
    if (!c.up_ep) c.up_ep = std::make_unique<Endpoint>(Endpoint{Endpoint::kUp, &c, loop_.batch()});
    if (!registered && !ctl(EPOLL_CTL_ADD, c.up.get(), EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, c.up_ep.get()).ok())
      return fail(c, "epoll");
    if (c.dir != Direction::tunnel &&
        !ctl(EPOLL_CTL_ADD, c.down.get(), EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, &c.down_ep).ok())
      return fail(c, "epoll");
    if (c.dir == Direction::tunnel) {
      (void)ctl(EPOLL_CTL_MOD, c.down.get(), EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, &c.down_ep);
    }
  }

  static void note_ends(Conn& c, const SockAddr& dst, const SockAddr& client) {
    c.client = SockAddr::make(client.ip().unmapped(), client.port());
    c.dst = SockAddr::make(dst.ip().unmapped(), dst.port());
  }

  // Hand-off: the connection goes to the pod's proxy, dialled from the agent's own netns (a
  // node-local proxy), with the PROXY v2 header queued ahead of the client's bytes.
  void start_proxied(Conn& c, const SockAddr& proxy, const SockAddr& dst, const SockAddr& client) {
    note_ends(c, dst, client);
    handoff::ProxyV2Options o;
    o.unique_id = fmt::format("{:016x}", c.id);
    o.app_tlvs = c.pod->proxy_tlvs;
    auto header = handoff::encode_proxy_v2(client, dst, o);
    if (!header.ok()) return fail(c, header.error().message);
    c.proxied = true;
    c.pod->of(c.dir).proxied++;
    netns_.home();  // a node-local proxy: dialled from the agent's netns
    UniqueFd up(::socket(proxy.ip().family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!up) return proxy_failed(c, proxy, errno);
    tune_upstream(c, up.get());
    if (::connect(up.get(), proxy.sa(), proxy.len) < 0 && errno != EINPROGRESS) return proxy_failed(c, proxy, errno);
    c.to_up.pending.assign(header->begin(), header->end());
    c.proxy = proxy;
    watch_connecting(c, std::move(up));
  }

  // The proxy is down or refused: the client gets a reset (never a silent direct dial), counted
  // per pod and logged (at most once a second).
  void proxy_failed(Conn& c, const SockAddr& proxy, int err) {
    c.pod->of(c.dir).proxy_failed++;
    if (uint64_t now = now_ms(); now - last_proxy_warn_ms_ >= 1000) {
      last_proxy_warn_ms_ = now;
      log::PodScope scope(c.pod->uid);
      spdlog::warn("pod {}: {} connection reset: proxy {} unreachable: {}", c.pod->uid, to_string(c.dir), proxy.str(),
                   std::strerror(err));
    }
    c.pod->of(c.dir).failed++;
    c.reason = "connect_failed";
    finish(c, true, false);
  }

  // The pod's bypass map holds one entry per live inbound upstream: when it is full the client
  // gets a reset (not a hang), counted by name and logged at most once a second.
  void bypass_full(Conn& c) {
    c.pod->of(c.dir).bypass_full++;
    if (uint64_t now = now_ms(); now - last_bypass_warn_ms_ >= 1000) {
      last_bypass_warn_ms_ = now;
      log::PodScope scope(c.pod->uid);
      spdlog::warn("pod {}: {} connection reset: bypass map full (raise --max-inbound-connections)", c.pod->uid,
                   to_string(c.dir));
    }
    c.reason = "refused";
    finish(c, true, false);
  }

  void clear_bypass(Conn& c) { clear_bypass(*c.pod, c.bypass, c.bypass_set); }

  static void clear_bypass(PodContext& pod, const SockAddr& entry, bool& set) {
    if (!set) return;
    set = false;
    if (auto st = pod.bypass(entry, false); !st.ok()) {
      log::PodScope scope(pod.uid);
      spdlog::warn("pod {}: remove bypass {}: {}", pod.uid, entry.str(), st.error().message);
    }
  }

  // Setup failed before any byte moved: the client sees a reset, never a hang.
  void fail(Conn& c, const std::string& why) {
    if (spdlog::should_log(spdlog::level::debug)) {
      log::PodScope scope(c.pod->uid);
      spdlog::debug("pod {}: {} connection failed: {}", c.pod->uid, to_string(c.dir), why);
    }
    c.pod->of(c.dir).failed++;
    c.reason = "connect_failed";
    finish(c, true, false);
  }

  // Tunnel: answer an HTTP error and close.
  void refuse(Conn& c, int status, const std::string& why) {
    log::PodScope scope(c.pod->uid);
    spdlog::debug("pod {}: tunnel request refused ({}): {}", c.pod->uid, status, why);
    std::string resp = http_response(status, why);
    (void)!::send(c.down.get(), resp.data(), resp.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    c.pod->of(c.dir).failed++;
    c.reason = "refused";
    finish(c, false, false);
  }

  void on_tunnel_request(Conn& c) {
    char buf[4096];
    for (;;) {
      ssize_t n = ::recv(c.down.get(), buf, sizeof buf, 0);
      if (n > 0) {
        c.request.append(buf, static_cast<size_t>(n));
        if (c.request.size() > kMaxConnectHead + sizeof buf) break;
        continue;
      }
      if (n == 0) return refuse(c, 400, "client closed before the request head ended");
      if (errno == EAGAIN) break;
      if (errno == EINTR) continue;
      c.pod->of(c.dir).failed++;
      return finish(c, true, false);
    }
    auto parsed = parse_connect(c.request);
    if (!parsed) return;  // need more
    if (!parsed->ok()) return refuse(c, connect_error_status(parsed->error()), parsed->error().message);
    const ConnectRequest& req = parsed->value();
    bool ours = false;
    for (const auto& ip : c.pod->pod_ips) ours |= ip.unmapped() == req.host;
    if (!ours) return refuse(c, 403, "Forbidden");
    // A target on one of the agent's own ports is a listener of ours, never the app: through
    // 15008 itself, each CONNECT in the client's bytes would open one more hop (two fds) inside
    // the agent.
    if (std::find(own_ports_.begin(), own_ports_.end(), req.port) != own_ports_.end())
      return refuse(c, 403, "Forbidden");
    c.to_up.pending = c.request.substr(req.head_len);  // bytes the client sent after the head
    c.request.clear();
    c.to_down.pending = http_response(200, "Connection established");
    SockAddr client;
    client.len = sizeof client.ss;
    ::getpeername(c.down.get(), client.sa(), &client.len);
    start_upstream(c, SockAddr::make(req.host, req.port), client);
  }

  // ---- data path --------------------------------------------------------------------------

  void on_conn(Conn& c, bool up_side, uint32_t events) {
    if (c.state == Conn::kDead) return;
    if (c.state == Conn::kRequest) {
      if (!up_side) on_tunnel_request(c);
      return;
    }
    if (c.state == Conn::kConnecting) {
      if (!up_side) {
        // The client gave up (or reset) before the upstream answered.
        if (events & (EPOLLERR | EPOLLHUP)) {
          c.pod->of(c.dir).failed++;
          c.reason = "reset";
          finish(c, true, true);
          return;
        }
        // A FIN reported now is not reported again: the first reads once connected go on to it
        // (to_up is readable from the start).
        c.to_up.note(events, loop_.batch());
        return;
      }
      if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
      // A failed connect reports EPOLLERR: only then is SO_ERROR worth a system call.
      if (int err = events & (EPOLLERR | EPOLLHUP) ? sock_error(c.up.get()) : 0; err != 0) {
        if (c.proxied) return proxy_failed(c, c.proxy, err);
        return fail(c, std::string("connect: ") + std::strerror(err));
      }
      // The bypass entry stays until the upstream is closed: the app may have no socket for the
      // flow yet (SYN cookie, accept queue overflow), and then every segment the relay sends goes
      // through the listener lookup, and so through sk_lookup, again.
      c.state = Conn::kEstablished;
      c.to_up.src = c.down.get();
      c.to_up.dst = c.up.get();
      c.to_down.src = c.up.get();
      c.to_down.dst = c.down.get();
      // This event from the upstream tells whether it has sent anything yet.
      c.to_down.readable = false;
    }
    (up_side ? c.to_down : c.to_up).note(events, loop_.batch());
    if (events & EPOLLERR)
      if (int err = sock_error(up_side ? c.up.get() : c.down.get()); err != 0) return reset_both(c, err);
    int a = pump(c.to_up, c.to_down, c.pod->of(c.dir).bytes_up);
    if (a < 0) return reset_both(c, -a);
    int b = pump(c.to_down, c.to_up, c.pod->of(c.dir).bytes_down);
    if (b < 0) return reset_both(c, -b);
    if (c.to_up.done() && c.to_down.done()) return finish(c, false, false);
    // Activity: the idle deadline moves on; once either side has shut its half, the shorter
    // half-close timeout applies instead (a peer that never closes its side holds nothing long).
    c.half_closed = opts_.half_close_timeout_s > 0 && (c.to_up.src_eof || c.to_down.src_eof);
    int secs = c.half_closed ? opts_.half_close_timeout_s : opts_.idle_timeout_s;
    c.deadline_ms = secs > 0 ? now_ms() + int64_t(secs) * 1000 : 0;
  }

  // A socket error ended the connection: ETIMEDOUT is a dead peer (TCP_USER_TIMEOUT or
  // unanswered keepalives), anything else a reset.
  void reset_both(Conn& c, int err) {
    auto& ctr = c.pod->of(c.dir);
    if (err == ETIMEDOUT) ctr.dead_peers++;
    else ctr.resets++;
    c.reason = err == ETIMEDOUT ? "dead_peer" : "reset";
    finish(c, true, true);
  }

  // Moves what is available from f.src to f.dst. Returns 0 (wait for events) or -errno (reset).
  // Small transfers are copied through the worker's buffer: one recv and one send, where a splice
  // needs two and a pipe; a short read means src is drained (TCP), so no read to EAGAIN follows
  // unless its FIN was reported. A read that fills the buffer switches the flow to splice.
  int pump(Flow& f, const Flow& other, std::atomic<uint64_t>& bytes) {
    for (;;) {
      if (!f.pending.empty()) {
        // At src's EOF the shutdown follows the last of these bytes: corked, they carry the FIN.
        ssize_t n = ::send(f.dst, f.pending.data(), f.pending.size(),
                           MSG_NOSIGNAL | MSG_DONTWAIT | (f.src_eof ? MSG_MORE : 0));
        if (n < 0) return (errno == EAGAIN || errno == EINTR) ? 0 : -errno;
        f.pending.erase(0, static_cast<size_t>(n));
        continue;
      }
      if (f.in_pipe > 0) {
        ssize_t n = ::splice(f.pipe->r.get(), nullptr, f.dst, nullptr, f.in_pipe, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n < 0) return (errno == EAGAIN || errno == EINTR) ? 0 : -errno;
        f.in_pipe -= static_cast<size_t>(n);
        bytes.fetch_add(static_cast<uint64_t>(n), std::memory_order_relaxed);
        f.moved += static_cast<uint64_t>(n);
        continue;
      }
      if (f.src_eof) {
        if (!f.dst_shut) {
          // The half-close travels on; when the other way is finished too, the close that follows
          // sends this FIN (src is at EOF, so nothing unread turns it into a reset).
          if (!other.done()) f.fin_sent = ::shutdown(f.dst, SHUT_WR) == 0;
          f.dst_shut = true;
        }
        release_pipe(f);
        return 0;
      }
      if (!f.readable) return 0;
      if (!f.bulk) {
        ssize_t n = ::recv(f.src, scratch_.get(), kCopyChunk, MSG_DONTWAIT);
        if (n == 0) {
          f.src_eof = true;
          continue;
        }
        if (n < 0) {
          if (errno == EINTR) continue;
          if (errno == EAGAIN) {
            f.drained(loop_.batch());
            return 0;
          }
          return -errno;
        }
        size_t got = static_cast<size_t>(n);
        if (got < kCopyChunk && f.hup_seen) {
          // Src reported its FIN and this read was short: the next one should be the EOF. It is made
          // before the send, so the last bytes go out corked (MSG_MORE) and the shutdown or close
          // that follows at once puts the FIN on their segment: one packet, not two. (It is read,
          // not assumed: an urgent mark also ends a read short.)
          ssize_t m = ::recv(f.src, scratch_.get() + got, kCopyChunk - got, MSG_DONTWAIT);
          if (m == 0) f.src_eof = true;
          else if (m > 0) got += static_cast<size_t>(m);
          else if (errno != EAGAIN && errno != EINTR) return -errno;
        }
        bytes.fetch_add(got, std::memory_order_relaxed);
        f.moved += got;
        bool last = f.src_eof;
        if (got == kCopyChunk) f.bulk = true;
        else if (!f.hup_seen) f.drained(loop_.batch());
        ssize_t w = ::send(f.dst, scratch_.get(), got, MSG_NOSIGNAL | MSG_DONTWAIT | (last ? MSG_MORE : 0));
        if (w < 0 && errno != EAGAIN && errno != EINTR) return -errno;
        size_t sent = w > 0 ? static_cast<size_t>(w) : 0;
        if (sent < got) f.pending.assign(scratch_.get() + sent, got - sent);  // sent on EPOLLOUT
        continue;
      }
      if (!f.pipe && !acquire_pipe(f)) return -ENOBUFS;
      ssize_t n = ::splice(f.src, nullptr, f.pipe->w.get(), nullptr, static_cast<size_t>(opts_.pipe_size),
                           SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (n > 0) {
        f.in_pipe = static_cast<size_t>(n);
        continue;
      }
      if (n == 0) {
        f.src_eof = true;
        continue;
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        f.drained(loop_.batch());
        release_pipe(f);  // idle connections hold no pipe
        return 0;
      }
      return -errno;  // ECONNRESET, ETIMEDOUT and friends
    }
  }

  bool acquire_pipe(Flow& f) {
    if (!idle_.empty()) {
      f.pipe = std::move(idle_.back());
      idle_.pop_back();
      idle_pipes_--;
    } else {
      int p[2];
      if (::pipe2(p, O_NONBLOCK | O_CLOEXEC) < 0) {
        spdlog::warn("relay worker {}: pipe2: {}", id_, std::strerror(errno));
        return false;
      }
      f.pipe = std::make_unique<Pipe>(Pipe{UniqueFd(p[0]), UniqueFd(p[1])});
      ::fcntl(p[1], F_SETPIPE_SZ, opts_.pipe_size);
    }
    pipes_in_use_++;
    return true;
  }

  void release_pipe(Flow& f) {
    if (!f.pipe) return;
    pipes_in_use_--;
    // A pipe still holding bytes (connection torn down mid-transfer) is closed, never reused.
    if (f.in_pipe == 0 && idle_.size() < opts_.max_idle_pipes) {
      idle_.push_back(std::move(f.pipe));
      idle_pipes_++;
    }
    f.pipe.reset();
    f.in_pipe = 0;
  }

  static std::string sent_to(const Conn& c) {
    if (c.proxied) return "proxy " + c.proxy.str();
    return c.dir == Direction::tunnel ? "tunnel" : "direct";
  }

  void log_access(const Conn& c) {
    auto end = log::utc_timestamp(std::chrono::system_clock::now());
    // Formatted directly (on the worker, per connection): addresses and the fixed words need no
    // escaping; the pod's identity was encoded once at add_pod.
    fmt::memory_buffer line;  // 500 bytes inline: a typical record needs no heap
    fmt::format_to(std::back_inserter(line),
        R"({{"end":"{}Z","id":"{:016x}",{},"direction":"{}","client":"{}",)"
        R"("destination":"{}","sent_to":"{}","bytes_up":{},"bytes_down":{},"duration_ms":{},"reason":"{}"}})",
        end.view(), c.id,
        c.pod->log_identity, to_string(c.dir), c.client.len ? c.client.str() : "", c.dst.len ? c.dst.str() : "",
        sent_to(c), c.to_up.moved, c.to_down.moved, now_ms() - c.started_ms, c.reason);
    opts_.access_log->push({line.data(), line.size()});
  }

  // Closes the connection (with RST on the requested sides) and retires it for this batch.
  void finish(Conn& c, bool rst_down, bool rst_up) {
    if (c.state == Conn::kDead) return;
    bool clean = c.state == Conn::kEstablished && !rst_up && c.to_up.done() && c.to_down.done();
    c.state = Conn::kDead;
    release_pipe(c.to_up);
    release_pipe(c.to_down);
    // No EPOLL_CTL_DEL: close() removes the registration (these fds are never duplicated), and
    // an event for them later in this batch finds the connection dead (graveyard).
    if (c.down && rst_down) set_linger_zero(c.down.get());
    if (c.up && rst_up) set_linger_zero(c.up.get());
    c.down.reset();
    if (!clean || !keep_spare(c)) {
      c.up.reset();
      // Only once the upstream is closed: the FIN or RST close() sends may still need the entry.
      clear_bypass(c);
    }
    auto& ctr = c.pod->of(c.dir);
    ctr.active--;
    ctr.closed++;
    if (opts_.access_log) log_access(c);
    auto it = conns_.find(&c);
    if (it != conns_.end()) {
      graveyard_.push_back(std::move(it->second));
      conns_.erase(it);
      nconns_--;
    }
  }

  // ---- spare upstream sockets -----------------------------------------------------------------

  // A ready spare of c's pod with c's upstream source, made c's (endpoint, tuning), or none.
  UniqueFd take_spare(Conn& c) {
    auto it = ready_.find(c.pod.get());
    if (it == ready_.end()) return {};
    auto& v = it->second;
    for (size_t i = v.size(); i-- > 0;) {  // the most recently kept first
      Spare* sp = v[i];
      if (!(sp->src == c.up_src)) continue;
      v.erase(v.begin() + static_cast<ptrdiff_t>(i));  // the pod's list stays until the pod goes
      // A second take for c (a port clash made start_upstream try again): the first socket is
      // still open, and an event collected in this batch may name its endpoint.
      if (c.up_ep) endpoint_graveyard_.push_back(std::move(c.up_ep));
      c.up_ep = std::move(sp->ep);
      *c.up_ep = Endpoint{Endpoint::kUp, &c, loop_.batch()};
      c.up_tuned = sp->tuned;
      UniqueFd fd = std::move(sp->fd);
      spares_.erase(sp);
      nspares_--;
      reused_++;
      return fd;
    }
    return {};
  }

  // After a clean close (both ways done, no reset): the upstream becomes a spare instead of being
  // closed, when there is room. Its FIN is sent here (close() would have sent it).
  bool keep_spare(Conn& c) {
    if (c.proxied || !c.up || !c.up_ep || spares_.size() >= opts_.upstream_spares) return false;
    if (!c.to_up.fin_sent && ::shutdown(c.up.get(), SHUT_WR) < 0) return false;
    auto sp = std::make_unique<Spare>();
    Spare* raw = sp.get();
    sp->fd = std::move(c.up);
    sp->ep = std::move(c.up_ep);
    *sp->ep = Endpoint{Endpoint::kSpare, raw, loop_.batch()};
    sp->pod = c.pod;
    sp->src = c.up_src;
    sp->bypass = c.bypass;
    sp->bypass_set = c.bypass_set;
    c.bypass_set = false;
    sp->tuned = c.up_tuned;
    sp->since_ms = now_ms();
    spares_.emplace(raw, std::move(sp));
    nspares_++;
    settle_spare(*raw);
    return true;
  }

  // Ready once in CLOSE: disconnected, its bypass entry removed. Still closing (LAST_ACK: the
  // peer's last ACK is on its way): the event that moves it to CLOSE comes back here. An error on
  // it (a reset during the close) would be reported by the next connect as its own: closed.
  void settle_spare(Spare& sp) {
    uint8_t state = 0;  // tcp_info starts with tcpi_state
    socklen_t len = sizeof state;
    if (::getsockopt(sp.fd.get(), IPPROTO_TCP, TCP_INFO, &state, &len) < 0) return drop_spare(sp);
    if (state != TCP_CLOSE) return;
    if (sock_error(sp.fd.get()) != 0) return drop_spare(sp);
    sockaddr unspec{};
    unspec.sa_family = AF_UNSPEC;
    if (::connect(sp.fd.get(), &unspec, sizeof unspec) < 0) return drop_spare(sp);
    clear_bypass(*sp.pod, sp.bypass, sp.bypass_set);
    sp.ready = true;
    sp.since_ms = now_ms();
    ready_[sp.pod.get()].push_back(&sp);
  }

  void on_spare(Spare& sp, uint32_t events) {
    if (sp.ready) return;  // a CLOSE socket's HUP: nothing new
    if (events & EPOLLERR) return drop_spare(sp);
    settle_spare(sp);
  }

  // Closes a spare (a closing one finishes its close in the kernel, as any closed socket does).
  void drop_spare(Spare& sp) {
    if (sp.ready) {
      auto& v = ready_[sp.pod.get()];
      v.erase(std::find(v.begin(), v.end(), &sp));
    }
    sp.fd.reset();  // close() takes the socket out of the epoll set
    clear_bypass(*sp.pod, sp.bypass, sp.bypass_set);
    endpoint_graveyard_.push_back(std::move(sp.ep));  // an event in this batch may still name it
    spares_.erase(&sp);
    nspares_--;
  }

  // pod == nullptr: every spare.
  void drop_spares(const PodContext* pod) {
    std::vector<Spare*> victims;
    for (auto& [p, sp] : spares_)
      if (!pod || sp->pod.get() == pod) victims.push_back(p);
    for (Spare* sp : victims) drop_spare(*sp);
  }

  // Ready spares unused for a while are closed (an idle pod holds none), and so are spares still
  // closing after the connect timeout (the kernel goes on with their close).
  void expire_spares(int64_t now) {
    std::vector<Spare*> victims;
    for (auto& [p, sp] : spares_)
      if (now - sp->since_ms >= (sp->ready ? kSpareIdleMs : opts_.connect_timeout_ms)) victims.push_back(p);
    for (Spare* sp : victims) drop_spare(*sp);
  }

  static constexpr int64_t kSpareIdleMs = 5000;

  size_t id_;
  RelayOptions opts_;
  EventLoop loop_;
  // Short bounds (tests, tight deployments) are set at socket(); the default ones after a second.
  bool defer_bounds_ = (opts_.tcp_user_timeout_ms <= 0 || opts_.tcp_user_timeout_ms >= 10000) &&
                       (opts_.keepalive_idle_s <= 0 || opts_.keepalive_idle_s >= 10);
  netns::NetnsCursor netns_{netns::NetnsHandle::host()};  // upstream sockets are born in the pod's netns
  std::unique_ptr<char[]> scratch_{new char[kCopyChunk]};  // the copy path's buffer (one per worker)
  std::vector<std::unique_ptr<Listener>> listeners_;
  std::vector<std::unique_ptr<Listener>> listener_graveyard_;  // released in this epoll batch
  std::vector<uint16_t> own_ports_;  // the listeners' ports (the same for every pod): 15001, 15006, ...
  std::unordered_map<Conn*, std::unique_ptr<Conn>> conns_;
  std::vector<std::unique_ptr<Conn>> graveyard_;
  std::vector<std::unique_ptr<Pipe>> idle_;
  std::unordered_map<Spare*, std::unique_ptr<Spare>> spares_;
  // The ready spares, per pod: a pod's list lives as long as the pod (erasing it whenever it emptied
  // cost a map node and a vector buffer per connection, as one spare went round).
  std::unordered_map<const PodContext*, std::vector<Spare*>> ready_;
  std::vector<std::unique_ptr<Endpoint>> endpoint_graveyard_;  // of spares closed in this batch
  std::atomic<size_t> nconns_{0}, idle_pipes_{0}, pipes_in_use_{0}, nspares_{0};
  std::atomic<uint64_t> reused_{0};
  std::atomic<size_t> incoming_{0};  // handed to this worker by another, not taken up yet
  std::atomic<uint64_t> handed_{0};  // accepted here and handed to another worker
  std::vector<Worker*> peers_;       // every worker of the relay (this one too), set before any pod
  std::atomic<uint64_t> shed_{0};  // connections reset because the process was out of fds
  uint64_t last_accept_warn_ms_ = 0, last_bypass_warn_ms_ = 0, last_proxy_warn_ms_ = 0;
  uint64_t conn_seq_ = 0;
};

Result<std::unique_ptr<Relay>> Relay::start(const RelayOptions& opts) {
  std::unique_ptr<Relay> r(new Relay());
  r->opts_ = opts;
  (void)netns::NetnsHandle::host();  // workers return to it after creating upstream sockets
  for (size_t i = 0; i < std::max<size_t>(1, opts.workers); ++i) {
    auto w = std::make_unique<Worker>(i, opts);
    NS_TRY_STATUS(w->init());
    r->workers_.push_back(std::move(w));
  }
  std::vector<Worker*> peers;
  for (auto& w : r->workers_) peers.push_back(w.get());
  // Before any pod: a worker reads its peers only while accepting, i.e. after an add_pod post.
  for (auto& w : r->workers_) w->post([peers](Worker& wk) { wk.set_peers(peers); });
  return r;
}

Relay::~Relay() {
  for (auto& w : workers_) w->stop();
  workers_.clear();
}

void Relay::broadcast(const std::function<void(Worker&)>& fn) {
  std::latch done(static_cast<ptrdiff_t>(workers_.size()));
  for (auto& w : workers_)
    w->post([&](Worker& wk) {
      fn(wk);
      done.count_down();
    });
  done.wait();
}

Status Relay::add_pod(const std::shared_ptr<PodContext>& pod, int outbound_fd, int inbound_fd, int tunnel_fd,
                      int dns_tcp_fd) {
  if (!pod->bypass) return Error::msg("pod context without a bypass hook", EINVAL);
  pod->log_identity = fmt::format(R"("pod_uid":{},"namespace":{},"name":{})", json(pod->uid).dump(),
                                  json(pod->namespace_).dump(), json(pod->name).dump());
  for (int fd : {outbound_fd, inbound_fd, tunnel_fd, dns_tcp_fd})
    if (fd >= 0) tune_socket(fd, opts_);
  // Not waited for: the listeners already queue what the pod's capture steers to them, and each
  // worker takes them up at its next wake-up, before anything posted later (remove_pod, pause).
  // Waiting put two worker wake-ups on every enrol, i.e. on the CNI ADD (issue 17).
  for (auto& w : workers_)
    w->post([pod, outbound_fd, inbound_fd, tunnel_fd, dns_tcp_fd](Worker& wk) {
      wk.add_listener(pod, Direction::outbound, outbound_fd);
      wk.add_listener(pod, Direction::inbound, inbound_fd);
      wk.add_listener(pod, Direction::tunnel, tunnel_fd);
      if (dns_tcp_fd >= 0) wk.add_listener(pod, Direction::outbound, dns_tcp_fd);
    });
  return {};
}

void Relay::remove_pod(const std::shared_ptr<PodContext>& pod) {
  pod->removed = true;  // a connection handed between workers meanwhile is dropped (hand_over)
  broadcast([&](Worker& w) { w.remove_pod(pod.get()); });
}

void Relay::stop_accepting() {
  broadcast([](Worker& w) { w.release_listeners(nullptr); });
}

void Relay::pause(const std::shared_ptr<PodContext>& pod, const std::vector<std::pair<Direction, int>>& listeners) {
  broadcast([&](Worker& w) {
    for (auto [dir, fd] : listeners) w.release_listeners(pod.get(), fd);
  });
}

void Relay::resume(const std::shared_ptr<PodContext>& pod, const std::vector<std::pair<Direction, int>>& listeners) {
  broadcast([&](Worker& w) {
    for (auto [dir, fd] : listeners) w.add_listener(pod, dir, fd);
  });
}

json Relay::connections_json(const std::string& uid) {
  std::mutex mu;
  json all = json::array();
  broadcast([&](Worker& w) {
    json a = w.connections_json(uid);
    std::lock_guard lk(mu);
    for (auto& x : a) all.push_back(std::move(x));
  });
  return all;
}

size_t Relay::connections() {
  std::atomic<size_t> n{0};
  broadcast([&](Worker& w) { n += w.connections(); });
  return n;
}

json Relay::timeouts() const {
  return {{"connect_ms", opts_.connect_timeout_ms},         {"idle_s", opts_.idle_timeout_s},
          {"half_close_s", opts_.half_close_timeout_s},     {"tcp_user_timeout_ms", opts_.tcp_user_timeout_ms},
          {"keepalive_idle_s", opts_.keepalive_idle_s},     {"keepalive_interval_s", opts_.keepalive_interval_s},
          {"keepalive_count", opts_.keepalive_count}};
}

json Relay::stats() const {
  json a = json::array();
  for (const auto& w : workers_) a.push_back(w->stats());
  return a;
}

}  // namespace netsteer::relay
