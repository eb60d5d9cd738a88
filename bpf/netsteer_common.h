/* Shared between the BPF programs and userspace (C and C++): map keys, config, stat indexes and
 * named drop reasons. Fixed-size types only; BTF carries the field names so that
 * `bpftool map dump pinned .../map_ns_stats` prints them.
 */
#ifndef NETSTEER_COMMON_H
#define NETSTEER_COMMON_H

#ifndef __bpf__
#include <linux/types.h>
#endif

#define NS_PORT_OUTBOUND 15001
#define NS_PORT_INBOUND 15006
#define NS_PORT_TUNNEL 15008
#define NS_PORT_DNS 15053
/* General UDP capture: the agent's UDP sockets share the TCP listeners' port numbers. */
#define NS_PORT_UDP_OUTBOUND 15001
#define NS_PORT_UDP_INBOUND 15006
/* Relay-bypass entries per pod: one per inbound (and tunnel) upstream connection for its whole
 * life. sk_lookup sees the relay's own segments again whenever the app's listener has no socket
 * for the flow (SYN-cookie ACKs, segments after an accept-queue overflow, a SYN meeting the app's
 * TIME_WAIT), so the entry cannot go when the connect completes. The map is an LPM trie used for
 * exact matches (struct ns_bypass_key): unlike a hash map, which allocates 16 bytes of buckets per
 * slot up front even with BPF_F_NO_PREALLOC (256 KiB per pod at this size), a trie allocates only
 * per entry, so a pod with no inbound connections holds none of it. This is the bound on concurrent
 * inbound connections per pod; netsteerd --max-inbound-connections sets it before load. A
 * connection beyond it is reset and counted (bypass_full). */
#define NS_BYPASS_MAX 16384

/* Slots of the per-pod SOCKMAP. */
enum ns_slot {
	NS_SLOT_OUTBOUND = 0,
	NS_SLOT_INBOUND = 1,
	NS_SLOT_DNS = 2,         /* the 15053 UDP socket */
	NS_SLOT_UDP_OUTBOUND = 3, /* the 15001 UDP socket: outbound UDP to the pod's listed ports */
	NS_SLOT_UDP_INBOUND = 4,  /* the 15006 UDP socket: inbound UDP to the pod's listed ports */
	NS_SLOT_DNS_TCP = 5,      /* the 15053 TCP listener: the pod's TCP DNS */
	NS_SLOT_MAX = 6,
};

/* Counter fields, listed once (X-macros) so the BPF structs, the agent's summing and its JSON
 * all use the same names that bpftool prints from BTF. */
#define NS_STEER_COUNTER_FIELDS(X)                                                              \
	X(lookups)            /* sk_lookup runs for TCP and UDP */                                \
	X(inbound_assigned)   /* assigned to the 15006 listener */                                \
	X(outbound_assigned)  /* assigned to the 15001 listener */                                \
	X(passed_local)       /* pod-local or loopback: not captured */                           \
	X(passed_excluded)    /* an exclusion matched */                                          \
	X(passed_bypass)      /* the relay's own inbound upstream */                              \
	X(drop_no_listener)   /* NS_DROP_NO_LISTENER: fail closed, the listener is gone */        \
	X(drop_assign_failed) /* NS_DROP_ASSIGN_FAILED */                                       \
	X(dns_assigned)       /* UDP or TCP to port 53 assigned to the 15053 socket or listener */ \
	X(drop_no_dns_socket) /* NS_DROP_NO_LISTENER for DNS: fail closed, the socket is gone */ \
	X(udp_outbound_assigned) /* UDP to a listed outbound port assigned to the 15001 UDP socket */ \
	X(udp_inbound_assigned)  /* UDP to a listed pod port assigned to the 15006 UDP socket */   \
	X(passed_udp_delivery)   /* the agent's own delivery of an inbound datagram, over lo */     \
	X(drop_no_udp_socket)    /* NS_DROP_NO_LISTENER for UDP: fail closed, the socket is gone */

