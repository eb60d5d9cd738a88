#include "netsteer/agent/enrolment.h"

#include <linux/rtnetlink.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <set>

#include "netsteer/common/log.h"
#include <fmt/ranges.h>
#include "netsteer/handoff/proxy_v2.h"

namespace netsteer::agent {

using nlohmann::json;

json Pod::to_json(bool detail) const {
  json j = protocol::pod_to_json(spec);
  j["netns_ino"] = netns.id().ino;
  j["netns_dev"] = netns.id().dev;
  j["netns_cookie"] = netns.id().cookie;
  j["listeners"] = listeners.to_json();
  j["enrolled_at"] = std::chrono::duration_cast<std::chrono::seconds>(enrolled_at.time_since_epoch()).count();
  j["enrol_ms"] = enrol_ms;
  j["captured"] = capture != nullptr;
  if (detail) {
    j["capture"] = capture ? capture->to_json() : json();
    j["relay"] = relay_ctx ? relay_ctx->counters_json() : json();
    j["dns"] = udp_ctx && udp_ctx->dns ? udp_ctx->dns->to_json() : json();
    j["udp"] = udp_ctx && !spec.udp.empty() ? udp_ctx->to_json() : json();
    j["lease"] = lease ? json{{"listeners", lease->listeners}, {"holder", lease->holder},
                              {"exempt_uid", lease->exempt_uid ? json(*lease->exempt_uid) : json()}}
                       : json();
  }
  return j;
}

EnrolmentManager::EnrolmentManager(netns::NetnsExecutor& exec, const StateStore* store, std::optional<Dataplane> dp)
    : exec_(exec), store_(store), dp_(std::move(dp)) {
  // The first spare is loaded once restore() or adopt() has taken over the existing pods, so it
  // never competes with serving them again after a restart.
  if (dp_ && dp_->capture) bpf_pool_ = std::make_shared<bpf::PodBpfPool>(
        dp_->max_inbound_conns, true, dp_->bpf_spares,
        // Deferred tcx guards: the attacher loads a pod's guard programs; a strict pod loads them inline.
        !(dp_->defer_guard && dp_->tc_mode == bpf::TcMode::tcx));
  if (dp_ && dp_->capture && dp_->defer_guard && dp_->tc_mode == bpf::TcMode::tcx)
    guards_ = std::make_unique<GuardAttacher>(
        [this](const std::shared_ptr<GuardJob>& job, int ifindex, UniqueFd in, UniqueFd eg) {
          deliver_guard(job, ifindex, std::move(in), std::move(eg));
        },
        std::chrono::milliseconds(dp_->guard_quiet_ms), dp_->guard_pace);
}

size_t EnrolmentManager::guards_pending() const {
  std::lock_guard lk(mu_);
  size_t n = 0;
  for (const auto& [uid, p] : pods_) n += p->guard_job != nullptr;
  return n;
}

GuardAttacher::GuardAttacher(Deliver deliver, std::chrono::milliseconds quiet, bool pace)
    : deliver_(std::move(deliver)), pace_(quiet, pace), thread_(log::start_thread("tc-guard", [this] { run(); })) {}

GuardAttacher::~GuardAttacher() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void GuardAttacher::push(std::shared_ptr<GuardJob> job) {
  {
    std::lock_guard lk(mu_);
    q_.push_back(std::move(job));
  }
  cv_.notify_all();
}

void GuardAttacher::enrol_started() {
  enrol_arrived_ = true;
  std::lock_guard lk(mu_);
  std::lock_guard pl(pace_mu_);
  pace_.enrol_started(Clock::now());
}

void GuardAttacher::enrol_finished() {
  {
    std::lock_guard lk(mu_);
    std::lock_guard pl(pace_mu_);
    pace_.enrol_finished(Clock::now());
  }
  cv_.notify_all();
}

size_t GuardAttacher::pending() const {
  std::lock_guard lk(mu_);
  return q_.size();
}

void GuardAttacher::run() {
  std::unique_lock lk(mu_);
  for (;;) {
    cv_.wait(lk, [&] { return stop_ || !q_.empty(); });
    if (stop_) return;
    // Wait until the pace allows a link; woken by every enrol that finishes, else at recheck_at.
    for (;;) {
      if (stop_) return;
      auto now = Clock::now();
      Clock::time_point until;
      {
        std::lock_guard pl(pace_mu_);
        if (pace_.may_link(now)) break;
        until = pace_.recheck_at(now);
      }
      cv_.wait_until(lk, until);
    }
    std::shared_ptr<GuardJob> job = q_.front();
    enrol_arrived_ = false;
    lk.unlock();
    int ifindex = -1;
    UniqueFd in, eg;
    {
      std::lock_guard jl(job->mu);
      if (!job->cancelled && !job->ifindexes.empty()) {
        ifindex = job->ifindexes.back();
        auto t0 = std::chrono::steady_clock::now();
        bool yielded = false, met = false;  // met: an enrol came in while a link (rtnl) was being made
        bool in_window = false;             // the last link was made in a window, not at a quiet moment
        auto made = [&]() -> Status {
          if (!job->prog_ingress && !job->loaded) {
            NS_TRY(auto maps, bpf::PodBpf::guard_maps(job->pin_dir));
            NS_TRY(job->loaded, bpf::LoadedGuard::load(maps.view, maps.features));
            // The load takes no rtnl, but an enrol that started during it is in flight now: wait
            // for the next chance before taking rtnl for a link.
            if (enrol_arrived_) {
              yielded = true;
              return {};
            }
          }
          auto prog = [&](bool ingress) {
            return job->loaded ? job->loaded->prog(ingress) : (ingress ? job->prog_ingress : job->prog_egress).get();
          };
          // A link takes rtnl: each one only while it still fits (the load, and the link before
          // it, took some of the time).
          auto still_fits = [&] {
            std::lock_guard pl(pace_mu_);  // not mu_: job->mu is held (mu_ is taken before it)
            auto now = Clock::now();
            in_window = pace_.in_window(now);
            return !enrol_arrived_ && pace_.may_link(now);
          };
          auto timed_link = [&](bool ingress) -> Result<UniqueFd> {
            auto l0 = Clock::now();
            auto link = bpf::PodBpf::create_guard_link(prog(ingress), ifindex, ingress);
            std::lock_guard pl(pace_mu_);
            pace_.link_took(Clock::now() - l0);
            return link;
          };
          NS_TRY(auto scope, netns::ScopedNetns::enter(job->netns));
          if (!job->ingress_made) {
            if (!still_fits()) {
              yielded = true;
              return {};
            }
            NS_TRY(job->ingress_made, timed_link(true));
            // An enrol came in meanwhile: it waits for rtnl now; let it have it before the next link.
            met = yielded = enrol_arrived_;
            if (yielded) return {};
          }
          if (!still_fits()) {
            yielded = true;
            return {};
          }
          NS_TRY(eg, timed_link(false));
          met = enrol_arrived_;
          in = std::move(job->ingress_made);
          return {};
        }();
        const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        if (ms >= 1000) {
          // Each tcx attach takes rtnl and waits out an RCU grace period: seconds mean the host is
          // busy with either (netns teardown holds rtnl), and every guard behind this one waits.
          log::PodScope scope(job->uid);
          spdlog::warn("pod {}: tc guard attach on ifindex {} took {:.0f} ms (rtnl or RCU busy on the host)", job->uid,
                       ifindex, ms);
        }
        if (!made.ok()) {
          log::PodScope scope(job->uid);
          spdlog::error("pod {}: tc guard on ifindex {} not attached: {} (capture and fail-closed hold; the "
                        "guard's counters stay off until the pod is enrolled again)",
                        job->uid, ifindex, made.error().message);
          job->ingress_made.reset();
          in.reset();
          eg.reset();
        }
        if (!yielded) job->ifindexes.pop_back();
        if (!yielded && made.ok())
          spdlog::debug("pod {}: tc guard on ifindex {} loaded and linked in {:.1f} ms", job->uid, ifindex, ms);
        GuardPace::Change change;
        std::chrono::milliseconds quiet;
        {
          std::lock_guard pl(pace_mu_);
          change = pace_.attempt_ended(met, in_window, yielded);
          quiet = pace_.quiet();
        }
        if (change.windows_off)
          spdlog::debug("tc guard attacher: a link made between two enrols met the next; no more until a quiet moment");
        if (change.quiet_changed)
          spdlog::debug("tc guard attacher: quiet period {} ms (an enrol {} the attach)", quiet.count(),
                        met ? "met" : "did not meet");
      }
    }
    if (in && eg) deliver_(job, ifindex, std::move(in), std::move(eg));
    lk.lock();
    std::lock_guard jl(job->mu);
    if ((job->cancelled || job->ifindexes.empty()) && !q_.empty() && q_.front() == job) q_.pop_front();
  }
}

void EnrolmentManager::queue_guard(Pod& pod) {
  auto job = std::make_shared<GuardJob>();
  job->uid = pod.spec.uid;
  job->ifindexes = pod.capture->deferred_guard();
  auto& bpf = pod.capture->bpf();
  auto ns = pod.netns.dup();
  Status st = ns.ok() ? Status{} : Status(ns.error());
  if (st.ok() && bpf.guard_loaded()) {
    auto in = bpf.guard_prog(true);
    auto eg = bpf.guard_prog(false);
    st = !in.ok() ? Status(in.error()) : !eg.ok() ? Status(eg.error()) : Status{};
    if (st.ok()) {
      job->prog_ingress = std::move(*in);
      job->prog_egress = std::move(*eg);
    }
  } else {
    job->pin_dir = bpf.pin_dir();  // the attacher loads the programs
  }
  if (!st.ok()) {
    // Out of fds, most likely: the pod is captured and fails closed; only the counters are off.
    spdlog::error("pod {}: tc guard not queued: {}", pod.spec.uid, st.error().message);
    return;
  }
  job->netns = std::move(*ns);
  pod.guard_job = job;
  guards_->push(std::move(job));
}

void EnrolmentManager::deliver_guard(const std::shared_ptr<GuardJob>& job, int ifindex, UniqueFd in, UniqueFd eg) {
  std::lock_guard lk(mu_);
  auto it = pods_.find(job->uid);
  // Gone, replaced or handed over since: the links close here, and detach with them.
  if (it == pods_.end() || it->second->guard_job != job || !it->second->capture) return;
  Pod& pod = *it->second;
  log::PodScope scope(pod.spec.uid, pod.spec.namespace_, pod.spec.name);
  Status st = job->loaded ? pod.capture->bpf().adopt_guard_progs(*job->loaded) : Status{};
  if (st.ok()) st = pod.capture->adopt_guard(ifindex, std::move(in), std::move(eg));
  if (!st.ok()) {
    spdlog::error("pod {}: tc guard on ifindex {}: {}", pod.spec.uid, ifindex, st.error().message);
    return;
  }
  spdlog::debug("pod {}: tc guard attached on ifindex {} (deferred)", pod.spec.uid, ifindex);
  if (pod.capture->deferred_guard().empty()) pod.guard_job.reset();
  pod.state_record.clear();  // re-serialised with the guarded interface at the next save
  unstored_.insert(pod.spec.uid);
}

void EnrolmentManager::put_pod(std::unique_ptr<Pod> pod) {
  const std::string uid = pod->spec.uid;
  if (auto it = pods_.find(uid); it != pods_.end()) erase_pod(it);
  by_netns_ino_.emplace(pod->netns.id().ino, pod.get());
  pods_[uid] = std::move(pod);
  unstored_.insert(uid);
}

EnrolmentManager::PodMap::iterator EnrolmentManager::erase_pod(PodMap::iterator it) {
  auto [b, e] = by_netns_ino_.equal_range(it->second->netns.id().ino);
  for (auto i = b; i != e; ++i) {
    if (i->second == it->second.get()) {
      by_netns_ino_.erase(i);
      break;
    }
  }
  unstored_.erase(it->first);
  if (stored_uids_.count(it->first)) removed_.insert(it->first);
  return pods_.erase(it);
}

EnrolmentManager::PodMap::iterator EnrolmentManager::find_by_netns(const netns::NetnsId& id) {
  auto [b, e] = by_netns_ino_.equal_range(id.ino);
  for (auto i = b; i != e; ++i) {
    const netns::NetnsId& have = i->second->netns.id();
    if ((id.dev == 0 || have.dev == id.dev) && (id.cookie == 0 || have.cookie == 0 || have.cookie == id.cookie))
      return pods_.find(i->second->spec.uid);
  }
  return pods_.end();
}

std::string EnrolmentManager::bpf_spare() const { return bpf_pool_ ? bpf_pool_->state() : "off"; }

size_t EnrolmentManager::bpf_spares() const { return bpf_pool_ ? bpf_pool_->spares() : 0; }

void EnrolmentManager::refill_bpf_pool() {
  if (bpf_pool_) bpf_pool_->request();
}

EnrolmentManager::~EnrolmentManager() {
  guards_.reset();  // its thread may call back into this manager
  clear();
}

void EnrolmentManager::persist(const PodRecord* pending) {
  if (!store_ || !store_->enabled()) return;
  for (const std::string& uid : unstored_) {
    Pod& p = *pods_.at(uid);
    if (p.state_record.empty()) {
      PodRecord r{p.spec, p.netns.id(), false, json::object()};
      if (p.capture) r.capture = p.capture->state().to_json();
      p.state_record = serialize_record(r);
    }
  }
  std::string pending_record = pending ? serialize_record(*pending) : std::string();
  // The live enrolment stays authoritative; a failed write is logged, not fatal.
  auto failed = [&](const Status& st) {
    spdlog::warn("state file: {}", st.error().message);
    store_->close_journal();  // the next persist writes everything anew
  };
  // Compact when there is no journal yet (first save of this process) or it has grown past the
  // set it describes: amortised, each operation is still one append.
  size_t n = pods_.size() + (pending ? 1 : 0);
  if (!store_->journal_open() || store_->journal_entries() > 2 * n + 64) {
    std::vector<std::string_view> recs;
    recs.reserve(n);
    stored_uids_.clear();
    for (const auto& [uid, p] : pods_) {
      recs.push_back(p->state_record);
      stored_uids_.insert(uid);
    }
    unstored_.clear();
    removed_.clear();
    if (pending) {
      recs.push_back(pending_record);
      stored_uids_.insert(pending->spec.uid);
    }
    if (auto st = store_->save(recs); !st.ok()) failed(st);
    if (pending) removed_.insert(pending->spec.uid);  // see below
    return;
  }
  // Otherwise append what changed since the last write: a put per record not stored yet (new or
  // re-serialised), a del per stored uid that is gone. No record is compared or copied, and no
  // walk over every stored uid: the removals were noted as they happened.
  auto put = [&](const std::string& uid, std::string_view rec) {
    if (auto st = store_->append_put(rec); !st.ok()) return failed(st), false;
    stored_uids_.insert(uid);
    return true;
  };
  for (auto it = unstored_.begin(); it != unstored_.end(); it = unstored_.erase(it))
    if (!put(*it, pods_.at(*it)->state_record)) return;
  if (pending && !put(pending->spec.uid, pending_record)) return;
  for (auto it = removed_.begin(); it != removed_.end(); it = removed_.erase(it)) {
    // Back since (re-enrolled, or the pending one): its put above replaced the record.
    if (pods_.count(*it) || (pending && *it == pending->spec.uid)) continue;
    if (auto st = store_->append_del(*it); !st.ok()) return failed(st);
    stored_uids_.erase(*it);
  }
  // A pending record is deleted at the next persist unless its pod is enrolled by then.
  if (pending) removed_.insert(pending->spec.uid);
}

Result<std::unique_ptr<Pod>> EnrolmentManager::build(const protocol::PodSpec& spec, netns::NetnsHandle ns,
                                                     const capture::CaptureState* previous,
                                                     std::optional<PodListeners> given,
                                                     std::chrono::steady_clock::time_point started,
                                                     const netns::NetnsId* recorded,
                                                     const std::function<void(const netns::NetnsId&)>& identified) {
  log::PodScope scope(spec.uid, spec.namespace_, spec.name);
  auto pod = std::make_unique<Pod>();
  pod->spec = spec;
  pod->netns = std::move(ns);
  pod->enrolled_at = std::chrono::system_clock::now();
  // Everything that must happen inside the pod netns, in one visit.
  auto st = exec_.run(pod->netns, [&]() -> Status {
    log::PodScope in_netns(spec.uid, spec.namespace_, spec.name);  // the executor's thread
    // Identity beyond dev+inode (nsfs inodes are reused, cookies are not), read here where it
    // costs a socket and a getsockopt, and before anything is bound or installed.
    NS_TRY_STATUS(pod->netns.learn_cookie());
    if (recorded && !(pod->netns.id() == *recorded))
      return Error::msg(fmt::format("{} is now another netns (cookie {}, recorded {})", spec.netns_path,
                                    pod->netns.id().cookie, recorded->cookie),
                        ESTALE);
    if (recorded && (recorded->cookie == 0 || pod->netns.id().cookie == 0))
      spdlog::debug("pod {}: netns cookie {} (recorded {}): identity checked by dev+inode only", spec.uid,
                    pod->netns.id().cookie, recorded->cookie);
    if (identified) identified(pod->netns.id());
    if (pod->spec.ips.empty()) {
      // No addresses given (netsteerctl without --ip): take the pod's global addresses.
      NS_TRY(pod->spec.ips, capture::discover_addresses());
    }
    NS_TRY(auto udp, udp_ports(pod->spec));
    ListenerWants want{captures_dns(pod->spec), !udp.empty(), !udp.inbound_ports.empty()};
    if (given) {
      pod->listeners = std::move(*given);  // the previous agent's sockets (handover)
      // An older agent may not have had all of them (e.g. the TCP DNS listener).
      if (auto st = add_missing_listeners(pod->listeners, protocol::kAgentMark, want); !st.ok())
        return std::move(st).error().wrap("create listeners in pod netns");
    } else {
      auto listeners = create_listeners(protocol::kAgentMark, want);
      if (!listeners.ok()) return std::move(listeners).error().wrap("create listeners in pod netns");
      pod->listeners = std::move(*listeners);
    }
    if (!dp_ || !dp_->capture) return {};
    capture::CaptureConfig cfg;
    cfg.pod_ips = pod->spec.ips;
    cfg.exclusions = pod->spec.exclusions;
    cfg.strict = pod->spec.strict;
    cfg.dns = captures_dns(pod->spec) && pod->listeners.dns.fd.valid();
    if (pod->listeners.udp_outbound.fd) cfg.udp.outbound_ports = pod->spec.udp.outbound_ports;
    if (pod->listeners.udp_outbound.fd && pod->listeners.udp_inbound.fd) cfg.udp.inbound_ports = pod->spec.udp.inbound_ports;
    cfg.tc_mode = dp_->tc_mode;
    cfg.pin_dir = pin_dir(pod->spec.uid);
    cfg.bpf_pool = bpf_pool_.get();
    cfg.max_inbound_conns = dp_->max_inbound_conns;
    // Only a new enrol defers (restore and handover re-assert what is there, at once).
    cfg.defer_guard = guards_ && !previous && !given;
    auto cap = capture::PodCapture::install(pod->netns, cfg, previous);
    if (!cap.ok()) return std::move(cap).error().wrap("install capture");
    pod->capture = std::move(*cap);
    auto set = pod->capture->bpf().set_listeners(pod->listeners.outbound.fd.get(), pod->listeners.inbound.fd.get(),
                                                 cfg.dns ? pod->listeners.dns.fd.get() : -1);
    for (auto [l, slot] : {std::pair{&pod->listeners.udp_outbound, NS_SLOT_UDP_OUTBOUND},
                           {&pod->listeners.udp_inbound, NS_SLOT_UDP_INBOUND},
                           {cfg.dns ? &pod->listeners.dns_tcp : nullptr, NS_SLOT_DNS_TCP}})
      if (set.ok() && l && l->fd) set = pod->capture->bpf().set_socket(slot, l->fd.get(), l->role.c_str());
    if (!set.ok()) {
      (void)pod->capture->remove();
      return std::move(set).error().wrap("put listeners into the socket map");
    }
    if (previous) {
      // A lease does not survive the agent: remove any exempt-uid rule a dead agent left.
      if (auto nl = capture::Rtnl::open(); nl.ok())
        for (int family : {AF_INET, AF_INET6})
          for (int i = 0; i < 4; ++i) {
            capture::RuleSpec r;
            r.family = family;
            r.priority = capture::kExemptPriority;
            r.table = RT_TABLE_MAIN;
            (void)nl->del_rule(r);
          }
    }
    if (previous && !given) {
      // Taking over from a dead agent: its relay connections died with it, so must their
      // bypass entries (a handover keeps them: the old agent still relays those connections).
      auto n = pod->capture->bpf().clear_bypass();
      if (!n.ok()) return std::move(n).error().wrap("clear the dead relay's bypass entries");
      if (*n) spdlog::info("pod {}: removed {} bypass entries of the previous agent's connections", spec.uid, *n);
    }
    return {};
  });
  if (!st.ok()) return std::move(st).error();
  auto in_netns = std::chrono::steady_clock::now();
  if (dp_) {
    if (auto st = attach_data_path(*pod); !st.ok()) {
      teardown(*pod, true);
      return std::move(st).error();
    }
  }
  auto done = std::chrono::steady_clock::now();
  pod->enrol_ms = std::chrono::duration<double, std::milli>(done - started).count();
  spdlog::debug("pod {}: {:.2f} ms in the pod netns (listeners, capture), {:.2f} ms relay registration", spec.uid,
                std::chrono::duration<double, std::milli>(in_netns - started).count(),
                std::chrono::duration<double, std::milli>(done - in_netns).count());
  return pod;
}

// Registers the pod's listeners with the relay, and its DNS socket with the DNS proxy. On error the
// caller tears the pod down (what was registered goes with it).
Status EnrolmentManager::attach_data_path(Pod& pod) {
  auto ctx = std::make_shared<relay::PodContext>();
  ctx->uid = pod.spec.uid;
  ctx->namespace_ = pod.spec.namespace_;
  ctx->name = pod.spec.name;
  NS_TRY(ctx->netns, pod.netns.dup());
  ctx->pod_ips = pod.spec.ips;
  if (captures_dns(pod.spec)) ctx->dns_upstream = pod.spec.dns_upstream ? pod.spec.dns_upstream : dp_->dns_upstream;
  const protocol::ProxyHandoff& px = pod.spec.proxy.empty() ? dp_->proxy : pod.spec.proxy;
  ctx->proxy[0] = px.outbound;
  ctx->proxy[1] = px.inbound;
  if (px.pod_tlvs || pod.spec.proxy.pod_tlvs) {
    ctx->proxy_tlvs = {{handoff::kTlvPodName, pod.spec.namespace_ + "/" + pod.spec.name}, {handoff::kTlvPodUid, pod.spec.uid}};
  }
  // The relay only calls this while the pod is registered; remove_pod waits for the workers.
  if (pod.capture) {
    bpf::PodBpf* bpf = &pod.capture->bpf();
    ctx->bypass = [bpf](const SockAddr& a, bool add) { return add ? bpf->add_bypass(a) : bpf->remove_bypass(a); };
  } else {
    ctx->bypass = [](const SockAddr&, bool) { return Status{}; };
  }
  if (auto st = dp_->relay->add_pod(ctx, pod.listeners.outbound.fd.get(), pod.listeners.inbound.fd.get(),
                                    pod.listeners.tunnel.fd.get(),
                                    pod.listeners.dns_tcp.fd ? pod.listeners.dns_tcp.fd.get() : -1);
      !st.ok())
    return std::move(st).error().wrap("register pod with the relay");
  pod.relay_ctx = std::move(ctx);
  const auto& l = pod.listeners;
  if (!dp_->udp || (!l.dns.fd && !l.udp_outbound.fd && !l.udp_inbound.fd)) return {};
  auto u = std::make_shared<udp::PodUdp>();
  u->uid = pod.spec.uid;
  NS_TRY(u->netns, pod.netns.dup());
  if (l.dns.fd) {
    u->dns = std::make_shared<dns::PodDns>();
    u->dns->upstream = pod.spec.dns_upstream;
  }
  if (auto st = dp_->udp->add_pod(u, {l.dns.fd ? l.dns.fd.get() : -1, l.udp_outbound.fd ? l.udp_outbound.fd.get() : -1,
                                      l.udp_inbound.fd ? l.udp_inbound.fd.get() : -1});
      !st.ok())
    return std::move(st).error().wrap("register pod with the UDP proxy");
  pod.udp_ctx = std::move(u);
  return {};
}

Result<protocol::UdpPorts> EnrolmentManager::udp_ports(const protocol::PodSpec& spec) const {
  if (spec.udp.empty()) return spec.udp;
  if (!dp_ || !dp_->capture || !dp_->udp)
    return Error::msg("pod " + spec.uid + " lists UDP ports, but this agent captures no UDP (--capture none)", EOPNOTSUPP);
  if (!spec.udp.inbound_ports.empty() && !bpf::have_sk_lookup_ingress_ifindex())
    return Error::msg("inbound UDP capture (udp inbound ports) needs bpf_sk_lookup.ingress_ifindex, Linux >= 5.17; "
                      "this kernel lacks it (outbound UDP and DNS capture work here)",
                      EOPNOTSUPP);
  return spec.udp;
}

namespace {
// Counters of one pod (relay + BPF + DNS) added into `t`.
void add_pod_totals(NodeTotals& t, const Pod& pod) {
  if (pod.relay_ctx)
    for (int d = 0; d < 3; ++d) t.relay[d] += pod.relay_ctx->counters[d].snapshot();
  if (pod.udp_ctx) {
    t.udp += pod.udp_ctx->snapshot();
    if (pod.udp_ctx->dns) t.dns += pod.udp_ctx->dns->snapshot();
  }
  if (pod.capture)
    if (auto st = pod.capture->bpf().stats(); st.ok()) t.bpf += *st;
}

std::string failure_reason(const Error& e) {
  const char* n = e.code > 0 && e.code < 4096 ? ::strerrorname_np(e.code) : nullptr;
  return n ? n : "other";
}
}  // namespace

NodeTotals EnrolmentManager::totals() const {
  std::lock_guard lk(mu_);
  NodeTotals t = retired_;
  for (const auto& [uid, p] : pods_) add_pod_totals(t, *p);
  return t;
}

void EnrolmentManager::teardown(Pod& pod, bool remove_capture) {
  log::PodScope scope(pod.spec.uid, pod.spec.namespace_, pod.spec.name);
  if (pod.guard_job) {
    std::lock_guard jl(pod.guard_job->mu);  // waits out an attach in progress (one grace period)
    pod.guard_job->cancelled = true;
    pod.guard_job->ingress_made.reset();  // detaches a half-made guard
  }
  add_pod_totals(retired_, pod);  // read before the pins and the relay context go
  if (pod.lease) {
    spdlog::warn("pod {}: unenrolled while its listeners are leased to {}: the lease ends", pod.spec.uid, pod.lease->holder);
    release_lease(pod);
  }
  // New connections go direct first, then the relay lets go of the pod, then its sockets close.
  if (pod.capture && remove_capture) {
    auto st = exec_.run(pod.netns, [&] { return pod.capture->remove(); });
    if (!st.ok()) spdlog::warn("pod {}: removing capture: {}", pod.spec.uid, st.error().message);
  }
  // The relay's connections use the capture's maps (bypass entries) until remove_pod returns:
  // only then may the capture object go (found by ASan: use after free in clear_bypass).
  if (pod.relay_ctx) dp_->relay->remove_pod(pod.relay_ctx);
  pod.relay_ctx.reset();
  if (pod.udp_ctx) dp_->udp->remove_pod(pod.udp_ctx);
  pod.udp_ctx.reset();
  pod.capture.reset();
  pod.listeners = {};  // the SOCKMAP entries vanish with the sockets
}

Result<std::string> EnrolmentManager::enrol(const protocol::PodSpec& spec, netns::NetnsHandle ns) {
  auto received = std::chrono::steady_clock::now();
  // Deferred guards wait while any enrol is in flight (their attach would hold rtnl), and so do
  // the spares' loads (their CPU goes to the enrol).
  struct InFlight {
    GuardAttacher* g;
    bpf::PodBpfPool* p;
    InFlight(GuardAttacher* a, bpf::PodBpfPool* pool) : g(a), p(pool) {
      if (g) g->enrol_started();
      if (p) p->hold();
    }
    ~InFlight() {
      if (p) p->release();
      if (g) g->enrol_finished();
    }
  } in_flight{guards_.get(), bpf_pool_.get()};
  std::lock_guard lk(mu_);
  log::PodScope scope(spec.uid, spec.namespace_, spec.name);
  auto it = pods_.find(spec.uid);
  if (it != pods_.end() && it->second->netns.id() == ns.id()) {
    ++stats_.enrol_noop;
    return std::string("unchanged");
  }
  // A netns can belong to one pod only (not spec.uid's: that was the no-op above).
  if (auto other = find_by_netns(ns.id()); other != pods_.end()) {
    ++stats_.enrol_failed;
    ++stats_.failed_by_reason["EEXIST"];
    return Error::msg("netns (ino " + std::to_string(ns.id().ino) + ") is already enrolled as pod " + other->first,
                      EEXIST);
  }
  bool replacing = it != pods_.end();
  if (replacing) {
    // The old sandbox is gone or being replaced: release it before binding the same ports anew.
    spdlog::info("pod {}: new netns (ino {}), replacing the enrolment of netns ino {}", spec.uid,
                 ns.id().ino, it->second->netns.id().ino);
    teardown(*it->second, true);
    erase_pod(it);
    ++stats_.replaced;
  }
  // The pool's loader refills on its own (take() woke it; it loads once this enrol has released
  // the pool): this starts it after the first enrol or a restore, and retries after a failed load.
  struct RefillAtExit {
    EnrolmentManager& m;
    ~RefillAtExit() { m.refill_bpf_pool(); }
  } refill{*this};
  // Recorded before anything is installed, with the netns cookie (read in the pod netns, so from
  // the executor's visit; this thread holds mu_ and waits for it): a crash mid-enrol is found and
  // finished on restart, and only in the same netns.
  auto pod = build(spec, std::move(ns), nullptr, std::nullopt, received, nullptr, [&](const netns::NetnsId& id) {
    PodRecord pending{spec, id, true, json::object()};
    persist(&pending);
  });
  if (!pod.ok()) {
    ++stats_.enrol_failed;
    ++stats_.failed_by_reason[failure_reason(pod.error())];
    spdlog::warn("pod {}: enrolment failed: {}", spec.uid, pod.error().message);
    persist();
    return std::move(pod).error();
  }
  spdlog::info("pod {} ({}/{}): enrolled in {:.2f} ms, netns ino {} cookie {}, listeners {}, capture {}", spec.uid,
               spec.namespace_, spec.name, (*pod)->enrol_ms, (*pod)->netns.id().ino, (*pod)->netns.id().cookie,
               (*pod)->listeners.family,
               (*pod)->capture ? bpf::to_string(dp_->tc_mode) : "off");
  enrol_seconds_.observe((*pod)->enrol_ms / 1000.0);
  if ((*pod)->capture && !(*pod)->capture->deferred_guard().empty()) queue_guard(**pod);
  put_pod(std::move(*pod));
  ++stats_.enrol_ok;
  persist();
  return std::string(replacing ? "replaced" : "enrolled");
}

Status EnrolmentManager::unenrol(const std::string& uid, std::optional<netns::NetnsId> id) {
  std::lock_guard lk(mu_);
  auto it = pods_.end();
  if (!uid.empty()) {
    it = pods_.find(uid);
  } else if (id) {
    it = find_by_netns(*id);
  }
  if (it == pods_.end()) {
    return Error::msg(uid.empty() ? "no enrolled pod with netns ino " + std::to_string(id ? id->ino : 0)
                                  : "unknown pod '" + uid + "'",
                      ENOENT);
  }
  log::PodScope scope(it->first, it->second->spec.namespace_, it->second->spec.name);
  spdlog::info("pod {}: unenrolled", it->first);
  teardown(*it->second, true);
  erase_pod(it);
  ++stats_.unenrolled;
  persist();
  return {};
}

void EnrolmentManager::restore(const std::vector<PodRecord>& records) {
  std::lock_guard lk(mu_);
  for (const auto& rec : records) {
    const std::string& uid = rec.spec.uid;
    log::PodScope scope(uid, rec.spec.namespace_, rec.spec.name);
    std::string why;
    if (rec.spec.netns_path.empty()) {
      why = "no netns path was recorded";
    } else {
      auto ns = netns::NetnsHandle::open(rec.spec.netns_path);
      if (!ns.ok()) {
        why = "netns is gone (" + ns.error().message + ")";
      } else if (!(ns->id() == rec.netns)) {
        why = rec.spec.netns_path + " is now another netns";
      } else {
        // Same dev and inode; build() compares the cookies inside the netns before it installs
        // anything and fails with ESTALE when they differ.
        auto prev = capture::CaptureState::from_json(rec.capture);
        auto pod = build(rec.spec, std::move(*ns), &prev, std::nullopt, std::chrono::steady_clock::now(), &rec.netns);
        if (pod.ok()) {
          spdlog::info("pod {}: taken over from the previous agent in {:.2f} ms ({})", uid, (*pod)->enrol_ms,
                       (*pod)->capture && (*pod)->capture->adopted() ? "pins re-opened" : "capture re-installed");
          put_pod(std::move(*pod));
          ++stats_.adopted;
          continue;
        }
        why = pod.error().code == ESTALE ? pod.error().message : "take-over failed: " + pod.error().message;
      }
    }
    spdlog::warn("pod {}: not restored: {}; cleaning up its pins", uid, why);
    ++stats_.stale_cleaned;
  }
  // Pin directories nobody owns now: pods cleaned above, or a crash between pinning and recording.
  if (dp_) {
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(dp_->pin_root, ec)) {
      std::string uid = e.path().filename();
      if (pods_.count(uid)) continue;
      if (auto st = bpf::PodBpf::remove_pins(e.path()); !st.ok())
        spdlog::warn("stale pins {}: {}", e.path().string(), st.error().message);
    }
  }
  persist();
  refill_bpf_pool();
}

