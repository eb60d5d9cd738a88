#include <sched.h>
#include <sys/resource.h>
#include "netsteer/bpf/pod_bpf.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <net/if.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstring>
#include <optional>

#include <spdlog/spdlog.h>

#include "netsteer/bpf/tcx.h"
#include "netsteer/common/log.h"
#include "netsteer/skel/netsteer_guard.skel.h"
#include "netsteer/skel/netsteer_steer.skel.h"

namespace netsteer::bpf {

namespace {

// Pin names (the pod's pin directory is the namespace: <pin_root>/<uid>/<name>).
constexpr const char* kProgSteer = "prog_steer";
constexpr const char* kLinkSteer = "link_steer";

// The agent keeps open only what it uses per connection or per scrape; programs, links and
// the configuration maps stay pinned and are opened when needed (describe, verify, detach).
bool resident(const std::string& name) {
  return name == "map_ns_sockets" || name == "map_ns_bypass" || name == "map_ns_stats" ||
         name == "map_ns_guard_stats";
}
constexpr const char* kProgGuardIngress = "prog_guard_ingress";
// The maps the guard shares with the steering program (the guard's own: ns_guard_stats).
constexpr const char* kGuardSharedMaps[] = {"ns_pod_addrs", "ns_ex_in_port",   "ns_ex_out_port", "ns_ex_out_cidr",
                                            "ns_ex_in_src", "ns_udp_out_port", "ns_udp_in_port", "ns_config"};
constexpr const char* kProgGuardEgress = "prog_guard_egress";
std::string map_pin(const char* map_name) { return std::string("map_") + map_name; }
std::string guard_link_pin(int ifindex, bool ingress) {
  return "link_guard_if" + std::to_string(ifindex) + (ingress ? "_ingress" : "_egress");
}

// clsact fallback: our filter's identity on the hook.
constexpr uint32_t kTcHandle = 0x539;
constexpr uint32_t kTcPriority = 1;

ns_addr to_key(const IpAddr& ip0) {
  IpAddr ip = ip0.v6_mapped();
  ns_addr a{};
  std::memcpy(a.bytes, ip.bytes.data(), 16);
  return a;
}

Result<bpf_map_info> map_info(int fd) {
  bpf_map_info info{};
  uint32_t len = sizeof info;
  if (::bpf_obj_get_info_by_fd(fd, &info, &len) < 0) return Error::from_errno(errno, "read a pinned map's info");
  return info;
}

// Calls op(map, key) on the bypass map in its layout: the trie's key, or an older agent's hash key.
template <class Op>
auto on_bypass(int fd, bool hash, const SockAddr& local, Op op) {
  ns_sock_key k{to_key(local.ip()), local.port(), 0};
  if (hash) return op(BpfMap<ns_sock_key, uint8_t>(fd), k);
  return op(BpfMap<ns_bypass_key, uint8_t>(fd), ns_bypass_key{NS_BYPASS_PREFIXLEN, k});
}

ns_lpm_key to_lpm(const Prefix& p) {
  ns_lpm_key k{};
  IpAddr a = p.addr.v6_mapped();
  std::memcpy(k.bytes, a.bytes.data(), 16);
  k.prefixlen = p.addr.is_v4() ? p.len + 96u : p.len;
  return k;
}

template <typename Skel, void (*Destroy)(Skel*)>
struct SkelPtr {
  Skel* p = nullptr;
  ~SkelPtr() {
    if (p) Destroy(p);
  }
};

Result<UniqueFd> dup_obj(int fd, const std::string& what) {
  UniqueFd d = dup_fd(fd);
  if (!d) return Error::from_errno(errno, "dup " + what);
  return d;
}

}  // namespace

PodBpfStats& PodBpfStats::operator+=(const PodBpfStats& o) {
#define NS_ADD_FIELD(name) name += o.name;
  NS_STEER_COUNTER_FIELDS(NS_ADD_FIELD)
  NS_GUARD_COUNTER_FIELDS(NS_ADD_FIELD)
#undef NS_ADD_FIELD
  return *this;
}

nlohmann::json PodBpfStats::to_json() const {
  nlohmann::json j;
#define NS_JSON_FIELD(name) j[#name] = name;
  NS_STEER_COUNTER_FIELDS(NS_JSON_FIELD)
  NS_GUARD_COUNTER_FIELDS(NS_JSON_FIELD)
#undef NS_JSON_FIELD
  return j;
}

struct LoadedGuard::Skeleton {
  SkelPtr<netsteer_guard, netsteer_guard__destroy> guard;
};

LoadedGuard::LoadedGuard(std::unique_ptr<Skeleton> s) : s_(std::move(s)) {}
LoadedGuard::LoadedGuard(LoadedGuard&&) noexcept = default;
LoadedGuard& LoadedGuard::operator=(LoadedGuard&&) noexcept = default;
LoadedGuard::~LoadedGuard() = default;

Result<LoadedGuard> LoadedGuard::load(const GuardMapFds& shared, uint32_t features) {
  auto s = std::make_unique<Skeleton>();
  s->guard.p = netsteer_guard__open();
  if (!s->guard.p) return Error::from_errno(errno ? errno : EINVAL, "open tc program netsteer_guard");
  s->guard.p->rodata->ns_features = features & kAllPodFeatures;
  for (const auto& [name, fd] : shared) {
    bpf_map* m = bpf_object__find_map_by_name(s->guard.p->obj, name.c_str());
    if (!m) return Error::msg("tc program netsteer_guard has no map " + name, ENOENT);
    if (int r = bpf_map__reuse_fd(m, fd); r < 0) return Error::from_libbpf(r, "share map " + name);
  }
  if (int r = netsteer_guard__load(s->guard.p); r < 0) return Error::from_libbpf(r, "load tc program netsteer_guard");
  return LoadedGuard(std::move(s));
}

int LoadedGuard::prog(bool ingress) const {
  return bpf_program__fd(ingress ? s_->guard.p->progs.netsteer_guard_ingress : s_->guard.p->progs.netsteer_guard_egress);
}

int LoadedGuard::stats_map() const { return bpf_map__fd(s_->guard.p->maps.ns_guard_stats); }

struct LoadedPodBpf::Skeletons {
  SkelPtr<netsteer_steer, netsteer_steer__destroy> steer;
  std::optional<LoadedGuard> guard;
  uint32_t features = kAllPodFeatures;
};

// ns_config.flags for a pod: every bit is a feature its programs may be loaded without.
uint32_t pod_features(const PodBpfConfig& cfg) {
  return (cfg.strict ? NS_CFG_STRICT : 0) | (cfg.exclusions.inbound_ports.empty() ? 0 : NS_CFG_EX_IN_PORT) |
         (cfg.exclusions.inbound_sources.empty() ? 0 : NS_CFG_EX_IN_SRC) |
         (cfg.exclusions.outbound_ports.empty() ? 0 : NS_CFG_EX_OUT_PORT) |
         (cfg.exclusions.outbound_cidrs.empty() ? 0 : NS_CFG_EX_OUT_CIDR) | (cfg.dns ? NS_CFG_DNS : 0) |
         (cfg.udp_outbound_ports.empty() ? 0 : NS_CFG_UDP_OUT) | (cfg.udp_inbound_ports.empty() ? 0 : NS_CFG_UDP_IN);
}

uint32_t LoadedPodBpf::features() const { return s_->features; }

LoadedPodBpf::LoadedPodBpf(std::unique_ptr<Skeletons> s) : s_(std::move(s)) {}
LoadedPodBpf::LoadedPodBpf(LoadedPodBpf&&) noexcept = default;
LoadedPodBpf& LoadedPodBpf::operator=(LoadedPodBpf&&) noexcept = default;
LoadedPodBpf::~LoadedPodBpf() = default;

Result<LoadedPodBpf> LoadedPodBpf::load(uint32_t max_inbound_conns, bool with_guard, uint32_t features) {
  auto s = std::make_unique<Skeletons>();
  s->steer.p = netsteer_steer__open();
  if (!s->steer.p) return Error::from_errno(errno ? errno : EINVAL, "open sk_lookup program netsteer_steer");
  auto& sm = s->steer.p->maps;
  if (int r = bpf_map__set_max_entries(sm.ns_bypass, max_inbound_conns); r < 0)
    return Error::from_libbpf(r, "size the bypass map");
  s->steer.p->rodata->ns_have_ingress_ifindex = have_sk_lookup_ingress_ifindex() ? 1 : 0;
  s->features = features & kAllPodFeatures;
  s->steer.p->rodata->ns_features = s->features;
  if (int r = netsteer_steer__load(s->steer.p); r < 0) return Error::from_libbpf(r, "load sk_lookup program netsteer_steer");
  if (with_guard) {
    GuardMapFds shared;
    for (const char* name : kGuardSharedMaps)
      shared.emplace_back(name, bpf_map__fd(bpf_object__find_map_by_name(s->steer.p->obj, name)));
    NS_TRY(s->guard, LoadedGuard::load(shared, s->features));
  }
  return LoadedPodBpf(std::move(s));
}

PodBpfPool::PodBpfPool(uint32_t max_inbound_conns, bool background, size_t spares, bool with_guard)
    : max_inbound_conns_(max_inbound_conns), target_(std::max<size_t>(spares, 1)), with_guard_(with_guard) {
  if (background) thread_ = log::start_thread("bpf-spares", [this] { run(); });
}

PodBpfPool::~PodBpfPool() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

bool PodBpfPool::wants_more() const { return !stop_ && started_ && !failed_ && !loading_ && spares_.size() < target_; }

Result<LoadedPodBpf> PodBpfPool::take(uint32_t features) {
  {
    std::lock_guard lk(mu_);
    features_ = features;
    // The tightest fit: spares serving more stay for pods that need more.
    auto fits = spares_.end();
    for (auto it = spares_.begin(); it != spares_.end(); ++it)
      if ((features & ~it->features()) == 0 &&
          (fits == spares_.end() || std::popcount(it->features()) < std::popcount(fits->features())))
        fits = it;
    if (fits != spares_.end()) {
      LoadedPodBpf l = std::move(*fits);
      spares_.erase(fits);
      if (thread_.joinable()) cv_.notify_all();
      return l;
    }
    // None serves this pod: make room for spares that will (the oldest goes).
    if (!spares_.empty()) {
      spares_.pop_front();
      if (thread_.joinable()) cv_.notify_all();
    }
  }
  return LoadedPodBpf::load(max_inbound_conns_, with_guard_, features);
}

void PodBpfPool::fill(std::unique_lock<std::mutex>& lk, bool yield_to_enrols) {
  while (wants_more() && !(yield_to_enrols && held_)) {
    loading_ = true;
    uint32_t features = features_;
    lk.unlock();
    auto l = LoadedPodBpf::load(max_inbound_conns_, with_guard_, features);
    lk.lock();
    loading_ = false;
    if (l.ok()) {
      spares_.push_back(std::move(*l));
    } else {
      failed_ = true;
      spdlog::warn("loading the next pod's BPF programs ahead of time: {}", l.error().message);
    }
  }
}

void PodBpfPool::refill() {
  std::unique_lock lk(mu_);
  started_ = true;
  failed_ = false;
  fill(lk, false);
}

void PodBpfPool::request() {
  if (!thread_.joinable()) return refill();
  {
    std::lock_guard lk(mu_);
    started_ = true;
    failed_ = false;
  }
  cv_.notify_all();
}

void PodBpfPool::run() {
  // This thread only: SCHED_IDLE (nice 19 where that is refused), so loads take CPU the CNI
  // plugin and the relay leave; and no load starts while an enrol holds the pool (hold()).
  sched_param sp{};
  if (::sched_setscheduler(0, SCHED_IDLE, &sp) != 0) (void)::setpriority(PRIO_PROCESS, 0, 19);
  std::unique_lock lk(mu_);
  for (;;) {
    cv_.wait(lk, [&] { return stop_ || (wants_more() && !held_); });
    if (stop_) return;
    fill(lk, true);
  }
}

void PodBpfPool::hold() {
  std::lock_guard lk(mu_);
  ++held_;
}

void PodBpfPool::release() {
  {
    std::lock_guard lk(mu_);
    if (--held_) return;
  }
  if (thread_.joinable()) cv_.notify_all();
}

std::string PodBpfPool::state() {
  std::lock_guard lk(mu_);
  if (loading_ || (thread_.joinable() && started_ && !failed_ && spares_.size() < target_)) return "loading";
  return spares_.empty() ? "none" : "ready";
}

size_t PodBpfPool::spares() {
  std::lock_guard lk(mu_);
  return spares_.size();
}

Result<std::unique_ptr<PodBpf>> PodBpf::create(const std::string& pin_dir, const netns::NetnsHandle& ns,
                                               const PodBpfConfig& cfg, LoadedPodBpf loaded) {
  if (uint32_t missing = pod_features(cfg) & ~loaded.features())
    return Error::msg("the steering program was loaded without features the pod uses (NS_CFG bits 0x" +
                          fmt::format("{:x}", missing) + ")",
                      EINVAL);
  auto& steer = loaded.s_->steer;
  auto& sm = steer.p->maps;

  uint8_t one = 1;
  for (const auto& ip : cfg.pod_ips)
    NS_TRY_STATUS(BpfMap<ns_addr, uint8_t>(bpf_map__fd(sm.ns_pod_addrs)).put(to_key(ip), one));
  for (uint16_t p : cfg.exclusions.inbound_ports)
    NS_TRY_STATUS(BpfMap<uint16_t, uint8_t>(bpf_map__fd(sm.ns_ex_in_port)).put(p, one));
  for (uint16_t p : cfg.exclusions.outbound_ports)
    NS_TRY_STATUS(BpfMap<uint16_t, uint8_t>(bpf_map__fd(sm.ns_ex_out_port)).put(p, one));
  for (const auto& p : cfg.exclusions.outbound_cidrs)
    NS_TRY_STATUS(BpfMap<ns_lpm_key, uint8_t>(bpf_map__fd(sm.ns_ex_out_cidr)).put(to_lpm(p), one));
  for (const auto& p : cfg.exclusions.inbound_sources)
    NS_TRY_STATUS(BpfMap<ns_lpm_key, uint8_t>(bpf_map__fd(sm.ns_ex_in_src)).put(to_lpm(p), one));
  for (uint16_t p : cfg.udp_outbound_ports)
    NS_TRY_STATUS(BpfMap<uint16_t, uint8_t>(bpf_map__fd(sm.ns_udp_out_port)).put(p, one));
  for (uint16_t p : cfg.udp_inbound_ports)
    NS_TRY_STATUS(BpfMap<uint16_t, uint8_t>(bpf_map__fd(sm.ns_udp_in_port)).put(p, one));
  ns_config c{};
  c.flags = pod_features(cfg);
  c.mark = cfg.mark;
  c.mark_mask = cfg.mark_mask;
  NS_TRY_STATUS(BpfMap<uint32_t, ns_config>(bpf_map__fd(sm.ns_config)).put(0, c));

  // Pin everything; on failure whatever was pinned is removed (the link detaches with its fd).
  std::unique_ptr<PodBpf> pb(new PodBpf(BpfObjects(pin_dir, resident)));
  struct Undo {
    BpfObjects& o;
    bool armed = true;
    ~Undo() {
      if (armed) o.remove_all();
    }
  } undo{pb->objs_};
  NS_TRY_STATUS(pb->objs_.pin(kProgSteer, bpf_program__fd(steer.p->progs.netsteer_steer)));
  for (bpf_map* m : {sm.ns_sockets, sm.ns_pod_addrs, sm.ns_bypass, sm.ns_ex_in_port, sm.ns_ex_out_port,
                     sm.ns_ex_out_cidr, sm.ns_ex_in_src, sm.ns_udp_out_port, sm.ns_udp_in_port, sm.ns_config, sm.ns_stats})
    NS_TRY_STATUS(pb->objs_.pin(map_pin(bpf_map__name(m)), bpf_map__fd(m)));
  if (loaded.s_->guard) NS_TRY_STATUS(pb->adopt_guard_progs(*loaded.s_->guard));
  NS_TRY_STATUS(pb->open_bypass());

  UniqueFd link(bpf_link_create(bpf_program__fd(steer.p->progs.netsteer_steer), ns.fd(), BPF_SK_LOOKUP, nullptr));
  if (!link) return Error::from_errno(errno, "attach sk_lookup link to pod netns");
  NS_TRY_STATUS(pb->objs_.add(kLinkSteer, std::move(link)));
  undo.armed = false;
  return pb;
}

Result<std::unique_ptr<PodBpf>> PodBpf::adopt(const std::string& pin_dir) {
  NS_TRY(BpfObjects objs, BpfObjects::open(pin_dir, resident));
  for (const char* need : {kProgSteer, kLinkSteer, "map_ns_sockets", "map_ns_bypass", "map_ns_stats"}) {
    if (!objs.has(need)) return Error::msg("pin " + pin_dir + "/" + need + " is missing", ENOENT);
  }
  // Pins of an agent from before DNS capture: a socket map without the DNS slot, and a program
  // that would not assign the DNS the new rules route to it. Replace them (the caller installs
  // anew); the old link detaches with its last reference.
  if (auto info = map_info(objs.ref("map_ns_sockets").get()); info.ok() && info->max_entries < NS_SLOT_MAX) {
    objs = BpfObjects(pin_dir, resident);  // our fds go before the pins
    (void)remove_pins(pin_dir);
    return Error::msg("pins of an older agent (socket map of " + std::to_string(info->max_entries) + " slots, " +
                          std::to_string(NS_SLOT_MAX) + " needed): replaced",
                      ENOEXEC);
  }
  // The bypass map: a trie of ns_bypass_key, or the hash keyed by ns_sock_key of an agent from
  // before the trie (its program looks entries up in that layout, so they are written in it).
  NS_TRY(bpf_map_info bypass, map_info(objs.ref("map_ns_bypass").get()));
  bool hash = bypass.type == BPF_MAP_TYPE_HASH && bypass.key_size == sizeof(ns_sock_key);
  if (!hash && (bypass.type != BPF_MAP_TYPE_LPM_TRIE || bypass.key_size != sizeof(ns_bypass_key)))
    return Error::msg("bypass map of type " + std::to_string(bypass.type) + " with " + std::to_string(bypass.key_size) +
                          "-byte keys: not one this agent knows",
                      EINVAL);
  std::unique_ptr<PodBpf> pb(new PodBpf(std::move(objs)));
  pb->bypass_hash_ = hash;
  NS_TRY_STATUS(pb->open_bypass());
  return pb;
}

Status PodBpf::open_bypass() {
  bypass_ = dup_fd(objs_.fd("map_ns_bypass"));
  if (!bypass_) return Error::from_errno(errno, "dup the bypass map fd");
  return {};
}

Status PodBpf::attach_guard(int ifindex, TcMode mode) {
  NS_TRY_STATUS(load_guard());
  for (bool ingress : {true, false}) {
    ObjRef prog_ref = objs_.ref(ingress ? kProgGuardIngress : kProgGuardEgress);
    int prog = prog_ref.get();
    if (prog < 0) return Error::msg("guard program not loaded", ENOENT);
    if (mode == TcMode::tcx) {
      if (objs_.has(guard_link_pin(ifindex, ingress))) continue;
      NS_TRY(UniqueFd link, create_guard_link(prog, ifindex, ingress));
      NS_TRY_STATUS(adopt_guard_link(ifindex, ingress, std::move(link)));
    } else {
      NS_TRY_STATUS(attach_clsact_filter(prog, ifindex, ingress));
    }
  }
  return {};
}

Status PodBpf::attach_clsact_filter(int prog, int ifindex, bool ingress) {
  LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = ingress ? BPF_TC_INGRESS : BPF_TC_EGRESS);
  int r = bpf_tc_hook_create(&hook);  // creates the clsact qdisc
  if (r < 0 && r != -EEXIST) return Error::from_libbpf(r, "create clsact qdisc");
  LIBBPF_OPTS(bpf_tc_opts, opts, .prog_fd = prog, .flags = BPF_TC_F_REPLACE, .handle = kTcHandle,
              .priority = kTcPriority);
  r = bpf_tc_attach(&hook, &opts);
  if (r < 0) return Error::from_libbpf(r, std::string("attach clsact ") + (ingress ? "ingress" : "egress") + " filter");
  return {};
}

