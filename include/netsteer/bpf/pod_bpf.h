// The BPF side of one pod's capture: the sk_lookup steering program (bpf/netsteer_steer.bpf.c)
// linked to the pod netns, and the tc guard programs (bpf/netsteer_guard.bpf.c) on the pod's
// interfaces. One instance per pod, with its own maps: a pod's program can only ever select that
// pod's sockets (bpf_sk_assign does not check the netns). Everything is pinned under
// <pin_root>/<pod uid>/ and can be re-opened from there by a restarted agent.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <condition_variable>
#include <vector>

#include "netsteer_common.h"

#include "netsteer/bpf/features.h"
#include "netsteer/bpf/objects.h"
#include "netsteer/common/inet.h"
#include "netsteer/common/result.h"
#include "netsteer/netns/netns.h"
#include "netsteer/protocol/messages.h"

namespace netsteer::bpf {

struct PodBpfConfig {
  std::vector<IpAddr> pod_ips;
  protocol::Exclusions exclusions;
  bool strict = false;
  uint32_t mark = protocol::kAgentMark;
  uint32_t mark_mask = protocol::kAgentMarkMask;
  bool dns = false;  // NS_CFG_DNS: UDP to port 53 onto the 15053 socket
  std::vector<uint16_t> udp_outbound_ports;  // NS_CFG_UDP_OUT: remote ports onto the 15001 UDP socket
  std::vector<uint16_t> udp_inbound_ports;   // NS_CFG_UDP_IN: pod ports onto the 15006 UDP socket
};

// The features (NS_CFG_* bits: strict, exclusions, DNS, UDP ports) a pod's config uses. The
// steering and guard programs are loaded for a set of features (read-only data: the verifier skips
// the others; the steering program of a pod with DNS capture and nothing else verifies 643
// instead of 1,610 instructions); kAllPodFeatures serves any pod.
inline constexpr uint32_t kAllPodFeatures = NS_CFG_STRICT | NS_CFG_EX_IN_PORT | NS_CFG_EX_IN_SRC | NS_CFG_EX_OUT_PORT |
                                            NS_CFG_EX_OUT_CIDR | NS_CFG_DNS | NS_CFG_UDP_OUT | NS_CFG_UDP_IN;
uint32_t pod_features(const PodBpfConfig& cfg);

// bpf_sk_lookup.ingress_ifindex (Linux 5.17), which inbound UDP capture needs to tell the agent's
// own delivery (over lo) from the client's next datagram. Probed once (a 3-instruction program).
bool have_sk_lookup_ingress_ifindex();

// Steering and guard counters, summed over CPUs (field names as in bpf/netsteer_common.h).
struct PodBpfStats : ns_steer_counters, ns_guard_counters {
  PodBpfStats() : ns_steer_counters{}, ns_guard_counters{} {}
  PodBpfStats& operator+=(const PodBpfStats& o);
  nlohmann::json to_json() const;
};

// A pod's two BPF objects loaded — verified, JITed, maps created and empty — but not configured,
// pinned or attached: the costly part of an enrol, and the same for every pod, so PodBpfPool
// does it ahead of time. Owns the libbpf objects (closed with it).
// Default per-pod bound on concurrent inbound relay connections (bypass map entries).
inline constexpr uint32_t kDefaultMaxInboundConns = NS_BYPASS_MAX;

// The maps the guard shares with the pod's steering program (address, exclusion, UDP port and
// config maps), by map name; the fds are owned elsewhere.
using GuardMapFds = std::vector<std::pair<std::string, int>>;

// A pod's tc guard programs (ingress, egress) loaded on their own, sharing the pod's maps: with
// deferred tcx guards they are loaded by the attacher, after the enrol and out of the pool (they
// are ~40 % of a pod's verifier time; bench/RESULTS.md, "Pod start-up").
class LoadedGuard {
 public:
  static Result<LoadedGuard> load(const GuardMapFds& shared, uint32_t features = kAllPodFeatures);
  int prog(bool ingress) const;
  int stats_map() const;  // ns_guard_stats, the guard's own map
  LoadedGuard(LoadedGuard&&) noexcept;
  LoadedGuard& operator=(LoadedGuard&&) noexcept;
  ~LoadedGuard();

