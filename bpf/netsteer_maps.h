/* Maps and helpers shared by netsteer_steer (sk_lookup) and netsteer_guard (tc).
 *
 * Both objects declare these maps; userspace loads netsteer_steer first and makes the guard reuse
 * its map fds (bpf_map__reuse_fd), so one pod has one set of addresses, exclusions and config.
 */
#ifndef NETSTEER_MAPS_H
#define NETSTEER_MAPS_H

#include "netsteer_common.h"

/* Each per-pod map's type is a named struct: the per-pod objects declare their maps with it, and
 * the shared steering program (netsteer_shared.bpf.c) uses the same types as the inner-map
 * templates of its map-in-map arrays, so a pod's maps always match what that program expects. */

/* The pod's own addresses (inbound destinations; pod-local sources). */
struct ns_addr_set {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, struct ns_addr);
	__type(value, __u8);
};

/* Exclusions: ports in host byte order; prefixes as LPM keys. */
struct ns_port_set {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u16);
	__type(value, __u8);
};
struct ns_prefix_set {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 256);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ns_lpm_key);
	__type(value, __u8);
};

/* One entry: struct ns_config (strict flag, the agent's mark). */
struct ns_config_map {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ns_config);
};

#ifndef NS_NO_POD_MAPS
struct ns_addr_set ns_pod_addrs SEC(".maps");
struct ns_port_set ns_ex_in_port SEC(".maps");    /* inbound destination ports not captured */
struct ns_port_set ns_ex_out_port SEC(".maps");   /* outbound destination ports not captured */
struct ns_prefix_set ns_ex_out_cidr SEC(".maps"); /* outbound destinations not captured */
struct ns_prefix_set ns_ex_in_src SEC(".maps");   /* inbound sources not captured (kubelet probes) */
struct ns_port_set ns_udp_out_port SEC(".maps");  /* UDP captured outbound: remote ports */
struct ns_port_set ns_udp_in_port SEC(".maps");   /* UDP captured inbound: the pod's ports */
struct ns_config_map ns_config SEC(".maps");
#endif

static __always_inline void ns_addr_v4(struct ns_addr *a, __u32 ip4)
{
	__builtin_memset(a, 0, sizeof(*a));
	a->bytes[10] = 0xff;
	a->bytes[11] = 0xff;
	__builtin_memcpy(&a->bytes[12], &ip4, 4);
}

static __always_inline int ns_in_prefixes(void *trie, const struct ns_addr *a)
{
	struct ns_lpm_key k = { .prefixlen = 128 };
	__builtin_memcpy(k.bytes, a->bytes, 16);
	return bpf_map_lookup_elem(trie, &k) != NULL;
}

static __always_inline struct ns_config *ns_config_of(void *config_map)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(config_map, &zero);
}

#ifndef NS_NO_POD_MAPS
static __always_inline struct ns_config *ns_get_config(void)
{
	return ns_config_of(&ns_config);
}
#endif

#endif /* NETSTEER_MAPS_H */