Result<UniqueFd> PodBpf::guard_prog(bool ingress) const {
  const char* name = ingress ? kProgGuardIngress : kProgGuardEgress;
  ObjRef prog = objs_.ref(name);
  if (!prog) return Error::msg("guard program not loaded", ENOENT);
  return dup_obj(prog.get(), name);
}

bool PodBpf::guard_loaded() const { return objs_.has(kProgGuardIngress) && objs_.has(kProgGuardEgress); }

Result<PodBpf::GuardMaps> PodBpf::guard_maps(const std::string& pin_dir) {
  GuardMaps m;
  for (const char* name : kGuardSharedMaps) {
    std::string path = pin_dir + "/" + map_pin(name);
    UniqueFd fd(bpf_obj_get(path.c_str()));
    if (!fd) return Error::from_errno(errno, "open pin " + path);
    // The guard serves what the pod's config uses.
    if (std::strcmp(name, "ns_config") == 0)
      if (auto c = BpfMap<uint32_t, ns_config>(fd.get()).get(0); c.ok()) m.features = c->flags;
    m.view.emplace_back(name, fd.get());
    m.fds.push_back(std::move(fd));
  }
  return m;
}

Status PodBpf::adopt_guard_progs(const LoadedGuard& g) {
  if (guard_loaded()) return {};
  for (auto [name, fd] : {std::pair{kProgGuardIngress, g.prog(true)}, std::pair{kProgGuardEgress, g.prog(false)},
                          std::pair{"map_ns_guard_stats", g.stats_map()}}) {
    if (objs_.has(name)) continue;
    NS_TRY_STATUS(objs_.pin(name, fd));
  }
  return {};
}

