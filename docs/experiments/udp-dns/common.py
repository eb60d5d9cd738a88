import socket, struct, ipaddress
SOL_IP, SOL_IPV6 = 0, 41
IP_TRANSPARENT, IP_RECVORIGDSTADDR, IPV6_TRANSPARENT, IPV6_RECVORIGDSTADDR = 19, 20, 75, 74
SO_MARK, MARK, SO_RCVBUFFORCE = 36, 0x539, 33
def plain(a):   # ::ffff:a.b.c.d -> a.b.c.d
    ip = ipaddress.ip_address(a)
    return str(ip.ipv4_mapped) if ip.version == 6 and ip.ipv4_mapped else str(ip)
def fam(a): return socket.AF_INET6 if ":" in a else socket.AF_INET
def capture_socket(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(SOL_IPV6, socket.IPV6_V6ONLY, 0)
    for lvl, opt in ((SOL_IP, IP_TRANSPARENT), (SOL_IPV6, IPV6_TRANSPARENT),
                     (SOL_IP, IP_RECVORIGDSTADDR), (SOL_IPV6, IPV6_RECVORIGDSTADDR)):
        s.setsockopt(lvl, opt, 1)
    s.setsockopt(socket.SOL_SOCKET, SO_MARK, MARK)
    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
    s.bind(("::", port)); return s
def origdst(anc):
    for lvl, typ, data in anc:
        if lvl == SOL_IP and typ == IP_RECVORIGDSTADDR:
            port, = struct.unpack("!H", data[2:4]); return socket.inet_ntop(socket.AF_INET, data[4:8]), port
        if lvl == SOL_IPV6 and typ == IPV6_RECVORIGDSTADDR:
            port, = struct.unpack("!H", data[2:4]); return socket.inet_ntop(socket.AF_INET6, data[8:24]), port
    return None
def transparent_socket(family, mark=True, reuse=True):
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.setsockopt(SOL_IP if family == socket.AF_INET else SOL_IPV6,
                 IP_TRANSPARENT if family == socket.AF_INET else IPV6_TRANSPARENT, 1)
    if reuse: s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if mark: s.setsockopt(socket.SOL_SOCKET, SO_MARK, MARK)
    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)
    return s
def upstream_socket(family, dst):
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, SO_MARK, MARK)
    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)
    s.connect(dst); return s
