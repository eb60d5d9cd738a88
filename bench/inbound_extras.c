// What the inbound relay does per connection that the outbound one does not, each timed alone:
// the bypass entry added and removed (bpf map update + delete on an LPM trie shaped like the pod's
// ns_bypass), and bind(client address, 0) + getsockname on an IP_TRANSPARENT socket. Ad hoc (not
// built by CMake): the measurement behind "Why inbound costs more" in bench/RESULTS.md.
//   gcc -O2 -o /tmp/inbound_extras bench/inbound_extras.c -lbpf && unshare -n /tmp/inbound_extras
#include <bpf/bpf.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
struct key { unsigned prefixlen; unsigned char addr[16]; unsigned short port, pad; };
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e6 + t.tv_nsec / 1e3; }
int main(void) {
  LIBBPF_OPTS(bpf_map_create_opts, o, .map_flags = BPF_F_NO_PREALLOC);
  int fd = bpf_map_create(BPF_MAP_TYPE_LPM_TRIE, "byp", sizeof(struct key), 1, 16384, &o);
  if (fd < 0) { perror("map"); return 1; }
  struct key k = {.prefixlen = 160}; unsigned char v = 1;
  k.addr[10] = k.addr[11] = 0xff; k.addr[12] = 10; k.addr[13] = 129; k.addr[15] = 2;
  // a few live entries, as with concurrent connections
  for (int i = 0; i < 32; i++) { k.port = 40000 + i; bpf_map_update_elem(fd, &k, &v, BPF_ANY); }
  int N = 200000;
  for (int round = 0; round < 3; round++) {
    double t0 = now();
    for (int i = 0; i < N; i++) {
      k.port = 1000 + (i % 30000);
      // A failing call returns early and would look cheap: the timing counts only if all succeed.
      if (bpf_map_update_elem(fd, &k, &v, BPF_ANY) || bpf_map_delete_elem(fd, &k)) { perror("bpf map"); return 1; }
    }
    double t1 = now();
    // bind(client ip, 0) + getsockname on a transparent socket, vs the same socket without them
    int M = 50000; double tb = 0, tn = 0;
    for (int i = 0; i < M; i++) {
      int one = 1;
      double a = now();
      int s = socket(AF_INET, SOCK_STREAM, 0); setsockopt(s, IPPROTO_IP, IP_TRANSPARENT, &one, sizeof one);
      struct sockaddr_in sa = {.sin_family = AF_INET}; inet_pton(AF_INET, "10.250.0.2", &sa.sin_addr);
      if (bind(s, (struct sockaddr*)&sa, sizeof sa) < 0) { perror("bind"); return 1; }
      socklen_t l = sizeof sa; getsockname(s, (struct sockaddr*)&sa, &l);
      close(s);
      double b = now();
      s = socket(AF_INET, SOCK_STREAM, 0); setsockopt(s, IPPROTO_IP, IP_TRANSPARENT, &one, sizeof one); close(s);
      double c = now();
      tb += b - a; tn += c - b;
    }
    printf("bpf update+delete: %.2f us per pair; bind+getsockname: %.2f us\n", (t1 - t0) / N, (tb - tn) / M);
  }
  return 0;
}
