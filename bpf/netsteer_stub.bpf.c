// SPDX-License-Identifier: GPL-2.0
/* netsteer_stub: a pod's sk_lookup program when the agent runs the shared steering program.
 *
 * The object creates the pod's maps (the same as netsteer_steer's) and a program of a few
 * instructions: it puts the pod's index (ns_config.pod_idx) where the shared program reads it and
 * tail-calls it. The shared program finds the pod's maps at that index (netsteer_shared.bpf.c).
 * A pod's enrol then verifies ~20 instructions instead of the whole steering logic (1,610), which
 * took most of an enrol's CPU (bench/RESULTS.md, "Pod start-up").
 *
 * sk_lookup has no way to tell which netns it runs in (bpf_get_netns_cookie is refused for this
 * program type, Linux 6.18 included), so each netns needs a program of its own that says so.
 * Fail closed: no index, or no shared program to call, drops.
 */
#define BPF_NO_PRESERVE_ACCESS_INDEX
#include "vmlinux.h"

#include <bpf/bpf_helpers.h>

#include "netsteer_steer.h"

/* The agent's (reused from its pins before load). */
struct ns_steer_scratch_map ns_steer_scratch SEC(".maps");
struct ns_steer_progs_map ns_steer_progs SEC(".maps");

SEC("sk_lookup")
int netsteer_steer(struct bpf_sk_lookup *ctx)
{
	__u32 zero = 0;
	__u32 *idx = bpf_map_lookup_elem(&ns_steer_scratch, &zero);
	struct ns_config *cfg = ns_get_config();

	if (!idx || !cfg || !cfg->pod_idx)
		return SK_DROP;
	*idx = cfg->pod_idx;
	bpf_tail_call(ctx, &ns_steer_progs, 0);
	return SK_DROP;
}

char LICENSE[] SEC("license") = "GPL";
