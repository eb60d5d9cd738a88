// SPDX-License-Identifier: GPL-2.0
/* netsteer_steer: per-pod sk_lookup program.
 *
 * Runs in the pod netns for every TCP SYN delivered locally, and every UDP datagram no connected
 * socket matched: the pod's DNS to port 53 is assigned to the 15053 socket, UDP to listed outbound
 * ports to the 15001 UDP socket, UDP to listed pod ports to the 15006 UDP socket (see steer_udp).
 * Connections to the pod's own
 * addresses (inbound) are assigned to the 15006 listener; connections that are local only because
 * of the outbound policy route (table 133: local 0/0 via lo) are assigned to the 15001 listener.
 * When the listener is gone the SYN is dropped (fail closed) and counted.
 *
 * Built with BPF_NO_PRESERVE_ACCESS_INDEX: no CO-RE relocations, so a per-pod load does not make
 * libbpf parse the kernel's BTF (12 ms → 0.3 ms per load, see DESIGN.md).
 */
#define BPF_NO_PRESERVE_ACCESS_INDEX
#include "vmlinux.h"

#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "netsteer_maps.h"

#define SK_DROP 0
#define SK_PASS 1
#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17

struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, NS_SLOT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} ns_sockets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE); /* exact matches; no bucket array (netsteer_common.h) */
	__uint(max_entries, NS_BYPASS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* required for a trie: nodes allocated on insert */
	__type(key, struct ns_bypass_key);
	__type(value, __u8);
} ns_bypass SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ns_steer_counters);
} ns_stats SEC(".maps");

/* One per-CPU counter block per run, looked up once; never NULL here (netsteer_steer returns
 * before anything counts when the lookup fails). */
#define stat_inc(field) (stats->field += 1)

static __always_inline void addr_v6(struct ns_addr *a, const __u32 ip6[4])
{
	__builtin_memcpy(a->bytes, ip6, 16);
}

/* Word-wise address tests: a few compares each, not one branch per byte (every branch is a path
 * the verifier walks; byte loops made these most of the programs' load time). */
static __always_inline void addr_words(const struct ns_addr *a, __u32 w[4])
{
	__builtin_memcpy(w, a->bytes, 16);
}

/* fe80::/10 or 169.254.0.0/16 (v4-mapped) */
static __always_inline int is_link_local(const struct ns_addr *a)
{
	__u32 w[4];
	addr_words(a, w);
	if ((w[0] & bpf_htonl(0xffc00000)) == bpf_htonl(0xfe800000))
		return 1;
	return !(w[0] | w[1]) && w[2] == bpf_htonl(0xffff) && (w[3] & bpf_htonl(0xffff0000)) == bpf_htonl(0xa9fe0000);
}

/* Set by the loader before load: the NS_CFG_* features this copy of the program serves. The
 * verifier skips the branches of the features left out (read-only data is known at load), so a pod
 * with DNS capture and no exclusions or UDP ports verifies 643 instructions instead of 1,610. The
 * agent never gives a pod a copy without a feature its config uses. */
const volatile __u32 ns_features = 0xffffffff;

/* Set by the loader before load: the kernel has bpf_sk_lookup.ingress_ifindex (Linux 5.17).
 * While 0 the verifier never visits the read of that field, so the program loads on 5.10. */
const volatile __u8 ns_have_ingress_ifindex = 0;

/* 127.0.0.0/8 (v4-mapped) or ::1 */
static __always_inline int is_loopback(const struct ns_addr *a)
{
	__u32 w[4];
	addr_words(a, w);
	if (w[0] | w[1])
		return 0;
	if (w[2] == bpf_htonl(0xffff))
		return (w[3] & bpf_htonl(0xff000000)) == bpf_htonl(0x7f000000);
	return !w[2] && w[3] == bpf_htonl(1);
}