/* "marked" = skb->mark & mark_mask == mark (the agent's own sockets). */
#define NS_GUARD_COUNTER_FIELDS(X)                                                              \
	X(egress_marked_pkts)                                                                     \
	X(egress_marked_bytes)                                                                    \
	X(egress_unmarked_pkts)                                                                   \
	X(egress_unmarked_bytes)                                                                  \
	X(ingress_marked_pkts)                                                                    \
	X(ingress_marked_bytes)                                                                   \
	X(ingress_unmarked_pkts)                                                                  \
	X(ingress_unmarked_bytes)                                                                 \
	X(passed_strict_excluded) /* unmarked but excluded (or a bare RST): allowed when strict */ \
	X(drop_strict)            /* NS_DROP_STRICT */                                            \
	X(drop_spoofed)           /* NS_DROP_SPOOFED */                                           \
	X(egress_udp_pkts)                                                                        \
	X(ingress_udp_pkts)                                                                       \
	X(egress_other_pkts)  /* IP packets neither TCP nor UDP (SCTP, ICMP, ...): never steered */ \
	X(ingress_other_pkts)

#define NS_U64_FIELD(name) __u64 name;

/* Per-pod counters of the sk_lookup program: one per-CPU struct at index 0 of ns_stats, so
 * `bpftool map dump pinned .../map_ns_stats` prints the field names. */
struct ns_steer_counters {
	NS_STEER_COUNTER_FIELDS(NS_U64_FIELD)
};

/* Why a connection or packet was dropped (logged/inspected by name). */
enum ns_drop_reason {
	NS_DROP_NONE = 0,
	NS_DROP_NO_LISTENER = 1,   /* the pod's proxy listener is gone (agent down) */
	NS_DROP_ASSIGN_FAILED = 2, /* the kernel refused the assignment */
	NS_DROP_STRICT = 3,        /* strict mode: unmarked app TCP leaving the pod */
	NS_DROP_SPOOFED = 4,       /* ingress packet claiming a pod address as source */
};

/* Per-pod counters of the tc guard (one per-CPU struct at index 0 of ns_guard_stats). */
struct ns_guard_counters {
	NS_GUARD_COUNTER_FIELDS(NS_U64_FIELD)
};

/* An IPv4 or IPv6 address; IPv4 is stored v4-mapped (::ffff:a.b.c.d). */
struct ns_addr {
	__u8 bytes[16];
};

/* Local address of a relay socket (the client's address and the port the relay got). The key of
 * the bypass hash map of agents before the trie; adopted pods of those agents keep it. */
struct ns_sock_key {
	struct ns_addr addr;
	__u16 port; /* host byte order */
	__u16 pad;
};

/* The bypass trie's key: a relay socket's local address, always matched in full. */
struct ns_bypass_key {
	__u32 prefixlen; /* NS_BYPASS_PREFIXLEN */
	struct ns_sock_key sock;
};
#define NS_BYPASS_PREFIXLEN (sizeof(struct ns_sock_key) * 8)

/* LPM trie key for prefixes; IPv4 prefixes are v4-mapped with prefixlen + 96. */
struct ns_lpm_key {
	__u32 prefixlen;
	__u8 bytes[16];
};

struct ns_config {
	__u32 flags; /* NS_CFG_* */
	__u32 mark;
	__u32 mark_mask;
	__u32 pad;
};

#define NS_CFG_STRICT (1u << 0)
/* Capture the pod's DNS (UDP to port 53 delivered by the capture route) onto 15053. */
#define NS_CFG_DNS (1u << 5)
/* General UDP: outbound to ns_udp_out_port, inbound to ns_udp_in_port (non-empty sets). */
#define NS_CFG_UDP_OUT (1u << 6)
#define NS_CFG_UDP_IN (1u << 7)
/* Set when the exclusion map is non-empty: the fast path skips lookups in empty maps. */
#define NS_CFG_EX_IN_PORT (1u << 1)
#define NS_CFG_EX_IN_SRC (1u << 2)
#define NS_CFG_EX_OUT_PORT (1u << 3)
#define NS_CFG_EX_OUT_CIDR (1u << 4)

#endif /* NETSTEER_COMMON_H */
