// The agent's small state file (<state-dir>/state.json): what was enrolled, so a restarted agent
// can re-attach to the pins of pods whose netns still exists and clean up the rest.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <string_view>
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
// One record as a state-file entry. A pod's record never changes while it is enrolled, so the
// caller keeps this string: each save then costs a concatenation, not a re-serialisation of
// every pod (O(pods) JSON work per enrol made enrolling 1000 pods quadratic).
std::string serialize_record(const PodRecord& p);

class StateStore {
 public:
  explicit StateStore(std::string dir) : dir_(std::move(dir)) {}
  // Missing file → empty list. A corrupt file is an error (the caller logs and starts clean).
  Result<std::vector<PodRecord>> load() const;
  // Atomic: write a temp file, rename (no fsync: see state_store.cpp). records: serialize_record() outputs.
  Status save(const std::vector<std::string_view>& records) const;
  std::string path() const { return dir_ + "/state.json"; }
  bool enabled() const { return !dir_.empty(); }

 private:
  std::string dir_;
};

}  // namespace netsteer::agent
