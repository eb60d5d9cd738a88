"""Reflect an upstream ECONNREFUSED to the app as ICMP port-unreachable 'from' the original destination."""
import socket, struct
from common import *
def _csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b)); s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
def reflect(client, odst, payload=b""):
    f = fam(odst[0]); udp = struct.pack("!HHHH", client[1], odst[1], 8 + len(payload), 0)
    if f == socket.AF_INET:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        s.setsockopt(SOL_IP, IP_TRANSPARENT, 1)
        inner = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 0, 0, 64, 17, 0,
                            socket.inet_aton(client[0]), socket.inet_aton(odst[0]))
        body = inner + udp
        icmp = struct.pack("!BBHI", 3, 3, 0, 0) + body
        icmp = icmp[:2] + struct.pack("!H", _csum(icmp)) + icmp[4:]
    else:
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)  # kernel fills the checksum
        s.setsockopt(SOL_IPV6, IPV6_TRANSPARENT, 1)
        inner = struct.pack("!IHBB16s16s", 0x60000000, 8 + len(payload), 17, 64,
                            socket.inet_pton(socket.AF_INET6, client[0]), socket.inet_pton(socket.AF_INET6, odst[0]))
        icmp = struct.pack("!BBHI", 1, 4, 0, 0) + inner + udp
    s.setsockopt(socket.SOL_SOCKET, SO_MARK, MARK)
    s.bind((odst[0], 0)); s.sendto(icmp, (client[0], 0)); s.close()
    print("reflected ICMP port unreachable to", client, "from", odst, flush=True)
