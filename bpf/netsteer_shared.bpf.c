// SPDX-License-Identifier: GPL-2.0
/* netsteer_shared: the steering logic (netsteer_steer.h) loaded once per agent for all pods.
 *
 * Each pod's stub (netsteer_stub.bpf.c) writes its index to ns_steer_scratch and tail-calls this
 * program; the pod's maps are the entries at that index of the map-in-map arrays below (the agent
 * puts them there before it links the stub to the pod netns, and takes them out after the link is
 * gone). An index with no maps fails closed.
 *
 * The arrays, the scratch map and the program array are pinned under <pin root>/_shared_v1 and
 * outlive the agent like the pods' pins: a restarted or upgraded agent re-opens them, loads its
 * own copy of this program and swaps it into ns_steer_progs (one atomic update for every pod).
 */
#define BPF_NO_PRESERVE_ACCESS_INDEX
#define NS_NO_POD_MAPS
#include "vmlinux.h"

#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "netsteer_steer.h"

struct ns_steer_scratch_map ns_steer_scratch SEC(".maps");
struct ns_steer_progs_map ns_steer_progs SEC(".maps");

/* The inner-map template of each array is a map of a pod's stub object (the agent sets it before
 * load: bpf_map__set_inner_map_fd), so the arrays take exactly the maps a pod has. (An __array()
 * of the named types would also do, but clang emits only a forward declaration of the key and
 * value types two pointers away, and libbpf then cannot size them.) */
#define NS_OUTER(name, inner)                             \
	struct {                                          \
		__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS); \
		__uint(max_entries, NS_POD_MAX);          \
		__type(key, __u32);                       \
		__type(value, __u32);                     \
	} name SEC(".maps")

NS_OUTER(ns_all_sockets, ns_sockets_map);
NS_OUTER(ns_all_bypass, ns_bypass_map);
NS_OUTER(ns_all_stats, ns_stats_map);
NS_OUTER(ns_all_pod_addrs, ns_addr_set);
NS_OUTER(ns_all_ex_in_port, ns_port_set);
NS_OUTER(ns_all_ex_out_port, ns_port_set);
NS_OUTER(ns_all_ex_out_cidr, ns_prefix_set);
NS_OUTER(ns_all_ex_in_src, ns_prefix_set);
NS_OUTER(ns_all_udp_out_port, ns_port_set);
NS_OUTER(ns_all_udp_in_port, ns_port_set);
NS_OUTER(ns_all_config, ns_config_map);

SEC("sk_lookup")
int netsteer_shared(struct bpf_sk_lookup *ctx)
{
	struct ns_pod_maps m;
	__u32 zero = 0, i;
	__u32 *idx = bpf_map_lookup_elem(&ns_steer_scratch, &zero);

	if (!idx)
		return SK_DROP;
	i = *idx;
#define NS_INNER(field, outer)                             \
	m.field = bpf_map_lookup_elem(&outer, &i);         \
	if (!m.field)                                      \
		return SK_DROP;
	NS_INNER(sockets, ns_all_sockets)
	NS_INNER(bypass, ns_all_bypass)
	NS_INNER(stats, ns_all_stats)
	NS_INNER(pod_addrs, ns_all_pod_addrs)
	NS_INNER(ex_in_port, ns_all_ex_in_port)
	NS_INNER(ex_out_port, ns_all_ex_out_port)
	NS_INNER(ex_out_cidr, ns_all_ex_out_cidr)
	NS_INNER(ex_in_src, ns_all_ex_in_src)
	NS_INNER(udp_out_port, ns_all_udp_out_port)
	NS_INNER(udp_in_port, ns_all_udp_in_port)
	NS_INNER(config, ns_all_config)
#undef NS_INNER
	return ns_steer(ctx, &m);
}

char LICENSE[] SEC("license") = "GPL";
