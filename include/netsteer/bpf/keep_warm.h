// The agent's hold on the kernel's sk_lookup and tc static keys (bpf/netsteer_warm.bpf.c).
//
// The kernel turns its sk_lookup and tc hooks on and off with static keys: the first program
// attached on a node switches a key on, the last one detached switches it off, and each switch
// patches kernel text on every CPU. KeepWarm holds one reference on each for the agent's life,
// with do-nothing programs in a private netns of the agent (empty, never reached by a packet), so
// pod enrols and removals never switch them: measured 60-140 us of the first pod's CNI ADD.
#pragma once

#include <nlohmann/json.hpp>

#include <memory>

#include "netsteer/bpf/features.h"
#include "netsteer/common/result.h"
#include "netsteer/common/unique_fd.h"
#include "netsteer/netns/netns.h"

namespace netsteer::bpf {

class KeepWarm {
 public:
  // An sk_lookup link on the private netns, and the tc program on its loopback, ingress and
  // egress: tcx links (mode tcx), or a clsact qdisc with the program as a filter (mode clsact).
  static Result<std::unique_ptr<KeepWarm>> start(TcMode mode);
  ~KeepWarm();
  KeepWarm(const KeepWarm&) = delete;
  KeepWarm& operator=(const KeepWarm&) = delete;

  // For `netsteerctl status`: the private netns's inode and the BPF link ids (bpftool link show).
  nlohmann::json to_json() const;

 private:
  struct Skeleton;
  KeepWarm();
  std::unique_ptr<Skeleton> s_;
  netns::NetnsHandle ns_;
  UniqueFd lookup_link_;
  UniqueFd tc_links_[2];  // tcx ingress, egress (mode tcx; a clsact qdisc goes with the netns)
  TcMode mode_ = TcMode::tcx;
};

}  // namespace netsteer::bpf
