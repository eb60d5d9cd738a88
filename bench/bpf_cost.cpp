// netsteer_bpf_cost: the cost of one run of a pinned netsteer sk_lookup program, measured with
// BPF_PROG_TEST_RUN (the kernel times `repeat` runs with the real maps; no network stack around
// it). Run inside the pod's netns (the program assigns that netns' listeners):
//   ip netns exec POD netsteer_bpf_cost PINNED_PROG LOCAL_IP LOCAL_PORT REMOTE_IP REMOTE_PORT [REPEAT]
// Prints {"ns_per_run":..., "retval":..., "repeat":...}.
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <linux/bpf.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "netsteer/common/inet.h"
#include "netsteer/common/unique_fd.h"

int main(int argc, char** argv) {
  using namespace netsteer;
  if (argc < 6) {
    std::fprintf(stderr, "usage: %s PINNED_PROG LOCAL_IP LOCAL_PORT REMOTE_IP REMOTE_PORT [REPEAT]\n", argv[0]);
    return 2;
  }
  UniqueFd prog(bpf_obj_get(argv[1]));
  if (!prog) {
    std::fprintf(stderr, "bpf_obj_get %s: %s\n", argv[1], std::strerror(errno));
    return 1;
  }
  auto local = IpAddr::parse(argv[2]);
  auto remote = IpAddr::parse(argv[4]);
  if (!local.ok() || !remote.ok() || local->family != remote->family) {
    std::fprintf(stderr, "bad addresses\n");
    return 2;
  }
  bpf_sk_lookup ctx{};
  ctx.family = local->family;
  ctx.protocol = IPPROTO_TCP;
  ctx.local_port = static_cast<__u32>(std::atoi(argv[3]));
  ctx.remote_port = htons(static_cast<uint16_t>(std::atoi(argv[5])));
  if (local->family == AF_INET) {
    std::memcpy(&ctx.local_ip4, local->bytes.data(), 4);
    std::memcpy(&ctx.remote_ip4, remote->bytes.data(), 4);
  } else {
    std::memcpy(ctx.local_ip6, local->bytes.data(), 16);
    std::memcpy(ctx.remote_ip6, remote->bytes.data(), 16);
  }
  unsigned repeat = argc > 6 ? static_cast<unsigned>(std::atoi(argv[6])) : 1000000;
  LIBBPF_OPTS(bpf_test_run_opts, opts, .ctx_in = &ctx, .ctx_size_in = sizeof ctx, .repeat = static_cast<int>(repeat));
  if (bpf_prog_test_run_opts(prog.get(), &opts) < 0) {
    std::fprintf(stderr, "BPF_PROG_TEST_RUN: %s (needs Linux >= 5.14 for sk_lookup)\n", std::strerror(errno));
    return 1;
  }
  std::printf("{\"ns_per_run\": %u, \"retval\": %u, \"repeat\": %u}\n", opts.duration, opts.retval, repeat);
  return 0;
}
