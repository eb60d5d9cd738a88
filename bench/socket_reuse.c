// Client CPU per short TCP connection on loopback: a new socket per connection (socket, connect,
// close) against one socket reused with connect(AF_UNSPEC) after a clean shutdown. Ad hoc (not
// built by CMake): the measurement behind "reusing upstream sockets" in bench/RESULTS.md.
//   gcc -O2 -pthread -o /tmp/socket_reuse bench/socket_reuse.c
//   ip netns add sr && ip -n sr link set lo up && ip netns exec sr /tmp/socket_reuse; ip netns del sr
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/resource.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <time.h>
static void* server(void* a) {
  int l = *(int*)a; char buf[256];
  for (;;) { int c = accept(l, 0, 0); if (c < 0) continue; recv(c, buf, sizeof buf, 0); send(c, "HTTP/1.1 200 OK\r\n\r\nxxxxxxxx", 27, 0); close(c); }
  return 0;
}
static double cpu() { struct rusage r; getrusage(RUSAGE_THREAD, &r); return r.ru_utime.tv_sec + r.ru_stime.tv_sec + (r.ru_utime.tv_usec + r.ru_stime.tv_usec) * 1e-6; }
int main(int argc, char** argv) {
  int n = 100000, l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  bind(l, (void*)&a, sizeof a); listen(l, 4096); socklen_t al = sizeof a; getsockname(l, (void*)&a, &al);
  pthread_t t; pthread_create(&t, 0, server, &l);
  char buf[256]; struct sockaddr uns = {.sa_family = AF_UNSPEC};
  for (int mode = 0; mode < 4; mode++) {
    int reuse = mode & 1, s = -1, notclosed = 0; double c0 = cpu();
    struct timespec w0, w1; clock_gettime(CLOCK_MONOTONIC, &w0);
    for (int i = 0; i < n; i++) {
      if (s < 0) { s = socket(AF_INET, SOCK_STREAM, 0); setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); }
      if (connect(s, (void*)&a, sizeof a) < 0) { perror("connect"); return 1; }
      send(s, "GET / HTTP/1.1\r\n\r\n", 18, 0);
      while (recv(s, buf, sizeof buf, 0) > 0) {}
      if (reuse) {
        shutdown(s, SHUT_WR);
        struct tcp_info ti; socklen_t tl = sizeof ti; getsockopt(s, IPPROTO_TCP, TCP_INFO, &ti, &tl);
        if (ti.tcpi_state != 7 /*TCP_CLOSE*/) notclosed++;
        if (connect(s, &uns, sizeof uns) < 0) { perror("disconnect"); return 1; }
      } else { close(s); s = -1; }
    }
    clock_gettime(CLOCK_MONOTONIC, &w1);
    double c = cpu() - c0, wall = (w1.tv_sec - w0.tv_sec) + (w1.tv_nsec - w0.tv_nsec) * 1e-9;
    printf("%s: client thread CPU %.2f us/conn, wall %.2f us/conn, not CLOSE at reuse: %d\n", reuse ? "reuse (shutdown+getsockopt+AF_UNSPEC)" : "new socket + close", c / n * 1e6, wall / n * 1e6, notclosed);
    if (s >= 0) { close(s); s = -1; }
  }
}
