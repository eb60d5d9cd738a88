#include "netsteer/agent/privileges.h"

#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

namespace netsteer::agent {

namespace {

#ifndef CAP_BPF
#define CAP_BPF 39
#endif

const char* cap_name(int c) {
  switch (c) {
    case CAP_SYS_ADMIN: return "CAP_SYS_ADMIN";
    case CAP_NET_ADMIN: return "CAP_NET_ADMIN";
    case CAP_BPF: return "CAP_BPF";
    case CAP_SYS_RESOURCE: return "CAP_SYS_RESOURCE";
    case CAP_NET_BIND_SERVICE: return "CAP_NET_BIND_SERVICE";
    case CAP_NET_RAW: return "CAP_NET_RAW";
    default: return "?";
  }
}

int last_cap() {
  // /proc/sys/kernel/cap_last_cap: the kernel's highest capability (newer than our headers too).
  FILE* f = std::fopen("/proc/sys/kernel/cap_last_cap", "r");
  int n = CAP_LAST_CAP;
  if (f) {
    if (std::fscanf(f, "%d", &n) != 1) n = CAP_LAST_CAP;
    std::fclose(f);
  }
  return n;
}

}  // namespace

const std::vector<int>& kept_capabilities() {
  // CAP_NET_BIND_SERVICE: the DNS proxy answers from the server's address and port 53.
  // CAP_NET_RAW: the UDP proxy's raw sockets (replies to inbound UDP clients from the port the app
  // holds, ICMP errors reflected to apps) and SO_BINDTODEVICE on inbound delivery sockets.
  static const std::vector<int> v{CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF, CAP_SYS_RESOURCE, CAP_NET_BIND_SERVICE,
                                  CAP_NET_RAW};
  return v;
}

Result<PrivilegeReport> drop_privileges() {
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2]{};
  if (::syscall(SYS_capget, &hdr, data) != 0) return Error::from_errno(errno, "capget");
  uint64_t permitted = (uint64_t{data[1].permitted} << 32) | data[0].permitted;
  PrivilegeReport rep;
  uint64_t keep = 0;
  for (int c : kept_capabilities()) {
    if (c <= last_cap() && (permitted >> c & 1)) {
      keep |= uint64_t{1} << c;
      rep.kept.push_back(cap_name(c));
    } else {
      rep.missing.push_back(cap_name(c));
    }
  }
  // Bounding set first (needs CAP_SETPCAP, which goes with the capset below).
  for (int c = 0; c <= last_cap(); ++c) {
    if (keep >> c & 1) continue;
    if (::prctl(PR_CAPBSET_DROP, c, 0, 0, 0) != 0 && errno != EINVAL && errno != EPERM)
      return Error::from_errno(errno, "drop capability " + std::to_string(c) + " from the bounding set");
  }
  (void)::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
  for (auto& d : data) d.effective = d.permitted = d.inheritable = 0;
  data[0].effective = data[0].permitted = static_cast<uint32_t>(keep);
  data[1].effective = data[1].permitted = static_cast<uint32_t>(keep >> 32);
  if (::syscall(SYS_capset, &hdr, data) != 0) return Error::from_errno(errno, "capset");
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return Error::from_errno(errno, "PR_SET_NO_NEW_PRIVS");
  rep.effective = keep;
  return rep;
}

}  // namespace netsteer::agent
