// SPDX-License-Identifier: GPL-2.0
/* netsteer_steer: a pod's own sk_lookup program, on the pod's own maps (see netsteer_steer.h).
 * The agent uses it where the shared program (netsteer_shared.bpf.c) cannot load, or when told to
 * (--steer-program per-pod): each pod then pays a verifier run (~2 ms of CPU) at enrol.
 *
 * Built with BPF_NO_PRESERVE_ACCESS_INDEX: no CO-RE relocations, so a per-pod load does not make
 * libbpf parse the kernel's BTF (12 ms → 0.3 ms per load, see DESIGN.md).
 */
#define BPF_NO_PRESERVE_ACCESS_INDEX
#include "vmlinux.h"

#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "netsteer_steer.h"

SEC("sk_lookup")
int netsteer_steer(struct bpf_sk_lookup *ctx)
{
	const struct ns_pod_maps m = {
		.sockets = &ns_sockets,
		.bypass = &ns_bypass,
		.stats = &ns_stats,
		.pod_addrs = &ns_pod_addrs,
		.ex_in_port = &ns_ex_in_port,
		.ex_out_port = &ns_ex_out_port,
		.ex_out_cidr = &ns_ex_out_cidr,
		.ex_in_src = &ns_ex_in_src,
		.udp_out_port = &ns_udp_out_port,
		.udp_in_port = &ns_udp_in_port,
		.config = &ns_config,
	};
	return ns_steer(ctx, &m);
}

char LICENSE[] SEC("license") = "GPL";
