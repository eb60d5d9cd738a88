"""DNS client for capture tests, as resolvers do it: a UDP socket connect()ed to the server (the
kernel then drops datagrams from any other address or port), TCP when the answer is truncated.
  dns_client.py SERVER PORT query NAME [A|AAAA]  -> "<rcode> <first address or -> <udp|tcp>"
  dns_client.py SERVER PORT burst N              -> N queries (distinct ids) from ONE socket, all
                                                    sent before any answer is read: "answered K of N"
"""
import socket
import struct
import sys
import time

RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def build(qid, name, qtype):
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", qtype, 1)


def first_address(msg):
    qd, an = struct.unpack("!HH", msg[4:8])
    i = 12
    while msg[i]:
        i += 1 + msg[i]
    i += 5
    for _ in range(an):
        i += 2  # compressed name pointer
        t, _c, _ttl, ln = struct.unpack("!HHIH", msg[i:i + 10])
        i += 10
        d = msg[i:i + ln]
        i += ln
        if t == 1:
            return socket.inet_ntoa(d)
        if t == 28:
            return socket.inet_ntop(socket.AF_INET6, d)
    return "-"


def udp_socket(server, port):
    fam = socket.AF_INET6 if ":" in server else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, 33, 4 << 20)  # 33: SO_RCVBUFFORCE (root), past rmem_max  # a burst of answers (root)
    s.connect((server, port))
    return s


def query(server, port, name, qtype):
    s = udp_socket(server, port)
    s.settimeout(3)
    s.send(build(0x1234, name, qtype))
    r = s.recv(4096)
    assert r[:2] == b"\x12\x34", "wrong id"
    proto = "udp"
    if r[2] & 0x02:  # truncated: retry over TCP, as resolvers do
        fam = socket.AF_INET6 if ":" in server else socket.AF_INET
        t = socket.create_connection((server, port), timeout=3)
        q = build(0x1235, name, qtype)
        t.sendall(struct.pack("!H", len(q)) + q)
        n = struct.unpack("!H", t.recv(2, socket.MSG_WAITALL))[0]
        r = t.recv(n, socket.MSG_WAITALL)
        proto = "tcp"
    print(RCODES.get(r[3] & 0x0f, "OTHER"), first_address(r), proto)


def burst(server, port, n):
    s = udp_socket(server, port)
    for i in range(n):
        s.send(build(i, f"q{i}.test", 1))
    got = set()
    s.settimeout(0.5)
    deadline = time.time() + 10
    while len(got) < n and time.time() < deadline:
        try:
            r = s.recv(4096)
        except socket.timeout:
            continue
        got.add(struct.unpack("!H", r[:2])[0])
    print("answered", len(got), "of", n)


def main():
    server, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if mode == "query":
        query(server, port, sys.argv[4], 28 if len(sys.argv) > 5 and sys.argv[5] == "AAAA" else 1)
    elif mode == "burst":
        burst(server, port, int(sys.argv[4]))


if __name__ == "__main__":
    main()
