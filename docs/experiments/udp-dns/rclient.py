"""rclient.py SRC SPORT DST DPORT [N]: remote client; sends N (default 1) datagrams from SRC:SPORT, prints replies and senders."""
import socket, sys
src, sp, dst, dp = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_DGRAM); s.bind((src, sp)); s.settimeout(2)
for i in range(int(sys.argv[5]) if len(sys.argv) > 5 else 1):
    s.sendto(b"hello%d" % i, (dst, dp))
    try: d, peer = s.recvfrom(4096); print("client got", d, "from", peer[:2])
    except socket.timeout: print("client: TIMEOUT (no reply in 2 s)")