Status PodBpf::load_guard() {
  if (guard_loaded()) return {};
  NS_TRY(GuardMaps m, guard_maps(objs_.dir()));
  NS_TRY(LoadedGuard g, LoadedGuard::load(m.view, m.features));
  return adopt_guard_progs(g);
}

Result<UniqueFd> PodBpf::create_guard_link(int prog, int ifindex, bool ingress) {
  UniqueFd link(bpf_link_create(prog, ifindex, ingress ? kBpfTcxIngress : kBpfTcxEgress, nullptr));
  if (!link)
    return Error::from_errno(errno, std::string("attach tcx ") + (ingress ? "ingress" : "egress") +
                                        " link to ifindex " + std::to_string(ifindex));
  return link;
}

Status PodBpf::adopt_guard_link(int ifindex, bool ingress, UniqueFd link) {
  return objs_.add(guard_link_pin(ifindex, ingress), std::move(link));
}

Status PodBpf::detach_guard(int ifindex, TcMode mode) {
  Status first;
  for (bool ingress : {true, false}) {
    if (mode == TcMode::tcx) {
      std::string name = guard_link_pin(ifindex, ingress);
      ObjRef link = objs_.ref(name);
      int fd = link.get();
      // ENOLINK/ENODEV: the interface already went away with its netns.
      if (fd >= 0 && bpf_link_detach(fd) < 0 && errno != EINVAL && errno != ENOLINK && errno != ENODEV && first.ok())
        first = Error::from_errno(errno, "detach tcx link " + name);
      objs_.drop(name);
    } else {
      LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = ingress ? BPF_TC_INGRESS : BPF_TC_EGRESS);
      LIBBPF_OPTS(bpf_tc_opts, opts, .handle = kTcHandle, .priority = kTcPriority);
      int r = bpf_tc_detach(&hook, &opts);
      if (r < 0 && r != -ENOENT && r != -ENODEV && r != -EINVAL && first.ok())
        first = Error::from_libbpf(r, "detach clsact filter");
    }
  }
  return first;
}