/* Assigns the socket of `slot`; a missing socket drops (fail closed) and is counted. */
static __always_inline int assign(struct bpf_sk_lookup *ctx, struct ns_steer_counters *stats, __u32 slot)
{
	struct bpf_sock *sk = bpf_map_lookup_elem(&ns_sockets, &slot);
	if (!sk) {
		/* Fail closed: the agent's listener is gone. The SYN (or datagram) is dropped. */
		if (slot == NS_SLOT_DNS || slot == NS_SLOT_DNS_TCP)
			stat_inc(drop_no_dns_socket);
		else if (slot == NS_SLOT_UDP_OUTBOUND || slot == NS_SLOT_UDP_INBOUND)
			stat_inc(drop_no_udp_socket);
		else
			stat_inc(drop_no_listener);
		return SK_DROP;
	}
	/* NO_REUSEPORT: the socket in our map is the one meant; skip the kernel's reuseport group
	 * selection after the program (and it lets BPF_PROG_TEST_RUN measure this path). */
	long err = bpf_sk_assign(ctx, sk, BPF_SK_LOOKUP_F_NO_REUSEPORT);
	bpf_sk_release(sk);
	if (err) {
		stat_inc(drop_assign_failed);
		return SK_DROP;
	}
	switch (slot) {
	case NS_SLOT_INBOUND: stat_inc(inbound_assigned); break;
	case NS_SLOT_DNS:
	case NS_SLOT_DNS_TCP: stat_inc(dns_assigned); break;
	case NS_SLOT_UDP_OUTBOUND: stat_inc(udp_outbound_assigned); break;
	case NS_SLOT_UDP_INBOUND: stat_inc(udp_inbound_assigned); break;
	default: stat_inc(outbound_assigned);
	}
	return SK_PASS;
}

/* The slot for a UDP datagram no connected socket took, or NS_SLOT_MAX to pass it untouched.
 *   Not to a pod address: it was delivered locally only by a capture rule (table 133), so it is
 *   the pod's own outbound traffic: DNS (port 53) → 15053; a listed outbound port → 15001/udp; and
 *   what the app sends from a listed inbound port (the `sport` rule brings it here) to a peer with
 *   no session → 15001/udp as an outbound flow. Outbound exclusions apply.
 *   To a pod address on a listed inbound port, from outside the pod → 15006/udp, unless it came in
 *   on lo: that is the agent delivering a captured datagram to the app (SO_BINDTODEVICE lo, with
 *   the client's address as source, so the address cannot tell it from the client's own next
 *   datagram; the interface can). Inbound exclusions apply. Needs ingress_ifindex (5.17): the
 *   agent refuses inbound UDP ports on older kernels, and this branch then never assigns. */
static __always_inline __u32 udp_slot(struct bpf_sk_lookup *ctx, struct ns_steer_counters *stats, __u32 flags,
				      const struct ns_addr *local, const struct ns_addr *remote, __u16 lport,
				      __u16 rport)
{
	__u32 slot;

	if (!bpf_map_lookup_elem(&ns_pod_addrs, local)) {
		if (is_link_local(local)) {
			stat_inc(passed_local);
			return NS_SLOT_MAX;
		}
		if (lport == 53 && (flags & NS_CFG_DNS))
			slot = NS_SLOT_DNS;
		else if (((flags & NS_CFG_UDP_OUT) && bpf_map_lookup_elem(&ns_udp_out_port, &lport)) ||
			 ((flags & NS_CFG_UDP_IN) && bpf_map_lookup_elem(&ns_udp_in_port, &rport)))
			slot = NS_SLOT_UDP_OUTBOUND;
		else {
			stat_inc(passed_local);
			return NS_SLOT_MAX;
		}
		if (((flags & NS_CFG_EX_OUT_PORT) && bpf_map_lookup_elem(&ns_ex_out_port, &lport)) ||
		    ((flags & NS_CFG_EX_OUT_CIDR) && ns_in_prefixes(&ns_ex_out_cidr, local))) {
			stat_inc(passed_excluded);
			return NS_SLOT_MAX;
		}
		return slot;
	}
	if (!(flags & NS_CFG_UDP_IN) || !bpf_map_lookup_elem(&ns_udp_in_port, &lport) || is_loopback(remote) ||
	    bpf_map_lookup_elem(&ns_pod_addrs, remote)) {
		stat_inc(passed_local);
		return NS_SLOT_MAX;
	}
	if (!ns_have_ingress_ifindex || ctx->ingress_ifindex == 1 /* lo */) {
		stat_inc(passed_udp_delivery);
		return NS_SLOT_MAX;
	}
	if (((flags & NS_CFG_EX_IN_PORT) && bpf_map_lookup_elem(&ns_ex_in_port, &lport)) ||
	    ((flags & NS_CFG_EX_IN_SRC) && ns_in_prefixes(&ns_ex_in_src, remote))) {
		stat_inc(passed_excluded);
		return NS_SLOT_MAX;
	}
	return NS_SLOT_UDP_INBOUND;
}

