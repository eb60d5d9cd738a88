"""fastdns.py ADDR...: tiny authoritative responder for test.example (A 10.77.0.2, AAAA fd00:77::2), 8 MiB rcvbuf,
so that loss measurements are not dominated by the server's own receive-buffer drops."""
import socket, selectors, sys, struct
sel = selectors.DefaultSelector()
for a in sys.argv[1:]:
    s = socket.socket(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20); s.bind((a, 53)); sel.register(s, selectors.EVENT_READ)
while True:
    for k, _ in sel.select():
        d, src = k.fileobj.recvfrom(4096); qt = struct.unpack("!H", d[-4:-2])[0]
        rd = socket.inet_pton(socket.AF_INET, "10.77.0.2") if qt == 1 else socket.inet_pton(socket.AF_INET6, "fd00:77::2")
        ans = b"\xc0\x0c" + struct.pack("!HHIH", qt, 1, 60, len(rd)) + rd
        k.fileobj.sendto(d[:2] + b"\x81\x80" + struct.pack("!HHHH", 1, 1, 0, 0) + d[12:] + ans, src)