 private:
  struct Skeleton;
  explicit LoadedGuard(std::unique_ptr<Skeleton> s);
  std::unique_ptr<Skeleton> s_;
};

class LoadedPodBpf {
 public:
  // max_inbound_conns: size of the pod's bypass map (concurrent inbound relay connections).
  // with_guard: the guard programs too (for pods whose guard is attached during the enrol);
  // without, PodBpf::load_guard() or a deferred attach loads them when they are needed.
  // features: what the steering program serves (pod_features(); a pod needing more is refused).
  static Result<LoadedPodBpf> load(uint32_t max_inbound_conns = kDefaultMaxInboundConns, bool with_guard = true,
                                   uint32_t features = kAllPodFeatures);
  uint32_t features() const;
  LoadedPodBpf(LoadedPodBpf&&) noexcept;
  LoadedPodBpf& operator=(LoadedPodBpf&&) noexcept;
  ~LoadedPodBpf();

 private:
  friend class PodBpf;
  struct Skeletons;
  explicit LoadedPodBpf(std::unique_ptr<Skeletons> s);
  std::unique_ptr<Skeletons> s_;
};

// Keeps up to `spares` LoadedPodBpf ready: take() hands one out (or loads one inline when there is
// none) and the pool is refilled off the enrol's path. With `background`, a loader thread of its own
// refills it under SCHED_IDLE: a load is ~3 ms of CPU (the verifier), and at any normal priority
// (nice 19 included: EEVDF lets the running task finish its slice before a waking one runs) it
// delayed the control thread and the CNI plugin finishing an enrol on a 2-core node; SCHED_IDLE
// only runs on a core nothing else wants and is preempted at once (bench/RESULTS.md, "Pod
// start-up"). More than one spare absorbs a burst of pod starts. Each spare costs a pod's worth of
// fds (~12) and kernel memory (~270 KiB with the default bypass map).
class PodBpfPool {
 public:
  // with_guard: spares carry the guard programs (see LoadedPodBpf::load).
  explicit PodBpfPool(uint32_t max_inbound_conns = kDefaultMaxInboundConns, bool background = false,
                      size_t spares = 1, bool with_guard = true);
  ~PodBpfPool();
  PodBpfPool(const PodBpfPool&) = delete;
  PodBpfPool& operator=(const PodBpfPool&) = delete;
  // A spare whose program serves `features` (pod_features() of the pod), or one loaded inline
  // for exactly those. The loader loads the next spares for the features of the last take(); a
  // spare no pod wants is dropped when a take() finds none that fits.
  Result<LoadedPodBpf> take(uint32_t features = kAllPodFeatures);
  // Loads spares now until the pool is full (or a load fails: that is logged, and the next
  // take() loads inline and reports the error to its enrol).
  void refill();
  // Background pools: the loader starts refilling (the first call starts it; after that it keeps
  // the pool full by itself, take() wakes it).
  void request();
  // "ready" (the pool is full), "loading" (a refill is asked for or running) or "none" (the last
  // load failed, or none was asked for yet): shown by status, so a caller can wait for the agent
  // to settle.
  std::string state();
  size_t spares();
  // An enrol is running (hold) or done (release): the background loader starts no load while any
  // enrol runs. SCHED_IDLE alone did not keep its loads off the enrol's CPUs: a load's slice
  // (~1 ms, one verifier call) ran while a relay worker registering the pod waited behind it.
  void hold();
  void release();

 private:
  void run();
  bool wants_more() const;  // mu_ held
  // Loads while wants_more() (and, for the background loader, no enrol holds the pool).
  void fill(std::unique_lock<std::mutex>& lk, bool yield_to_enrols);
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<LoadedPodBpf> spares_;
  bool loading_ = false;
  bool started_ = false;  // request() was called: the loader keeps the pool full from now on
  bool failed_ = false;   // the last load failed: no retry until the next request()
  bool stop_ = false;
  int held_ = 0;  // enrols running
  const uint32_t max_inbound_conns_;
  const size_t target_;
  const bool with_guard_;
  uint32_t features_ = kAllPodFeatures;  // mu_: what the next spares are loaded for
  std::thread thread_;
};

class PodBpf {
 public:
  // Configures `loaded` (fills the maps), links the sk_lookup program to `ns` (bpf_link,
  // BPF_SK_LOOKUP; no setns needed) and pins everything under pin_dir. Any error leaves nothing
  // behind.
  static Result<std::unique_ptr<PodBpf>> create(const std::string& pin_dir, const netns::NetnsHandle& ns,
                                                const PodBpfConfig& cfg, LoadedPodBpf loaded);
  // Re-opens the pins a previous agent left (restart takeover). The link stays attached throughout.
  static Result<std::unique_ptr<PodBpf>> adopt(const std::string& pin_dir);

