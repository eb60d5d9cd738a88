// The per-pod sk_lookup steering program (bpf/netsteer_steer.bpf.c): one instance per pod, so a
// pod's program can only ever select that pod's sockets (bpf_sk_assign does not check netns).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "netsteer/common/inet.h"
#include "netsteer/common/result.h"
#include "netsteer/netns/netns.h"
#include "netsteer/protocol/messages.h"

namespace netsteer::bpf {

inline constexpr const char* kBpffsRoot = "/sys/fs/bpf";

// Mounts bpffs at root when it is not mounted there yet.
Status ensure_bpffs(const std::string& root = kBpffsRoot);

// What the running kernel offers, detected by probing (never guessed from the version string).
struct Features {
  std::string kernel_release;
  bool sk_lookup = false;  // BPF_PROG_TYPE_SK_LOOKUP + bpf_sk_assign, Linux >= 5.9
};
Features probe_features();
// An error naming the missing feature and the kernel that introduced it.
Status require_capture_features(const Features& f);

struct SteerConfig {
  std::vector<IpAddr> pod_ips;
  protocol::Exclusions exclusions;
};

struct SteerStats {
  uint64_t lookups = 0, inbound_assigned = 0, outbound_assigned = 0, passed_local = 0,
           passed_excluded = 0, passed_bypass = 0, drop_no_listener = 0, drop_assign_failed = 0;
};

class SteerProgram {
 public:
  // Loads a fresh instance, fills its maps, links it to `ns` (bpf_link, BPF_SK_LOOKUP) and pins
  // program, link and maps under pin_dir. Any error leaves nothing behind.
  static Result<std::unique_ptr<SteerProgram>> create(const std::string& pin_dir, const netns::NetnsHandle& ns,
                                                      const SteerConfig& cfg);
  ~SteerProgram();  // closes fds; pins and link stay (the pod stays fail-closed)

  // Slot 0: the 15001 listener, slot 1: the 15006 listener.
  Status set_listeners(int outbound_fd, int inbound_fd);
  Status add_bypass(const SockAddr& local);
  Status remove_bypass(const SockAddr& local);
  Result<SteerStats> stats() const;
  uint32_t prog_id() const;
  uint32_t link_id() const;
  // Detaches the link and removes every pin and pin_dir.
  Status destroy();

 private:
  SteerProgram();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace netsteer::bpf
