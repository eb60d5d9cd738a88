#include "netsteer/bpf/features.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/magic.h>
#include <sys/mount.h>
#include <sys/statfs.h>
#include <sys/utsname.h>

#include <filesystem>

#include "netsteer/bpf/tcx.h"

namespace netsteer::bpf {

Status ensure_bpffs(const std::string& root) {
  struct statfs sfs {};
  if (::statfs(root.c_str(), &sfs) == 0 && sfs.f_type == BPF_FS_MAGIC) return {};
  std::error_code ec;
  std::filesystem::create_directories(root, ec);
  if (::mount("bpffs", root.c_str(), "bpf", 0, "mode=0700") < 0)
    return Error::from_errno(errno, "mount bpffs at " + root);
  return {};
}

Features probe_features() {
  Features f;
  utsname u{};
  if (::uname(&u) == 0) f.kernel_release = u.release;
  f.sk_lookup = libbpf_probe_bpf_prog_type(BPF_PROG_TYPE_SK_LOOKUP, nullptr) > 0 &&
                libbpf_probe_bpf_helper(BPF_PROG_TYPE_SK_LOOKUP, BPF_FUNC_sk_assign, nullptr) > 0;
  f.sched_cls = libbpf_probe_bpf_prog_type(BPF_PROG_TYPE_SCHED_CLS, nullptr) > 0;
  // Querying the tcx attach point of loopback is read-only; kernels before 6.6 reject the
  // attach type with EINVAL.
  LIBBPF_OPTS(bpf_prog_query_opts, q);
  f.tcx = bpf_prog_query_opts(1, kBpfTcxIngress, &q) == 0;
  return f;
}

Status require_capture_features(const Features& f) {
  if (!f.sk_lookup)
    return Error::msg("kernel " + f.kernel_release +
                          " lacks BPF sk_lookup (BPF_PROG_TYPE_SK_LOOKUP with bpf_sk_assign, needs Linux >= 5.9)",
                      EOPNOTSUPP);
  if (!f.sched_cls)
    return Error::msg("kernel " + f.kernel_release + " lacks BPF tc programs (BPF_PROG_TYPE_SCHED_CLS, cls_bpf)",
                      EOPNOTSUPP);
  return {};
}

const char* to_string(TcMode m) { return m == TcMode::tcx ? "tcx" : "clsact"; }

Result<TcMode> parse_tc_mode(const std::string& s) {
  if (s == "tcx") return TcMode::tcx;
  if (s == "clsact") return TcMode::clsact;
  return Error::msg("unknown tc attach mode '" + s + "' (tcx or clsact)", EINVAL);
}

}  // namespace netsteer::bpf
