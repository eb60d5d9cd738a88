// The cheapest user-space TCP relay: what any relay pays to carry bulk through two TCP connections.
// Ad hoc (not built by CMake), run by bench/bulk_floor.py: one blocking thread per direction per
// connection, each moving bytes socket → pipe → socket with splice (or read/write with "copy"),
// no epoll, no capture, no client address kept, no timeouts, no limits. Not for production use:
// it exists to be measured next to netsteer, HAProxy and the direct path in the same run.
//   gcc -O2 -pthread -o /tmp/relay_floor bench/relay_floor.c
//   relay_floor LISTEN_IP LISTEN_PORT UPSTREAM_IP UPSTREAM_PORT [splice|copy] [pipe bytes]
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static struct sockaddr_in up;
static int copy_mode, splice_more, pipe_bytes = 256 * 1024;

struct leg { int from, to; };

static void* pump(void* p) {
  struct leg l = *(struct leg*)p;
  free(p);
  if (copy_mode) {
    static __thread char buf[256 * 1024];
    for (;;) {
      ssize_t n = read(l.from, buf, sizeof buf);
      if (n <= 0) break;
      for (ssize_t off = 0; off < n;) {
        ssize_t w = write(l.to, buf + off, n - off);
        if (w <= 0) goto out;
        off += w;
      }
    }
  } else {
    int pp[2];
    if (pipe2(pp, O_CLOEXEC) < 0) { perror("pipe2"); exit(1); }
    fcntl(pp[1], F_SETPIPE_SZ, pipe_bytes);
    for (;;) {
      ssize_t n = splice(l.from, NULL, pp[1], NULL, pipe_bytes, SPLICE_F_MOVE);
      if (n <= 0) break;
      while (n > 0) {
        ssize_t w = splice(pp[0], NULL, l.to, NULL, n, SPLICE_F_MOVE | (splice_more ? SPLICE_F_MORE : 0));
        if (w <= 0) goto out_pipe;
        n -= w;
      }
    }
  out_pipe:
    close(pp[0]);
    close(pp[1]);
  }
out:
  shutdown(l.to, SHUT_WR);
  shutdown(l.from, SHUT_RD);
  return NULL;
}

static void* conn(void* p) {
  int c = (int)(long)p, u = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
  setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  setsockopt(u, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(u, (struct sockaddr*)&up, sizeof up) < 0) { perror("connect"); close(c); close(u); return NULL; }
  pthread_t t[2];
  struct leg* a = malloc(sizeof *a); *a = (struct leg){c, u};
  struct leg* b = malloc(sizeof *b); *b = (struct leg){u, c};
  pthread_create(&t[0], NULL, pump, a);
  pthread_create(&t[1], NULL, pump, b);
  pthread_join(t[0], NULL);
  pthread_join(t[1], NULL);
  close(c);
  close(u);
  return NULL;
}

int main(int argc, char** argv) {
  if (argc < 5) { fprintf(stderr, "usage: %s LISTEN_IP LISTEN_PORT UPSTREAM_IP UPSTREAM_PORT [splice|copy] [pipe bytes]\n", argv[0]); return 2; }
  signal(SIGPIPE, SIG_IGN);
  copy_mode = argc > 5 && !strcmp(argv[5], "copy");
  splice_more = argc > 5 && !strcmp(argv[5], "splice-more");
  if (argc > 6) pipe_bytes = atoi(argv[6]);
  struct sockaddr_in la = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
  inet_pton(AF_INET, argv[1], &la.sin_addr);
  up = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons(atoi(argv[4]))};
  inet_pton(AF_INET, argv[3], &up.sin_addr);
  int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
  setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(l, (struct sockaddr*)&la, sizeof la) < 0 || listen(l, 1024) < 0) { perror("listen"); return 1; }
  for (;;) {
    int c = accept4(l, NULL, NULL, SOCK_CLOEXEC);
    if (c < 0) continue;
    pthread_t t;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    pthread_create(&t, &at, conn, (void*)(long)c);
  }
}
