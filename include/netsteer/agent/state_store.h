// The agent's small state file (<state-dir>/state.json): what was enrolled, so a restarted agent
// can re-attach to the pins of pods whose netns still exists and clean up the rest.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "netsteer/common/result.h"
#include "netsteer/netns/netns.h"
#include "netsteer/protocol/messages.h"

namespace netsteer::agent {

struct PodRecord {
  protocol::PodSpec spec;
  netns::NetnsId netns;
  bool pending = false;  // written before install, cleared after: a crash mid-enrol is detectable
  nlohmann::json capture = nlohmann::json::object();  // capture::CaptureState (saved sysctls, tc)
};

// One record as JSON (the state file's entries, and the handover's).
nlohmann::json record_to_json(const PodRecord& p);
Result<PodRecord> record_from_json(const nlohmann::json& j);

class StateStore {
 public:
  explicit StateStore(std::string dir) : dir_(std::move(dir)) {}
  // Missing file → empty list. A corrupt file is an error (the caller logs and starts clean).
  Result<std::vector<PodRecord>> load() const;
  // Atomic: write a temp file, fsync, rename.
  Status save(const std::vector<PodRecord>& pods) const;
  std::string path() const { return dir_ + "/state.json"; }
  bool enabled() const { return !dir_.empty(); }

 private:
  std::string dir_;
};

}  // namespace netsteer::agent
