// Enrolment state manager: pods by uid, each owning its netns handle, listeners, capture and relay
// registration. The control server calls it; netns work runs on the NetnsExecutor.
#pragma once

#include <nlohmann/json.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <thread>
#include <map>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>

#include "netsteer/agent/guard_pace.h"
#include "netsteer/agent/handover.h"
#include "netsteer/agent/listeners.h"
#include "netsteer/agent/state_store.h"
#include "netsteer/bpf/features.h"
#include "netsteer/capture/pod_capture.h"
#include "netsteer/common/result.h"
#include "netsteer/dns/dns.h"
#include "netsteer/udp/udp.h"
#include "netsteer/metrics/metrics.h"
#include "netsteer/netns/netns.h"
#include "netsteer/protocol/messages.h"
#include "netsteer/relay/relay.h"

namespace netsteer::agent {

// The data path a pod is enrolled into. Without one (unit tests) pods get listeners only:
// capture is never installed without a relay to carry what it captures.
struct Dataplane {
  relay::Relay* relay = nullptr;
  std::string pin_root;
  bpf::TcMode tc_mode = bpf::TcMode::tcx;
  // false (`netsteerd --capture none`): listeners + relay only, no BPF, rules or routes in the
  // pod — for capture done by something else (iptables REDIRECT/TPROXY), e.g. side-by-side benchmarks.
  bool capture = true;
  // Per pod: concurrent inbound relay connections (the size of its sk_lookup bypass map).
  uint32_t max_inbound_conns = bpf::kDefaultMaxInboundConns;
  // The UDP proxy for captured DNS and UDP (nullptr: no UDP of any pod is captured).
  udp::Proxy* udp = nullptr;
  bool dns = true;  // capture pods' DNS (agent-wide; a pod may opt out)
  // The agent-wide --dns-upstream, which the relay also applies to TCP DNS (a pod's own wins).
  std::optional<SockAddr> dns_upstream;
  // Agent-wide hand-off defaults (--proxy-outbound/--proxy-inbound/--proxy-pod-tlvs); a pod's own
  // "proxy" wins as a whole.
  protocol::ProxyHandoff proxy;
  // tcx: a non-strict pod's tc guard is attached after its enrol answered (GuardAttacher);
  // false (`--guard-attach sync`): during the enrol, as for strict pods.
  bool defer_guard = true;
  int guard_quiet_ms = 20;  // --guard-quiet-ms (GuardAttacher)
  size_t bpf_spares = 4;    // --bpf-spares (PodBpfPool)
  bool guard_pace = true;   // --guard-pace (GuardPace)
};

// A non-strict pod's tc guard, attached after its enrol has answered (see GuardAttacher).
struct GuardJob {
  std::mutex mu;           // held while the links are being made; teardown takes it to cancel
  bool cancelled = false;  // the pod left or was handed over: the links are dropped
  std::string uid;
  netns::NetnsHandle netns;  // a dup: the attach runs in the pod netns
  std::vector<int> ifindexes;
  UniqueFd prog_ingress, prog_egress;  // dups of the pod's guard programs, when they are loaded
  // Otherwise the attacher loads them on the maps they share with the pod, opened from its pins
  // then (a pending job holds no map fds: 1000 pending pods would hold 8,000), off the enrol's
  // path; the manager pins what it loaded when it adopts the first links.
  std::string pin_dir;
  std::optional<bpf::LoadedGuard> loaded;
  // The ingress link of ifindexes.back(), made before an enrol came in: the egress one follows at
  // the next quiet moment (each link is one grace period an enrol would wait out).
  UniqueFd ingress_made;
};

// One thread that attaches deferred tc guards while no enrol is running: a tcx attach holds rtnl
// through an RCU grace period, and an enrol's rules and routes need rtnl, so an attach running
// beside an enrol would put the grace period back on the enrol's path. When a link may start is
// GuardPace's decision (guard_pace.h: a quiet moment, or a window the pods' pace leaves between two
// enrols); it makes one interface's two links, checking again before each. An enrol that arrives
// while the first link is made waits out that grace period only: the second waits for the next
// chance.
class GuardAttacher {
 public:
  // `deliver` runs on the attacher's thread with the links made for one interface.
  using Deliver = std::function<void(const std::shared_ptr<GuardJob>&, int ifindex, UniqueFd in, UniqueFd eg)>;
  GuardAttacher(Deliver deliver, std::chrono::milliseconds quiet, bool pace);
  ~GuardAttacher();  // pending jobs are dropped (a restarted agent attaches at restore)
  void push(std::shared_ptr<GuardJob> job);
  void enrol_started();
  void enrol_finished();
  size_t pending() const;

