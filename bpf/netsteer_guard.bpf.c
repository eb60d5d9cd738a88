// SPDX-License-Identifier: GPL-2.0
/* netsteer_guard: per-pod tc programs on the pod's interfaces, attached inside the pod netns
 * (tcx links on Linux >= 6.6, clsact + cls_bpf direct-action before).
 *
 * egress:  counts TCP leaving the pod with and without the agent's mark; in strict mode drops
 *          unmarked app TCP (capture was bypassed, e.g. the routing rule was deleted) unless an
 *          exclusion allows it or it is a bare RST, and unmarked UDP of a captured kind (DNS,
 *          listed outbound ports, replies from listed inbound ports). Counts UDP and other IP
 *          protocols (SCTP, ICMP: never steered) by packets.
 * ingress: counts arriving TCP, UDP and other IP packets; drops packets from outside that claim one of the pod's own
 *          addresses as source (accept_local=1, which the capture path needs, would let them in).
 *
 * Returns TC_ACT_UNSPEC (-1, "next" for tcx and clsact) to pass and TC_ACT_SHOT (2) to drop.
 * Built without CO-RE relocations, like netsteer_steer.
 */
#define BPF_NO_PRESERVE_ACCESS_INDEX
#include "vmlinux.h"

#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "netsteer_maps.h"

#define NS_TC_NEXT (-1)
#define NS_TC_DROP 2
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IPPROTO_ICMPV6 58

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ns_guard_counters);
} ns_guard_stats SEC(".maps");

/* What the guard needs of a packet. Addresses are v4-mapped for IPv4. */
struct ns_pkt {
	struct ns_addr src, dst;
	__u16 sport, dport; /* host byte order */
	__u8 tcp;
	__u8 udp;
	__u8 rst_only;
	__u8 icmpv6;
};

static __always_inline int ns_parse(struct __sk_buff *skb, struct ns_pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct tcphdr *th;
	__u8 proto;

	if ((void *)(eth + 1) > end)
		return -1;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end || ip->ihl < 5)
			return -1;
		ns_addr_v4(&p->src, ip->saddr);
		ns_addr_v4(&p->dst, ip->daddr);
		proto = ip->protocol;
		th = (void *)ip + ip->ihl * 4;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end)
			return -1;
		__builtin_memcpy(p->src.bytes, &ip6->saddr, 16);
		__builtin_memcpy(p->dst.bytes, &ip6->daddr, 16);
		proto = ip6->nexthdr; /* extension headers: treated as non-TCP */
		th = (void *)(ip6 + 1);
	} else {
		return -1;
	}
	p->icmpv6 = proto == IPPROTO_ICMPV6;
	if (proto == IPPROTO_UDP) {
		struct udphdr *uh = (void *)th;
		if ((void *)(uh + 1) > end)
			return 0;
		p->udp = 1;
		p->sport = bpf_ntohs(uh->source);
		p->dport = bpf_ntohs(uh->dest);
		return 0;
	}
	if (proto != IPPROTO_TCP)
		return 0;
	if ((void *)(th + 1) > end)
		return 0;
	p->tcp = 1;
	p->sport = bpf_ntohs(th->source);
	p->dport = bpf_ntohs(th->dest);
	p->rst_only = th->rst && !th->syn && !th->fin && skb->len <= (__u32)((void *)(th + 1) - data) + 40;
	return 0;
}

/* Set by the loader before load: the NS_CFG_* features this copy serves (as netsteer_steer's).
 * A pod that is not strict gets a copy whose strict branches the verifier never walks. */
const volatile __u32 ns_features = 0xffffffff;

static __always_inline __u32 ns_flags(const struct ns_config *cfg)
{
	return cfg ? cfg->flags & ns_features : 0;
}

static __always_inline struct ns_guard_counters *ns_counters(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&ns_guard_stats, &zero);
}

static __always_inline int ns_is_marked(struct __sk_buff *skb, const struct ns_config *cfg)
{
	return cfg && (skb->mark & cfg->mark_mask) == cfg->mark;
}