Status PodBpf::set_listeners(int outbound_fd, int inbound_fd, int dns_fd) {
  BpfMap<uint32_t, uint64_t> m(objs_.fd("map_ns_sockets"));
  NS_TRY_STATUS(m.put(NS_SLOT_OUTBOUND, static_cast<uint64_t>(outbound_fd)));
  NS_TRY_STATUS(m.put(NS_SLOT_INBOUND, static_cast<uint64_t>(inbound_fd)));
  if (dns_fd >= 0) {
    if (auto st = m.put(NS_SLOT_DNS, static_cast<uint64_t>(dns_fd)); !st.ok())
      return std::move(st).error().wrap("put the DNS socket into the socket map");
  }
  return {};
}

Status PodBpf::set_socket(uint32_t slot, int fd, const char* what) {
  if (auto st = BpfMap<uint32_t, uint64_t>(objs_.fd("map_ns_sockets")).put(slot, static_cast<uint64_t>(fd)); !st.ok())
    return std::move(st).error().wrap(std::string("put the ") + what + " socket into the socket map");
  return {};
}

bool have_sk_lookup_ingress_ifindex() {
  static const bool have = [] {
    // r0 = *(u32 *)(r1 + offsetof(ingress_ifindex)); r0 = 1; exit. Rejected before 5.17.
    bpf_insn insns[] = {
        {BPF_LDX | BPF_MEM | BPF_W, BPF_REG_0, BPF_REG_1, static_cast<int16_t>(offsetof(bpf_sk_lookup, ingress_ifindex)), 0},
        {BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, 1},
        {BPF_JMP | BPF_EXIT, 0, 0, 0, 0},
    };
    LIBBPF_OPTS(bpf_prog_load_opts, o, .expected_attach_type = BPF_SK_LOOKUP);
    int fd = bpf_prog_load(BPF_PROG_TYPE_SK_LOOKUP, "ns_probe_ifidx", "GPL", insns, 3, &o);
    if (fd < 0) return false;
    ::close(fd);
    return true;
  }();
  return have;
}