namespace {
relay::Direction lease_dir(const std::string& name) {
  return name == "inbound" ? relay::Direction::inbound : name == "tunnel" ? relay::Direction::tunnel : relay::Direction::outbound;
}

// The exempt-uid rules (one per family the pod has), in the calling thread's netns.
Status exempt_rules(const Pod& pod, uint32_t uid, bool add) {
  NS_TRY(capture::Rtnl nl, capture::Rtnl::open());
  for (int family : {AF_INET, AF_INET6}) {
    if (std::none_of(pod.spec.ips.begin(), pod.spec.ips.end(), [&](const IpAddr& a) { return a.family == family; }))
      continue;
    capture::RuleSpec r;
    r.family = family;
    r.priority = capture::kExemptPriority;
    r.table = RT_TABLE_MAIN;
    r.uid = uid;
    NS_TRY_STATUS(add ? nl.add_rule(r) : nl.del_rule(r));
  }
  return {};
}
}  // namespace

Result<EnrolmentManager::Granted> EnrolmentManager::lease(const protocol::Request& req, const std::string& holder) {
  std::lock_guard lk(mu_);
  Pod* pod = nullptr;
  for (auto& [uid, p] : pods_)
    if (req.uid.empty() ? p->spec.namespace_ + "/" + p->spec.name == req.pod_name : uid == req.uid) pod = p.get();
  if (!pod) return Error::msg("unknown pod '" + (req.uid.empty() ? req.pod_name : req.uid) + "'", ENOENT);
  log::PodScope scope(pod->spec.uid, pod->spec.namespace_, pod->spec.name);
  if (pod->lease)
    return Error::msg("pod " + pod->spec.uid + ": listeners already leased to " + pod->lease->holder, EBUSY);
  if (!pod->relay_ctx) return Error::msg("pod " + pod->spec.uid + " has no relay to take listeners from", EOPNOTSUPP);
  std::vector<std::string> names = req.listeners.empty() ? std::vector<std::string>{"outbound", "inbound"} : req.listeners;
  std::vector<std::pair<relay::Direction, int>> given;
  Granted g;
  g.fds.push_back(dup_fd(pod->netns.fd()));
  for (const auto& n : names) {
    Listener* l = pod->listeners.by_role(n);
    if (!l || !l->fd) return Error::msg("pod " + pod->spec.uid + " has no " + n + " listener", ENOENT);
    given.emplace_back(lease_dir(n), l->fd.get());
    g.fds.push_back(dup_fd(l->fd.get()));
  }
  for (const auto& f : g.fds)
    if (!f) return Error::from_errno(errno, "dup for the lease");
  if (req.exempt_uid) {
    if (*req.exempt_uid == 0)
      spdlog::warn("pod {}: exempt uid 0 also exempts the pod's own root processes from capture", pod->spec.uid);
    auto st = exec_.run(pod->netns, [&] { return exempt_rules(*pod, *req.exempt_uid, true); });
    if (!st.ok()) return std::move(st).error().wrap("exempt uid rule");
  }
  dp_->relay->pause(pod->relay_ctx, given);
  pod->lease = Pod::Lease{++lease_seq_, names, req.exempt_uid, holder};
  spdlog::info("pod {}: listeners {} leased to {}{}: the relay stops accepting on them", pod->spec.uid,
               fmt::join(names, ","), holder, req.exempt_uid ? fmt::format(", uid {} exempt from capture", *req.exempt_uid) : "");
  g.uid = pod->spec.uid;
  g.id = pod->lease->id;
  g.data = {{"pod", {{"uid", pod->spec.uid}, {"namespace", pod->spec.namespace_}, {"name", pod->spec.name},
                     {"netns_path", pod->spec.netns_path}}},
            {"listeners", names}};
  return g;
}