  // Attaches the guard to ifindex on ingress and egress. Must run IN THE POD NETNS (ifindex is
  // netns-relative). Idempotent: an attachment that already exists (pinned tcx link, or our
  // clsact filter) is kept.
  Status attach_guard(int ifindex, TcMode mode);
  // Removes the guard from ifindex (in the pod netns for clsact; tcx links detach from anywhere).
  Status detach_guard(int ifindex, TcMode mode);
  // A tcx guard attached later, outside the agent's lock (a deferred attach): a dup of the guard
  // program to attach, create_guard_link() in the pod netns (the link is not pinned yet: closing
  // it detaches it), then adopt_guard_link() pins it as this pod's guard on ifindex.
  Result<UniqueFd> guard_prog(bool ingress) const;  // ENOENT while the guard is not loaded
  static Result<UniqueFd> create_guard_link(int prog, int ifindex, bool ingress);
  // prog as our cls_bpf filter on ifindex's clsact qdisc (made when absent), replacing ours; in the
  // calling thread's netns. The clsact mode of attach_guard (and of bpf::KeepWarm).
  static Status attach_clsact_filter(int prog, int ifindex, bool ingress);
  Status adopt_guard_link(int ifindex, bool ingress, UniqueFd link);
  // The guard programs of a pod loaded without them: the maps they share, opened from the pod's
  // pins (fds[i] backs view[i]), to load them outside the agent's lock; adopt_guard_progs() pins
  // what was loaded (a no-op when the pod's guard programs are pinned already). load_guard()
  // does both here.
  struct GuardMaps {
    std::vector<UniqueFd> fds;
    GuardMapFds view;
    uint32_t features = kAllPodFeatures;  // the pod's config flags (what its guard must serve)
  };
  static Result<GuardMaps> guard_maps(const std::string& pin_dir);
  Status adopt_guard_progs(const LoadedGuard& g);
  Status load_guard();
  bool guard_loaded() const;

  // Slot 0: the 15001 listener, slot 1: the 15006 listener.
  // dns_fd < 0: the pod's DNS is not captured (its slot stays empty).
  Status set_listeners(int outbound_fd, int inbound_fd, int dns_fd = -1);
  // Any other slot (NS_SLOT_UDP_*): the socket that captured datagrams of that kind go to.
  Status set_socket(uint32_t slot, int fd, const char* what);
  // The relay's inbound upstream socket bound to the client's address: let its segments reach
  // the app for the connection's whole life. A full map is ENOSPC, whichever layout it has.
  Status add_bypass(const SockAddr& local);
  Status remove_bypass(const SockAddr& local);
  // After a crash: the dead relay's entries would let a later SYN from the same client address
  // and port reach the app uncaptured. Returns how many were removed.
  Result<size_t> clear_bypass();

  Result<PodBpfStats> stats() const;
  // Program/link/map ids and pin paths.
  nlohmann::json describe() const;
  uint32_t steer_link_id() const;
  const std::string& pin_dir() const { return objs_.dir(); }

  // Detaches every link and removes every pin (tc clsact filters: call detach_guard first).
  Status destroy();
  // The pins are all still there and the sk_lookup link is still attached to a netns.
  Status verify() const;
  // Cleans up a pin directory nobody owns (stale pod, crash mid-enrol): detaches its links and
  // removes its pins, whatever subset of them exists.
  static Status remove_pins(const std::string& pin_dir);

 private:
  explicit PodBpf(BpfObjects objs) : objs_(std::move(objs)) {}
  // Opens bypass_ once the bypass map is in objs_ (create: after pinning; adopt: from the pins,
  // with bypass_hash_ set from the map's type).
  Status open_bypass();
  BpfObjects objs_;
  // Relay worker threads add/remove bypass entries while the control side may change objs_
  // (detach, remove): they use this fd of their own, fixed for the object's life (TSan).
  UniqueFd bypass_;
  // The bypass map is a hash keyed by ns_sock_key: pins of an agent from before the trie.
  bool bypass_hash_ = false;
};

}  // namespace netsteer::bpf
