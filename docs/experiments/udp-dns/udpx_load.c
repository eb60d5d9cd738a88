// udpx_load <netns path> <pin dir>: load udpx.bpf.o, attach sk_lookup to the netns, pin link + maps, exit.
#include <stdio.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/stat.h>
#include <bpf/libbpf.h>
#include <bpf/bpf.h>
#include "udpx.skel.h"
int main(int argc, char **argv)
{
    if (argc != 3) { fprintf(stderr, "usage: %s NETNS_PATH PIN_DIR\n", argv[0]); return 2; }
    struct udpx_bpf *s = udpx_bpf__open_and_load();
    if (!s) { perror("open_and_load"); return 1; }
    int ns = open(argv[1], O_RDONLY | O_CLOEXEC);
    if (ns < 0) { perror("open netns"); return 1; }
    int link = bpf_link_create(bpf_program__fd(s->progs.udpx), ns, BPF_SK_LOOKUP, NULL);
    if (link < 0) { fprintf(stderr, "link_create: %d\n", link); return 1; }
    mkdir(argv[2], 0700);
    char p[512];
    struct { const char *n; int fd; } pins[] = {
        {"link", link}, {"socks", bpf_map__fd(s->maps.socks)}, {"out_ports", bpf_map__fd(s->maps.out_ports)},
        {"in_ports", bpf_map__fd(s->maps.in_ports)}, {"bypass", bpf_map__fd(s->maps.bypass)},
        {"cfg", bpf_map__fd(s->maps.cfg)}, {"stats", bpf_map__fd(s->maps.stats)} };
    for (unsigned i = 0; i < sizeof pins / sizeof pins[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", argv[2], pins[i].n);
        if (bpf_obj_pin(pins[i].fd, p)) { fprintf(stderr, "pin %s failed\n", p); return 1; }
    }
    printf("attached link fd %d, pinned under %s\n", link, argv[2]);
    return 0;
}
