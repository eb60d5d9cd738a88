// Least privilege for netsteerd: keep only the capabilities the agent uses, drop the rest from
// the effective, permitted, inheritable, ambient and bounding sets, and set no_new_privs.
// Capabilities are per thread: call before any thread starts.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "netsteer/common/result.h"

namespace netsteer::agent {

// CAP_SYS_ADMIN: setns into pod netns, mount bpffs; CAP_NET_ADMIN: rules, routes, sysctls, tc,
// IP_TRANSPARENT, SO_MARK, attaching programs; CAP_BPF: programs and maps (Linux >= 5.8);
// CAP_SYS_RESOURCE: RLIMIT_MEMLOCK for maps before 5.11. deploy/daemonset.yaml grants the same set.
const std::vector<int>& kept_capabilities();

struct PrivilegeReport {
  uint64_t effective = 0;  // capability bits left
  std::vector<std::string> kept, missing;  // of kept_capabilities(); missing: not held at start
};

Result<PrivilegeReport> drop_privileges();

}  // namespace netsteer::agent
