"""dnsclient.py SERVER N QTYPE(A|AAAA) [mark]: N parallel queries from ONE connected UDP socket, distinct ids."""
import socket, struct, sys, time, select
from common import fam, SO_MARK, MARK, SO_RCVBUFFORCE
srv, n, qt = sys.argv[1], int(sys.argv[2]), sys.argv[3]; marked = len(sys.argv) > 4
def q(i):
    name = b"".join(bytes([len(l)]) + l for l in b"test.example".split(b".")) + b"\0"
    return struct.pack("!HHHHHH", i, 0x0100, 1, 0, 0, 0) + name + struct.pack("!HH", 1 if qt == "A" else 28, 1)
s = socket.socket(fam(srv), socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
if marked: s.setsockopt(socket.SOL_SOCKET, SO_MARK, MARK)
s.connect((srv, 53))
for i in range(n): s.send(q(i))
got = set(); addr = None; t0 = time.time()
while len(got) < n and select.select([s], [], [], 2.0)[0]:
    d = s.recv(4096); i, fl, qd, an = struct.unpack("!HHHH", d[:8]); got.add(i)
    if an: addr = socket.inet_ntop(socket.AF_INET if qt == "A" else socket.AF_INET6, d[-4:] if qt == "A" else d[-16:])
print(f"server={srv} qtype={qt} marked={marked} sent={n} answered={len(got)} lost={n-len(got)} "
      f"answer_addr={addr} local={s.getsockname()} {time.time()-t0:.2f}s")