 private:
  using Clock = GuardPace::Clock;
  void run();
  Deliver deliver_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<GuardJob>> q_;
  // Lock order: mu_, then a job's mu, then pace_mu_ (innermost: nothing is taken while it is held).
  // An enrol's start and end take mu_ as well, so the loop's wait on cv_ misses no wake-up.
  mutable std::mutex pace_mu_;
  GuardPace pace_;
  std::atomic<bool> enrol_arrived_{false};  // since the attacher's last link attempt began
  bool stop_ = false;
  std::thread thread_;
};

struct Pod {
  protocol::PodSpec spec;
  netns::NetnsHandle netns;
  PodListeners listeners;
  std::unique_ptr<capture::PodCapture> capture;
  std::shared_ptr<relay::PodContext> relay_ctx;
  std::shared_ptr<udp::PodUdp> udp_ctx;  // with its DNS counters when DNS is captured
  std::chrono::system_clock::time_point enrolled_at;
  double enrol_ms = 0;  // fd received → capture ready
  std::string state_record;  // its state-file entry, serialised once (see serialize_record)
  // Its listeners lent to another process (netsteerctl exec); the relay does not accept on them.
  struct Lease {
    uint64_t id = 0;
    std::vector<std::string> listeners;
    std::optional<uint32_t> exempt_uid;  // `uidrange U-U lookup main` at kExemptPriority
    std::string holder;
  };
  std::optional<Lease> lease;
  std::shared_ptr<GuardJob> guard_job;  // while its tc guard waits for the GuardAttacher

  nlohmann::json to_json(bool detail) const;
};

struct EnrolStats {
  uint64_t enrol_ok = 0, enrol_failed = 0, enrol_noop = 0, replaced = 0, unenrolled = 0, adopted = 0,
           stale_cleaned = 0;
  std::map<std::string, uint64_t> failed_by_reason;  // errno name (bounded set), e.g. EEXIST
};

// Node totals: pods still enrolled plus every pod that has left (counters never go down).
struct NodeTotals {
  relay::DirectionTotals relay[3];  // by relay::Direction
  bpf::PodBpfStats bpf;
  dns::Totals dns;
  udp::Totals udp;
};

class EnrolmentManager {
 public:
  // `store` (optional) receives the enrolled set after every change.
  explicit EnrolmentManager(netns::NetnsExecutor& exec, const StateStore* store = nullptr,
                            std::optional<Dataplane> dp = std::nullopt);
  ~EnrolmentManager();

  // Idempotent by (uid, netns id): same pair → no-op; new netns for a known uid → replace.
  // Returns "enrolled", "unchanged" or "replaced".
  Result<std::string> enrol(const protocol::PodSpec& spec, netns::NetnsHandle ns);
  // By uid, or by netns identity when uid is empty.
  Status unenrol(const std::string& uid, std::optional<netns::NetnsId> id = std::nullopt);
  // Agent start: take over the pods of the state file whose netns still exists (pins, links,
  // rules stay in place; new listeners replace the dead agent's), clean up the rest and any
  // pin directory nobody owns.
  void restore(const std::vector<PodRecord>& records);
  // Hitless upgrade, old agent: every pod's record with dups of its netns and listener fds.
  std::vector<HandoverPod> export_pods() const;
  // The handover failed and this agent serves on: queue again the tc guards export_pods() stopped.
  void resume_guards();

  // Lends a pod's listeners (by uid or "namespace/name") to the requester: the relay stops
  // accepting on them (they stay in the socket map: capture and fail-closed are unchanged); with an
  // exempt uid, that uid's connections from inside the pod skip capture. Returns the reply data and
  // the fds (netns, then the listeners in order); end_lease undoes it.
  struct Granted {
    nlohmann::json data;
    std::vector<UniqueFd> fds;
    std::string uid;
    uint64_t id = 0;
  };
  Result<Granted> lease(const protocol::Request& req, const std::string& holder);
  void end_lease(const std::string& uid, uint64_t id, const std::string& why);
  size_t leases() const;
  // Hitless upgrade, new agent: takes the pods over with the received sockets (no new listeners,
  // pins re-opened in place) and writes the state file.
  void adopt(std::vector<HandoverPod> pods);
  // Old agent after a handover: the state file belongs to the new agent now.
  void detach_store();
  nlohmann::json list() const;
  // null when unknown; detail: capture (with BPF object info and counters), relay, DNS, UDP, lease.
  nlohmann::json pod_json(const std::string& uid, bool detail = true) const;
  // CHECK: the pod is enrolled and its capture is in place.
  Status check(const std::string& uid) const;
  // `snapshot`: unenrols every pod whose uid is not in `existing`; returns the uids removed.
  std::vector<std::string> retain_only(const std::set<std::string>& existing);
  size_t size() const;
  EnrolStats stats() const;
  // The ahead-of-time loaded BPF programs for the next pod: "ready", "loading", "none" or "off".
  std::string bpf_spare() const;
  size_t bpf_spares() const;
  // Pods whose deferred tc guard is not attached yet (0 when guards are attached synchronously).
  size_t guards_pending() const;
  NodeTotals totals() const;
  // fd received → capture ready, in seconds, for every successful enrolment.
  metrics::Histogram::Snapshot enrol_latency() const { return enrol_seconds_.snapshot(); }
  // Agent shutdown: stop relaying and close listeners. With remove_capture=false (the default) the
  // capture stays installed and pinned, so the pod fails closed until the next agent takes over.
  void clear(bool remove_capture = false);