void EnrolmentManager::end_lease(const std::string& uid, uint64_t id, const std::string& why) {
  std::lock_guard lk(mu_);
  auto it = pods_.find(uid);
  if (it == pods_.end() || !it->second->lease || it->second->lease->id != id) return;  // the pod went first
  Pod& pod = *it->second;
  log::PodScope scope(pod.spec.uid, pod.spec.namespace_, pod.spec.name);
  release_lease(pod);
  spdlog::warn("pod {}: lease of listeners ended ({}): the relay accepts on them again", uid, why);
}

void EnrolmentManager::release_lease(Pod& pod) {
  if (!pod.lease) return;
  std::vector<std::pair<relay::Direction, int>> back;
  for (const auto& n : pod.lease->listeners)
    if (Listener* l = pod.listeners.by_role(n); l && l->fd) back.emplace_back(lease_dir(n), l->fd.get());
  if (pod.relay_ctx) dp_->relay->resume(pod.relay_ctx, back);
  if (pod.lease->exempt_uid) {
    auto st = exec_.run(pod.netns, [&] { return exempt_rules(pod, *pod.lease->exempt_uid, false); });
    if (!st.ok()) spdlog::warn("pod {}: removing the exempt uid rule: {}", pod.spec.uid, st.error().message);
  }
  pod.lease.reset();
}