Status PodBpf::add_bypass(const SockAddr& local) {
  Status st = on_bypass(bypass_.get(), bypass_hash_, local, [](auto m, const auto& k) { return m.put(k, 1); });
  // Full: a trie says ENOSPC, a hash E2BIG; callers get one code.
  if (!st.ok() && st.error().code == E2BIG) return Error::msg(st.error().message, ENOSPC);
  return st;
}

Status PodBpf::remove_bypass(const SockAddr& local) {
  return on_bypass(bypass_.get(), bypass_hash_, local, [](auto m, const auto& k) { return m.remove(k); });
}

Result<size_t> PodBpf::clear_bypass() {
  if (bypass_hash_) return BpfMap<ns_sock_key, uint8_t>(bypass_.get()).clear();
  return BpfMap<ns_bypass_key, uint8_t>(bypass_.get()).clear();
}

Result<PodBpfStats> PodBpf::stats() const {
  PodBpfStats s;
  NS_TRY(auto steer, (BpfMap<uint32_t, ns_steer_counters>(objs_.fd("map_ns_stats")).get_percpu(0)));
  for (const auto& c : steer) {
#define NS_SUM_FIELD(name) s.name += c.name;
    NS_STEER_COUNTER_FIELDS(NS_SUM_FIELD)
  }
  if (int gfd = objs_.fd("map_ns_guard_stats"); gfd >= 0) {
    NS_TRY(auto guard, (BpfMap<uint32_t, ns_guard_counters>(gfd).get_percpu(0)));
    for (const auto& c : guard) {
      NS_GUARD_COUNTER_FIELDS(NS_SUM_FIELD)
    }
  }
#undef NS_SUM_FIELD
  return s;
}

