#include "netsteer/agent/enrolment.h"

#include <spdlog/spdlog.h>

#include "netsteer/common/log.h"

namespace netsteer::agent {

using nlohmann::json;

json Pod::to_json() const {
  json j = protocol::pod_to_json(spec);
  j["netns_ino"] = netns.id().ino;
  j["netns_dev"] = netns.id().dev;
  j["listeners"] = listeners.to_json();
  j["enrolled_at"] = std::chrono::duration_cast<std::chrono::seconds>(enrolled_at.time_since_epoch()).count();
  return j;
}

EnrolmentManager::EnrolmentManager(netns::NetnsExecutor& exec, const StateStore* store)
    : exec_(exec), store_(store) {}

void EnrolmentManager::persist() {
  if (!store_ || !store_->enabled()) return;
  std::vector<PodRecord> recs;
  for (const auto& [uid, p] : pods_) recs.push_back(PodRecord{p->spec, p->netns.id(), false});
  // The live enrolment stays authoritative; a failed write is logged, not fatal.
  if (auto st = store_->save(recs); !st.ok()) spdlog::warn("state file: {}", st.error().message);
}
EnrolmentManager::~EnrolmentManager() { clear(); }

Result<std::unique_ptr<Pod>> EnrolmentManager::build(const protocol::PodSpec& spec, netns::NetnsHandle ns) {
  auto pod = std::make_unique<Pod>();
  pod->spec = spec;
  pod->netns = std::move(ns);
  pod->enrolled_at = std::chrono::system_clock::now();
  auto listeners = exec_.run(pod->netns, [] { return create_listeners(protocol::kAgentMark); });
  if (!listeners.ok()) return std::move(listeners).error().wrap("create listeners in pod netns");
  pod->listeners = std::move(*listeners);
  return pod;
}

void EnrolmentManager::teardown(Pod& pod) {
  // Listeners close with the Pod object; the SOCKMAP entries vanish with them.
  pod.listeners = {};
}

Result<std::string> EnrolmentManager::enrol(const protocol::PodSpec& spec, netns::NetnsHandle ns) {
  std::lock_guard lk(mu_);
  auto it = pods_.find(spec.uid);
  if (it != pods_.end() && it->second->netns.id() == ns.id()) {
    ++stats_.enrol_noop;
    return std::string("unchanged");
  }
  // A netns can belong to one pod only.
  for (const auto& [uid, p] : pods_) {
    if (uid != spec.uid && p->netns.id() == ns.id()) {
      ++stats_.enrol_failed;
      return Error::msg("netns (ino " + std::to_string(ns.id().ino) + ") is already enrolled as pod " + uid,
                        EEXIST);
    }
  }
  bool replacing = it != pods_.end();
  if (replacing) {
    // The old sandbox is gone or being replaced: release it before binding the same ports anew.
    spdlog::info("pod {}: new netns (ino {}), replacing the enrolment of netns ino {}", spec.uid,
                 ns.id().ino, it->second->netns.id().ino);
    teardown(*it->second);
    pods_.erase(it);
    ++stats_.replaced;
  }
  auto pod = build(spec, std::move(ns));
  if (!pod.ok()) {
    ++stats_.enrol_failed;
    spdlog::warn("pod {}: enrolment failed: {}", spec.uid, pod.error().message);
    return std::move(pod).error();
  }
  spdlog::info("pod {} ({}/{}): enrolled, netns ino {}, listeners {}", spec.uid, spec.namespace_, spec.name,
               (*pod)->netns.id().ino, (*pod)->listeners.family);
  pods_[spec.uid] = std::move(*pod);
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
    for (auto i = pods_.begin(); i != pods_.end(); ++i) {
      // dev 0 = "any device": senders that only know the inode.
      if (i->second->netns.id().ino == id->ino && (id->dev == 0 || i->second->netns.id().dev == id->dev)) {
        it = i;
        break;
      }
    }
  }
  if (it == pods_.end()) {
    return Error::msg(uid.empty() ? "no enrolled pod with netns ino " + std::to_string(id ? id->ino : 0)
                                  : "unknown pod '" + uid + "'",
                      ENOENT);
  }
  spdlog::info("pod {}: unenrolled", it->first);
  teardown(*it->second);
  pods_.erase(it);
  ++stats_.unenrolled;
  persist();
  return {};
}

json EnrolmentManager::list() const {
  std::lock_guard lk(mu_);
  json a = json::array();
  for (const auto& [uid, p] : pods_) a.push_back(p->to_json());
  return a;
}

json EnrolmentManager::pod_json(const std::string& uid) const {
  std::lock_guard lk(mu_);
  auto it = pods_.find(uid);
  return it == pods_.end() ? json() : it->second->to_json();
}

size_t EnrolmentManager::size() const {
  std::lock_guard lk(mu_);
  return pods_.size();
}

EnrolStats EnrolmentManager::stats() const {
  std::lock_guard lk(mu_);
  return stats_;
}

void EnrolmentManager::clear() {
  std::lock_guard lk(mu_);
  for (auto& [uid, p] : pods_) teardown(*p);
  pods_.clear();
}

}  // namespace netsteer::agent
