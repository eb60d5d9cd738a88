// The steering program shared by every pod (bpf/netsteer_shared.bpf.c): loaded once per agent,
// where a program of each pod's own would be verified at every enrol (~2 ms of CPU, most of an
// enrol's). Each pod keeps its own maps and a stub program (bpf/netsteer_stub.bpf.c) linked to its
// netns; the stub hands the pod's index to this program, which finds the pod's maps at that index
// of its map-in-map arrays. This class owns those arrays and the indexes.
//
// Everything is pinned under <pin_root>/_shared_v1 and outlives the agent like the pods' pins: a
// restarted or upgraded agent re-opens the arrays (the pods registered there keep working), loads
// its own copy of the program and swaps it in for every pod at once.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "netsteer/bpf/objects.h"
#include "netsteer/common/result.h"

namespace netsteer::bpf {

// A pod's maps, in the order of the shared program's arrays (ns_all_<name without "ns_">).
inline constexpr const char* kPodMapNames[] = {"ns_sockets",     "ns_bypass",    "ns_stats",        "ns_pod_addrs",
                                               "ns_ex_in_port",  "ns_ex_out_port", "ns_ex_out_cidr", "ns_ex_in_src",
                                               "ns_udp_out_port", "ns_udp_in_port", "ns_config"};
inline constexpr size_t kPodMaps = sizeof(kPodMapNames) / sizeof(kPodMapNames[0]);
// The pin directory under the pin root (bpffs refuses names with a dot; a pod uid is a UUID).
inline constexpr const char* kSharedSteerDir = "_shared_v1";

class SharedSteer {
 public:
  // Opens <pin_root>/_shared_v1 or creates it, loads this agent's copy of the program and makes it
  // the one every stub calls. An error says which kernel feature is missing (map-in-map arrays
  // of sockmaps, tail calls from sk_lookup): the agent then loads a program per pod instead.
  static Result<std::shared_ptr<SharedSteer>> open(const std::string& pin_root);
  ~SharedSteer();
  SharedSteer(const SharedSteer&) = delete;
  SharedSteer& operator=(const SharedSteer&) = delete;

  // For a stub's load: the maps it shares with this program (bpf_map__reuse_fd).
  int scratch_fd() const;
  int progs_fd() const;

  // Puts a pod's maps (map_fd(name) for each of kPodMapNames) at a free index and returns it.
  // E2BIG when every index is taken.
  Result<uint32_t> add(const std::function<int(const char*)>& map_fd);
  // A pod that was registered before (restart, handover) at idx: fine when its maps are there;
  // fills an empty index; EEXIST when another pod's maps are there.
  Status claim(uint32_t idx, const std::function<int(const char*)>& map_fd);
  // Takes a pod's maps out of idx: only entries that are still that pod's maps (by map id).
  void remove(uint32_t idx, const std::function<int(const char*)>& map_fd);

  size_t pods();
  uint32_t prog_id() const;
  nlohmann::json describe();
  // Unpins everything (the agent's last pod is gone and no other agent uses the pin root).
  void remove_pins();

 private:
  SharedSteer(BpfObjects objs) : objs_(std::move(objs)) {}
  int outer(size_t i) const;
  BpfObjects objs_;
  std::mutex mu_;
  std::vector<bool> used_;  // by index; index 0 is never used
  uint32_t next_ = 1;
};

}  // namespace netsteer::bpf
