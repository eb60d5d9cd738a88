// sk_lookup program for the UDP/DNS experiments (UAPI headers only, no CO-RE).
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10

struct { __uint(type, BPF_MAP_TYPE_SOCKMAP); __uint(max_entries, 2);
         __type(key, __u32); __type(value, __u64); } socks SEC(".maps");   // 0: outbound UDP, 1: inbound UDP
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 64);
         __type(key, __u32); __type(value, __u32); } out_ports SEC(".maps"); // dport (host order) captured on lo -> socks[0]
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 64);
         __type(key, __u32); __type(value, __u32); } in_ports SEC(".maps");  // local port (host order) -> socks[1]
struct bkey { __u32 ip6[4]; __u32 port; };                                   // remote addr (v4 in ip6[3]), remote_port as read
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 1024);
         __type(key, struct bkey); __type(value, __u32); } bypass SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 4);
         __type(key, __u32); __type(value, __u32); } cfg SEC(".maps");       // [0]=1: inbound capture only off lo, [1]=1: bypass only on lo
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 8);
         __type(key, __u32); __type(value, __u64); } stats SEC(".maps");     // 0 out,1 in,2 bypassed,3 nosock,4 assign err

static __always_inline void cnt(__u32 i) { __u64 *v = bpf_map_lookup_elem(&stats, &i); if (v) __sync_fetch_and_add(v, 1); }

SEC("sk_lookup")
int udpx(struct bpf_sk_lookup *ctx)
{
    if (ctx->protocol != IPPROTO_UDP) return SK_PASS;
    __u32 lport = ctx->local_port, idx, zero = 0;
    int on_lo = ctx->ingress_ifindex == 1;
    struct bkey k = {};
    if (ctx->family == AF_INET) { __u32 a = ctx->remote_ip4; asm volatile("" : "+r"(a)); k.ip6[3] = a; }
    else { k.ip6[0] = ctx->remote_ip6[0]; k.ip6[1] = ctx->remote_ip6[1];
           k.ip6[2] = ctx->remote_ip6[2]; __u32 a = ctx->remote_ip6[3]; asm volatile("" : "+r"(a)); k.ip6[3] = a; }
    k.port = ctx->remote_port;
    // cfg[1]=1: bypass entries only match datagrams arriving on lo (deliveries from a socket bound to lo);
    // cfg[1]=0: they match any datagram from that (ip, port), the remote's own included.
    __u32 one = 1, *gate = bpf_map_lookup_elem(&cfg, &one);
    if ((!gate || !*gate || on_lo) && bpf_map_lookup_elem(&bypass, &k)) { cnt(2); return SK_PASS; }
    if (on_lo && bpf_map_lookup_elem(&out_ports, &lport)) idx = 0;
    else if (bpf_map_lookup_elem(&in_ports, &lport)) {
        __u32 *c = bpf_map_lookup_elem(&cfg, &zero);
        if (c && *c && on_lo) { __u32 i = 7; __u64 *v = bpf_map_lookup_elem(&stats, &i); if (v) *v += 1; return SK_PASS; }
        idx = 1;
    } else return SK_PASS;
    { __u32 i = idx ? 6 : 5; __u64 *v = bpf_map_lookup_elem(&stats, &i); if (v) *v = ctx->ingress_ifindex; }
    struct bpf_sock *sk = bpf_map_lookup_elem(&socks, &idx);
    if (!sk) { cnt(3); return SK_DROP; }
    long err = bpf_sk_assign(ctx, sk, 0);
    bpf_sk_release(sk);
    if (err) { cnt(4); return SK_DROP; }
    cnt(idx);
    return SK_PASS;
}
char LICENSE[] SEC("license") = "GPL";
