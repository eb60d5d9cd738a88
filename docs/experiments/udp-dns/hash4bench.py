"""hash4bench.py BIND N: N connected UDP sockets on one local addr:port (BIND=127.0.0.1 or 0.0.0.0), port 5300,
each connected to 127.0.0.2:(20000+i); the measured flow's socket is created FIRST (tail of the hash chain).
Sends K datagrams 127.0.0.2:9999 -> 127.0.0.1:5300 and reports ns per datagram (send + recv, one core)."""
import socket, sys, time, resource
bind, n, K = sys.argv[1], int(sys.argv[2]), 50000
resource.setrlimit(resource.RLIMIT_NOFILE, (n + 100, n + 100))
def mk(peer):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((bind, 5300)); s.connect(peer); return s
target = mk(("127.0.0.2", 9999))
others = [mk(("127.0.0.2", 20000 + i)) for i in range(n)]
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); tx.bind(("127.0.0.2", 9999))
msg = b"x" * 32; t = time.perf_counter()
for i in range(K):
    tx.sendto(msg, ("127.0.0.1", 5300)); target.recv(64)
dt = time.perf_counter() - t
print(f"bind={bind:9} connected_sockets_on_port={n+1:6} {dt/K*1e9:8.0f} ns/datagram")
