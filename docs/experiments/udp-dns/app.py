"""app.py PORT: the pod's UDP app, unconnected on [::]:PORT, logs the peer and echoes back."""
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[1]))); print("app listening", flush=True)
while True:
    d, peer = s.recvfrom(4096); print("app got", d, "from", peer, flush=True); s.sendto(b"echo:" + d, peer)