nlohmann::json PodBpf::describe() const {
  nlohmann::json j = objs_.describe();
  j["steer_link_id"] = steer_link_id();
  j["pin_dir"] = objs_.dir();
  return j;
}

uint32_t PodBpf::steer_link_id() const {
  ObjRef link = objs_.ref(kLinkSteer);
  return link ? object_id(link.get()) : 0;
}

Status PodBpf::verify() const {
  for (const auto& name : objs_.names()) {
    std::string path = objs_.dir() + "/" + name;
    if (::access(path.c_str(), F_OK) < 0) return Error::from_errno(errno, "pin " + path);
  }
  ObjRef link = objs_.ref(kLinkSteer);
  if (!link) return Error::msg("no sk_lookup link", ENOENT);
  bpf_link_info info{};
  uint32_t len = sizeof info;
  if (bpf_obj_get_info_by_fd(link.get(), &info, &len) < 0) return Error::from_errno(errno, "sk_lookup link info");
  if (info.netns.netns_ino == 0) return Error::msg("sk_lookup link is detached from the pod netns", ENOLINK);
  return {};
}

Status PodBpf::remove_pins(const std::string& pin_dir) {
  auto objs = BpfObjects::open(pin_dir, resident);
  if (!objs.ok()) {
    ::rmdir(pin_dir.c_str());
    return objs.error().code == ENOENT ? Status{} : Status(std::move(objs).error());
  }
  return PodBpf(std::move(*objs)).destroy();
}

Status PodBpf::destroy() {
  Status st;
  for (const auto& name : objs_.names()) {
    if (name.rfind("link_", 0) != 0) continue;
    ObjRef link = objs_.ref(name);
    if (link && bpf_link_detach(link.get()) < 0 && errno != EINVAL && errno != ENOLINK && errno != ENODEV && st.ok())
      st = Error::from_errno(errno, "detach " + name);
  }
  objs_.remove_all();
  return st;
}

}  // namespace netsteer::bpf
