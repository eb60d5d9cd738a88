// Kernel features the capture path needs or can use, detected by probing (never guessed from the
// version string), and the bpffs mount a fresh node may lack.
#pragma once

#include <string>

#include "netsteer/common/result.h"

namespace netsteer::bpf {

inline constexpr const char* kBpffsRoot = "/sys/fs/bpf";

// Mounts bpffs at root when it is not mounted there yet.
Status ensure_bpffs(const std::string& root = kBpffsRoot);

struct Features {
  std::string kernel_release;
  bool sk_lookup = false;  // BPF_PROG_TYPE_SK_LOOKUP + bpf_sk_assign, Linux >= 5.9 (required)
  bool tcx = false;        // BPF_TCX_INGRESS/EGRESS links, Linux >= 6.6 (else clsact + cls_bpf)
  bool sched_cls = false;  // BPF_PROG_TYPE_SCHED_CLS (required for the tc guard)
};
Features probe_features();
// An error naming the missing feature and the kernel that introduced it.
Status require_capture_features(const Features& f);

// How the tc guard is attached.
enum class TcMode { tcx, clsact };
const char* to_string(TcMode m);
Result<TcMode> parse_tc_mode(const std::string& s);  // "tcx", "clsact"

}  // namespace netsteer::bpf