size_t EnrolmentManager::leases() const {
  std::lock_guard lk(mu_);
  return static_cast<size_t>(std::count_if(pods_.begin(), pods_.end(), [](const auto& p) { return p.second->lease.has_value(); }));
}

std::vector<HandoverPod> EnrolmentManager::export_pods() const {
  std::lock_guard lk(mu_);
  std::vector<HandoverPod> out;
  for (const auto& [uid, p] : pods_) {
    if (p->guard_job) {
      // The new agent attaches what is missing when it adopts the pod; this one stops trying.
      std::lock_guard jl(p->guard_job->mu);
      p->guard_job->cancelled = true;
      p->guard_job->ingress_made.reset();
    }
    HandoverPod h;
    h.record = PodRecord{p->spec, p->netns.id(), false, p->capture ? p->capture->state().to_json() : json::object()};
    h.family = p->listeners.family;
    h.netns = dup_fd(p->netns.fd());
    bool ok = h.netns.valid();
    for (const Listener* l : p->listeners.all()) {
      if (!l->fd) continue;
      h.sockets.emplace_back(l->role, dup_fd(l->fd.get()));
      ok = ok && h.sockets.back().second.valid();
    }
    if (!ok) {
      spdlog::error("pod {}: cannot hand over: dup: {}", uid, std::strerror(errno));
      continue;
    }
    out.push_back(std::move(h));
  }
  return out;
}

