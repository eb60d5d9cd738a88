// tcx attach types (Linux >= 6.6). Debian 12's libbpf 1.1 headers predate them, so the values of
// enum bpf_attach_type are spelled out here (include/uapi/linux/bpf.h: BPF_TCX_INGRESS = 46).
#pragma once

#include <linux/bpf.h>

namespace netsteer::bpf {
inline constexpr auto kBpfTcxIngress = static_cast<enum bpf_attach_type>(46);
inline constexpr auto kBpfTcxEgress = static_cast<enum bpf_attach_type>(47);
}  // namespace netsteer::bpf