SEC("sk_lookup")
int netsteer_steer(struct bpf_sk_lookup *ctx)
{
	struct ns_addr local, remote;
	struct ns_bypass_key bk = {.prefixlen = NS_BYPASS_PREFIXLEN};
	struct ns_steer_counters *stats;
	struct ns_config *cfg;
	__u32 zero = 0, flags, slot;
	__u16 lport, rport;

	if (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP)
		return SK_PASS;
	stats = bpf_map_lookup_elem(&ns_stats, &zero);
	/* Never NULL (a per-CPU array's index 0); checked once here, so the verifier walks the rest
	 * of the program once, not once with and once without counters (half the load's CPU). */
	if (!stats)
		return SK_PASS;
	stat_inc(lookups);

	if (ctx->family == AF_INET) {
		ns_addr_v4(&local, ctx->local_ip4);
		ns_addr_v4(&remote, ctx->remote_ip4);
	} else if (ctx->family == AF_INET6) {
		__u32 l6[4] = { ctx->local_ip6[0], ctx->local_ip6[1], ctx->local_ip6[2], ctx->local_ip6[3] };
		__u32 r6[4] = { ctx->remote_ip6[0], ctx->remote_ip6[1], ctx->remote_ip6[2], ctx->remote_ip6[3] };
		addr_v6(&local, l6);
		addr_v6(&remote, r6);
	} else {
		return SK_PASS;
	}
	/* Nothing to a loopback destination is captured. */
	if (is_loopback(&local)) {
		stat_inc(passed_local);
		return SK_PASS;
	}
	lport = (__u16)ctx->local_port;                 /* host byte order */
	rport = bpf_ntohs((__u16)ctx->remote_port);     /* network byte order in the ctx */
	cfg = ns_get_config();
	flags = (cfg ? cfg->flags : 0) & ns_features;

	if (ctx->protocol == IPPROTO_UDP) {
		slot = udp_slot(ctx, stats, flags, &local, &remote, lport, rport);
		if (slot == NS_SLOT_MAX)
			return SK_PASS;
		return assign(ctx, stats, slot);
	}

	if (bpf_map_lookup_elem(&ns_pod_addrs, &local)) {
		/* To the pod's own address from loopback or from the pod itself: pod-local, not captured. */
		if (is_loopback(&remote) || bpf_map_lookup_elem(&ns_pod_addrs, &remote)) {
			stat_inc(passed_local);
			return SK_PASS;
		}
		/* The relay's own inbound upstream, bound to the client's address: let it reach the app. */
		bk.sock.addr = remote;
		bk.sock.port = rport;
		if (bpf_map_lookup_elem(&ns_bypass, &bk)) {
			stat_inc(passed_bypass);
			return SK_PASS;
		}
		/* Inbound: the proxy ports themselves and exclusions pass untouched. Empty exclusion
		 * maps are not looked up (config flags). */
		if (lport == NS_PORT_OUTBOUND || lport == NS_PORT_INBOUND || lport == NS_PORT_TUNNEL ||
		    ((flags & NS_CFG_EX_IN_PORT) && bpf_map_lookup_elem(&ns_ex_in_port, &lport)) ||
		    ((flags & NS_CFG_EX_IN_SRC) && ns_in_prefixes(&ns_ex_in_src, &remote))) {
			stat_inc(passed_excluded);
			return SK_PASS;
		}
		slot = NS_SLOT_INBOUND;
	} else {
		/* Outbound: delivered locally only through the capture route (the source is the pod's
		 * address). Link-local destinations are the pod's own interface addresses: not captured. */
		if (is_link_local(&local)) {
			stat_inc(passed_local);
			return SK_PASS;
		}
		if (((flags & NS_CFG_EX_OUT_PORT) && bpf_map_lookup_elem(&ns_ex_out_port, &lport)) ||
		    ((flags & NS_CFG_EX_OUT_CIDR) && ns_in_prefixes(&ns_ex_out_cidr, &local))) {
			stat_inc(passed_excluded);
			return SK_PASS;
		}
		/* The pod's TCP DNS goes to the 15053 listener, like its UDP DNS to the 15053 socket. */
		slot = lport == 53 && (flags & NS_CFG_DNS) ? NS_SLOT_DNS_TCP : NS_SLOT_OUTBOUND;
	}
	return assign(ctx, stats, slot);
}

char LICENSE[] SEC("license") = "GPL";
