// Enrolment state manager: pods by uid, each owning its netns handle, listeners, capture and relay
// registration. The control server calls it; it runs netns work on the NetnsExecutor.
#pragma once

#include <nlohmann/json.hpp>

#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "netsteer/agent/listeners.h"
#include "netsteer/agent/state_store.h"
#include "netsteer/common/result.h"
#include "netsteer/netns/netns.h"
#include "netsteer/protocol/messages.h"

namespace netsteer::agent {

struct Pod {
  protocol::PodSpec spec;
  netns::NetnsHandle netns;
  PodListeners listeners;
  std::chrono::system_clock::time_point enrolled_at;

  nlohmann::json to_json() const;
};

struct EnrolStats {
  uint64_t enrol_ok = 0, enrol_failed = 0, enrol_noop = 0, replaced = 0, unenrolled = 0;
};

class EnrolmentManager {
 public:
  // `store` (optional) receives the enrolled set after every change.
  explicit EnrolmentManager(netns::NetnsExecutor& exec, const StateStore* store = nullptr);
  ~EnrolmentManager();

  // Idempotent by (uid, netns id): same pair → no-op; new netns for a known uid → replace.
  // Returns "enrolled", "unchanged" or "replaced".
  Result<std::string> enrol(const protocol::PodSpec& spec, netns::NetnsHandle ns);
  // By uid, or by netns identity when uid is empty.
  Status unenrol(const std::string& uid, std::optional<netns::NetnsId> id = std::nullopt);
  nlohmann::json list() const;
  nlohmann::json pod_json(const std::string& uid) const;  // null when unknown
  size_t size() const;
  EnrolStats stats() const;
  // Closes every pod's sockets (shutdown).
  void clear();

 private:
  Result<std::unique_ptr<Pod>> build(const protocol::PodSpec& spec, netns::NetnsHandle ns);
  void teardown(Pod& pod);
  void persist();  // with mu_ held

  netns::NetnsExecutor& exec_;
  const StateStore* store_;
  mutable std::mutex mu_;
  std::map<std::string, std::unique_ptr<Pod>> pods_;
  EnrolStats stats_;
};

}  // namespace netsteer::agent
