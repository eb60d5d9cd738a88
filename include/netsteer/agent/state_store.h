// The agent's small state file (<state-dir>/state.json): what was enrolled, so a restarted agent
// can re-attach to the pins of pods whose netns still exists and clean up the rest.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <string_view>
#include <vector>

#include "netsteer/common/result.h"
#include "netsteer/common/unique_fd.h"
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

// The state is a snapshot (state.json) plus an append-only journal (state.journal): an enrol
// appends its record (twice: pending, then done) and an unenrol a deletion, one write() each,
// whatever the number of pods; save() compacts both into a new snapshot. Each snapshot has a
// generation, and the journal's first line names the generation it continues, so a crash
// between writing a snapshot and starting its journal never replays operations twice.
class StateStore {
 public:
  explicit StateStore(std::string dir) : dir_(std::move(dir)) {}
  ~StateStore();
  // Missing files → empty list. A corrupt snapshot or journal line is an error (the caller logs
  // and starts clean), except a torn last journal line (a crash mid-append), which is ignored.
  Result<std::vector<PodRecord>> load() const;
  // Compaction: the whole set as a new snapshot (atomic rename, no fsync: see state_store.cpp),
  // then an empty journal for it. records: serialize_record() outputs.
  Status save(const std::vector<std::string_view>& records) const;
  // Appends to the journal of the last save() (which must have happened in this process).
  Status append_put(std::string_view record) const;
  Status append_del(const std::string& uid) const;
  size_t journal_entries() const { return journal_entries_; }
  // After a failed append: the next write is a full save() again.
  void close_journal() const { journal_.reset(); }
  bool journal_open() const { return journal_.valid(); }
  std::string path() const { return dir_ + "/state.json"; }
  std::string journal_path() const { return dir_ + "/state.journal"; }
  bool enabled() const { return !dir_.empty(); }

 private:
  Status append(const std::string& line) const;
  std::string dir_;
  mutable uint64_t generation_ = 0;
  mutable UniqueFd journal_;
  mutable size_t journal_entries_ = 0;
};

}  // namespace netsteer::agent