 private:
  // The pod's DNS is captured: a BPF data plane with a DNS proxy, and the pod did not opt out.
  void release_lease(Pod& pod);  // relay resumes, exempt rule removed (mu_ held)
  uint64_t lease_seq_ = 0;
  bool captures_dns(const protocol::PodSpec& spec) const {
    return dp_ && dp_->capture && dp_->udp && dp_->dns && !spec.no_dns;
  }
  // The pod's listed UDP ports, when the agent can capture them (else an error naming why).
  Result<protocol::UdpPorts> udp_ports(const protocol::PodSpec& spec) const;
  // `started`: when the request arrived (a pod's enrol_ms runs from there to capture ready).
  // Learns the netns cookie (into pod->netns.id()); with `recorded` (restore), fails with ESTALE
  // before binding or installing anything when the cookie shows `ns` is not the recorded netns.
  // `identified` runs once the full identity (cookie included) is known and before anything is
  // bound or installed: enrol writes its pending record there.
  Result<std::unique_ptr<Pod>> build(const protocol::PodSpec& spec, netns::NetnsHandle ns,
                                     const capture::CaptureState* previous,
                                     std::optional<PodListeners> given = std::nullopt,
                                     std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now(),
                                     const netns::NetnsId* recorded = nullptr,
                                     const std::function<void(const netns::NetnsId&)>& identified = {});
  void teardown(Pod& pod, bool remove_capture);
  Status attach_data_path(Pod& pod);
  void persist(const PodRecord* pending = nullptr);  // with mu_ held
  std::set<std::string> stored_uids_;  // the uids the store has a record of now
  std::set<std::string> removed_;  // stored uids whose pod has gone since: a del each at the next persist
  std::set<std::string> unstored_;  // pods whose record is not serialised or not in the store yet
  std::string pin_dir(const std::string& uid) const { return dp_ ? dp_->pin_root + "/" + uid : ""; }

  netns::NetnsExecutor& exec_;
  const StateStore* store_;
  std::optional<Dataplane> dp_;
  // The next pod's BPF objects, loaded by the pool's own low-priority thread after each enrol.
  std::shared_ptr<bpf::PodBpfPool> bpf_pool_;
  void refill_bpf_pool();
  mutable std::mutex mu_;
  // An enrol and a netns lookup are O(log n) in the pods enrolled, and so is persist's append of
  // what changed, except two walks: the journal's compaction over every pod (amortised: once the
  // journal holds twice the records it describes) and, after a removal, the stored uids (the
  // unenrol path; bench/RESULTS.md, "Enrol at 1000 pods").
  using PodMap = std::map<std::string, std::unique_ptr<Pod>>;
  PodMap pods_;
  std::multimap<uint64_t, Pod*> by_netns_ino_;  // pods_ indexed by their netns inode
  void put_pod(std::unique_ptr<Pod> pod);  // into pods_ (replacing its uid's) and the index
  PodMap::iterator erase_pod(PodMap::iterator it);
  // The enrolled pod whose netns is `id`: dev 0 matches any device (senders that only know the inode).
  PodMap::iterator find_by_netns(const netns::NetnsId& id);
  void queue_guard(Pod& pod);  // mu_ held
  // Takes the links of a deferred guard (attacher thread; takes mu_ only to pin them).
  void deliver_guard(const std::shared_ptr<GuardJob>& job, int ifindex, UniqueFd in, UniqueFd eg);
  // Stopped (its thread joined) first thing in the destructor.
  std::unique_ptr<GuardAttacher> guards_;
  EnrolStats stats_;
  NodeTotals retired_;  // counters of pods that have left
  metrics::Histogram enrol_seconds_{{0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5}};
};

}  // namespace netsteer::agent
