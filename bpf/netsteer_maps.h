/* Maps and helpers shared by netsteer_steer (sk_lookup) and netsteer_guard (tc).
 *
 * Both objects declare these maps; userspace loads netsteer_steer first and makes the guard reuse
 * its map fds (bpf_map__reuse_fd), so one pod has one set of addresses, exclusions and config.
 */
#ifndef NETSTEER_MAPS_H
#define NETSTEER_MAPS_H

#include "netsteer_common.h"

/* The pod's own addresses (inbound destinations; pod-local sources). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, struct ns_addr);
	__type(value, __u8);
} ns_pod_addrs SEC(".maps");

/* Exclusions: ports in host byte order; prefixes as LPM keys. */
#define NS_PORT_SET(name)                    \
	struct {                                 \
		__uint(type, BPF_MAP_TYPE_HASH);     \
		__uint(max_entries, 256);            \
		__uint(map_flags, BPF_F_NO_PREALLOC); \
		__type(key, __u16);                  \
		__type(value, __u8);                 \
	} name SEC(".maps")
#define NS_PREFIX_SET(name)                     \
	struct {                                    \
		__uint(type, BPF_MAP_TYPE_LPM_TRIE);    \
		__uint(max_entries, 256);               \
		__uint(map_flags, BPF_F_NO_PREALLOC);   \
		__type(key, struct ns_lpm_key);         \
		__type(value, __u8);                    \
	} name SEC(".maps")

NS_PORT_SET(ns_ex_in_port);    /* inbound destination ports not captured */
NS_PORT_SET(ns_ex_out_port);   /* outbound destination ports not captured */
NS_PREFIX_SET(ns_ex_out_cidr); /* outbound destinations not captured */
NS_PREFIX_SET(ns_ex_in_src);   /* inbound sources not captured (kubelet probes) */
NS_PORT_SET(ns_udp_out_port);  /* UDP captured outbound: remote ports */
NS_PORT_SET(ns_udp_in_port);   /* UDP captured inbound: the pod's ports */

/* One entry: struct ns_config (strict flag, the agent's mark). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ns_config);
} ns_config SEC(".maps");

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

static __always_inline struct ns_config *ns_get_config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&ns_config, &zero);
}

#endif /* NETSTEER_MAPS_H */