void EnrolmentManager::resume_guards() {
  std::lock_guard lk(mu_);
  for (auto& [uid, p] : pods_) {
    if (!p->guard_job || !p->capture) continue;
    {
      std::lock_guard jl(p->guard_job->mu);
      if (!p->guard_job->cancelled) continue;
    }
    spdlog::info("pod {}: tc guard queued again (the handover failed)", uid);
    queue_guard(*p);  // what is still missing: the interfaces attached before stay attached
  }
}

void EnrolmentManager::adopt(std::vector<HandoverPod> pods) {
  std::lock_guard lk(mu_);
  for (auto& h : pods) {
    const std::string& uid = h.record.spec.uid;
    log::PodScope scope(uid, h.record.spec.namespace_, h.record.spec.name);
    auto ns = netns::NetnsHandle::from_fd(std::move(h.netns));
    if (!ns.ok() || !(ns->id() == h.record.netns)) {
      spdlog::error("pod {}: handed-over netns fd is not the recorded netns; skipped", uid);
      continue;
    }
    PodListeners given;
    given.family = h.family;
    bool known = true;
    for (auto& [role, fd] : h.sockets) {
      Listener* l = given.slot_of_role(role);
      if (!l) {
        known = false;
        break;
      }
      *l = {std::move(fd), port_of_role(role), role};
    }
    if (!known) {
      spdlog::error("pod {}: handed-over sockets include an unknown role; skipped", uid);
      continue;
    }
    auto prev = capture::CaptureState::from_json(h.record.capture);
    auto pod = build(h.record.spec, std::move(*ns), &prev, std::move(given));
    if (!pod.ok()) {
      spdlog::error("pod {}: handover failed: {}", uid, pod.error().message);
      continue;
    }
    spdlog::info("pod {}: handed over by the previous agent in {:.2f} ms (same listeners, pins in place)", uid,
                 (*pod)->enrol_ms);
    put_pod(std::move(*pod));
    ++stats_.adopted;
  }
  persist();
  refill_bpf_pool();
}

