// SPDX-License-Identifier: GPL-2.0
/* netsteer_warm: two programs that do nothing, attached by the agent for its whole life in a
 * private netns of its own (src/bpf/keep_warm.cpp), where no packet ever arrives.
 *
 * The kernel runs sk_lookup and tc programs behind static keys (bpf_sk_lookup_enabled,
 * tcx_needed_key, ingress_needed_key, egress_needed_key): the first attach on the node turns a
 * key on and the last detach turns it off, and each switch rewrites kernel text on every CPU
 * (text_poke, IPIs to all CPUs). Without these links a node with no pod pays that on the first
 * pod's enrol and again when its last pod goes: 60-140 us on the CNI ADD path here.
 */
#define BPF_NO_PRESERVE_ACCESS_INDEX
#include "vmlinux.h"

#include <bpf/bpf_helpers.h>

#define SK_PASS 1
#define NS_TC_NEXT (-1)

SEC("sk_lookup")
int netsteer_warm(struct bpf_sk_lookup *ctx)
{
	return SK_PASS;
}

SEC("tc")
int netsteer_warmtc(struct __sk_buff *skb)
{
	return NS_TC_NEXT;
}

char LICENSE[] SEC("license") = "GPL";