/* Strict mode, UDP: what capture would have taken (DNS, a listed outbound port, a reply from a
 * listed inbound port) may not leave unmarked, unless an exclusion allows it. Other UDP was never
 * captured and passes. */
static __always_inline int egress_udp(struct __sk_buff *skb, const struct ns_pkt *p, struct ns_guard_counters *c,
				      const struct ns_config *cfg)
{
	c->egress_udp_pkts++;
	__u32 f = ns_flags(cfg);
	if (!(f & NS_CFG_STRICT) || ns_is_marked(skb, cfg))
		return NS_TC_NEXT;
	int captured = (p->dport == 53 && (f & NS_CFG_DNS)) ||
		       ((f & NS_CFG_UDP_OUT) && bpf_map_lookup_elem(&ns_udp_out_port, &p->dport)) ||
		       ((f & NS_CFG_UDP_IN) && bpf_map_lookup_elem(&ns_udp_in_port, &p->sport));
	if (!captured)
		return NS_TC_NEXT;
	if (bpf_map_lookup_elem(&ns_ex_in_port, &p->sport) || bpf_map_lookup_elem(&ns_ex_out_port, &p->dport) ||
	    ns_in_prefixes(&ns_ex_out_cidr, &p->dst) || ns_in_prefixes(&ns_ex_in_src, &p->dst)) {
		c->passed_strict_excluded++;
		return NS_TC_NEXT;
	}
	c->drop_strict++;
	return NS_TC_DROP;
}

SEC("tc")
int netsteer_guard_egress(struct __sk_buff *skb)
{
	struct ns_pkt p = {};
	struct ns_guard_counters *c = ns_counters();
	struct ns_config *cfg = ns_get_config();

	if (ns_parse(skb, &p) < 0 || !c)
		return NS_TC_NEXT;
	if (p.udp)
		return egress_udp(skb, &p, c, cfg);
	if (!p.tcp) {
		c->egress_other_pkts++;
		return NS_TC_NEXT;
	}
	if (ns_is_marked(skb, cfg)) {
		c->egress_marked_pkts++;
		c->egress_marked_bytes += skb->len;
		return NS_TC_NEXT;
	}
	c->egress_unmarked_pkts++;
	c->egress_unmarked_bytes += skb->len;
	if (!(ns_flags(cfg) & NS_CFG_STRICT))
		return NS_TC_NEXT;
	/* Strict: the app's own TCP may leave only where capture is excluded on purpose. */
	if (p.rst_only || bpf_map_lookup_elem(&ns_ex_in_port, &p.sport) ||
	    bpf_map_lookup_elem(&ns_ex_out_port, &p.dport) || ns_in_prefixes(&ns_ex_out_cidr, &p.dst) ||
	    ns_in_prefixes(&ns_ex_in_src, &p.dst)) {
		c->passed_strict_excluded++;
		return NS_TC_NEXT;
	}
	c->drop_strict++;
	return NS_TC_DROP;
}

SEC("tc")
int netsteer_guard_ingress(struct __sk_buff *skb)
{
	struct ns_pkt p = {};
	struct ns_guard_counters *c = ns_counters();
	struct ns_config *cfg = ns_get_config();

	if (ns_parse(skb, &p) < 0 || !c)
		return NS_TC_NEXT;
	/* A packet from outside carrying one of the pod's own addresses as source is spoofed. */
	if (!p.icmpv6 && bpf_map_lookup_elem(&ns_pod_addrs, &p.src)) {
		c->drop_spoofed++;
		return NS_TC_DROP;
	}
	if (p.udp) {
		c->ingress_udp_pkts++;
		return NS_TC_NEXT;
	}
	if (!p.tcp) {
		c->ingress_other_pkts++;
		return NS_TC_NEXT;
	}
	if (ns_is_marked(skb, cfg)) {
		c->ingress_marked_pkts++;
		c->ingress_marked_bytes += skb->len;
	} else {
		c->ingress_unmarked_pkts++;
		c->ingress_unmarked_bytes += skb->len;
	}
	return NS_TC_NEXT;
}

char LICENSE[] SEC("license") = "GPL";