void EnrolmentManager::detach_store() {
  std::lock_guard lk(mu_);
  store_ = nullptr;
}

json EnrolmentManager::list() const {
  std::lock_guard lk(mu_);
  json a = json::array();
  for (const auto& [uid, p] : pods_) a.push_back(p->to_json(false));
  return a;
}

json EnrolmentManager::pod_json(const std::string& uid, bool detail) const {
  std::lock_guard lk(mu_);
  auto it = pods_.find(uid);
  return it == pods_.end() ? json() : it->second->to_json(detail);
}

Status EnrolmentManager::check(const std::string& uid) const {
  std::lock_guard lk(mu_);
  auto it = pods_.find(uid);
  if (it == pods_.end()) return Error::msg("unknown pod '" + uid + "'", ENOENT);
  const Pod& p = *it->second;
  for (const Listener* l : {&p.listeners.outbound, &p.listeners.inbound, &p.listeners.tunnel})
    if (!l->fd.valid()) return Error::msg("pod " + uid + ": " + l->role + " listener is closed", EIO);
  if (dp_ && dp_->capture) {
    if (!p.capture) return Error::msg("pod " + uid + ": capture is not installed", EIO);
    NS_TRY_STATUS(p.capture->bpf().verify());
  }
  return {};
}

std::vector<std::string> EnrolmentManager::retain_only(const std::set<std::string>& existing) {
  std::lock_guard lk(mu_);
  std::vector<std::string> removed;
  for (auto it = pods_.begin(); it != pods_.end();) {
    if (existing.count(it->first)) {
      ++it;
      continue;
    }
    log::PodScope scope(it->first, it->second->spec.namespace_, it->second->spec.name);
    spdlog::info("pod {}: unenrolled (not in the sender's snapshot of existing pods)", it->first);
    teardown(*it->second, true);
    removed.push_back(it->first);
    it = erase_pod(it);
    ++stats_.unenrolled;
  }
  if (!removed.empty()) persist();
  return removed;
}

size_t EnrolmentManager::size() const {
  std::lock_guard lk(mu_);
  return pods_.size();
}

EnrolStats EnrolmentManager::stats() const {
  std::lock_guard lk(mu_);
  return stats_;
}

void EnrolmentManager::clear(bool remove_capture) {
  std::lock_guard lk(mu_);
  for (auto& [uid, p] : pods_) teardown(*p, remove_capture);
  pods_.clear();
  by_netns_ino_.clear();
  unstored_.clear();
  removed_.insert(stored_uids_.begin(), stored_uids_.end());
  if (remove_capture) persist();
}

}  // namespace netsteer::agent
