"""A small authoritative DNS server for capture tests (UDP and TCP on one address and port).
  dns_server.py ADDR PORT [quiet]
Answers *.test: A 10.53.0.1 / AAAA fd00:53::1 (NOERROR); nx.test: NXDOMAIN; big.test over UDP: an
empty answer with TC set (a resolver retries over TCP), over TCP: 40 A records; slow.test: answered
after 1 s. Prints "ready",
then (unless quiet) one line per query: "<proto> <client ip> <client port> <name> <id>".
"""
import socket
import struct
import sys
import threading
import time


def parse_question(msg):
    i, labels = 12, []
    while msg[i]:
        n = msg[i]
        labels.append(msg[i + 1:i + 1 + n].decode())
        i += 1 + n
    qtype = struct.unpack("!H", msg[i + 1:i + 3])[0]
    return ".".join(labels).lower(), qtype, msg[12:i + 5]


def answer(query, tcp):
    qid, flags = struct.unpack("!HH", query[:4])
    name, qtype, question = parse_question(query)
    rd = flags & 0x0100
    rcode, records, tc = 0, [], 0
    if name == "nx.test" or not name.endswith("test"):
        rcode = 3
    elif name == "big.test":
        if tcp:
            records = [(1, socket.inet_aton(f"10.53.1.{i}")) for i in range(1, 41)]
        else:
            tc = 0x0200
    elif qtype == 1:
        records = [(1, socket.inet_aton("10.53.0.1"))]
    elif qtype == 28:
        records = [(28, socket.inet_pton(socket.AF_INET6, "fd00:53::1"))]
    hdr = struct.pack("!HHHHHH", qid, 0x8000 | 0x0400 | tc | rd | 0x0080 | rcode, 1, len(records), 0, 0)
    body = b"".join(b"\xc0\x0c" + struct.pack("!HHIH", t, 1, 60, len(d)) + d for t, d in records)
    return hdr + question + body, name, qid


QUIET = False


def log(proto, addr, name, qid):
    if QUIET:
        return
    host = addr[0][7:] if addr[0].startswith("::ffff:") else addr[0]
    print(proto, host, addr[1], name, qid, flush=True)


def reply_udp(s, q, addr):
    try:
        r, name, qid = answer(q, False)
    except (IndexError, struct.error, UnicodeDecodeError):
        return
    if name == "slow.test":
        time.sleep(1.0)
    try:
        s.sendto(r, addr)
    except OSError:
        return
    log("udp", addr, name, qid)


def serve_udp(s):
    while True:
        q, addr = s.recvfrom(4096)
        if b"\x04slow\x04test" in q:  # answered a second later, off the receive loop
            threading.Thread(target=reply_udp, args=(s, q, addr), daemon=True).start()
        else:
            reply_udp(s, q, addr)


def serve_tcp_conn(c, addr):
    with c:
        while True:
            hdr = c.recv(2, socket.MSG_WAITALL)
            if len(hdr) < 2:
                return
            q = c.recv(struct.unpack("!H", hdr)[0], socket.MSG_WAITALL)
            r, name, qid = answer(q, True)
            c.sendall(struct.pack("!H", len(r)) + r)
            log("tcp", addr, name, qid)


def serve_tcp(s):
    while True:
        c, addr = s.accept()
        threading.Thread(target=serve_tcp_conn, args=(c, addr), daemon=True).start()


def main():
    global QUIET
    addr, port = sys.argv[1], int(sys.argv[2])
    QUIET = sys.argv[3:] == ["quiet"]
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    u = socket.socket(fam, socket.SOCK_DGRAM)
    u.setsockopt(socket.SOL_SOCKET, 33, 4 << 20)  # 33: SO_RCVBUFFORCE (root), past rmem_max  # a burst of 1000 queries
    u.bind((addr, port))
    t = socket.socket(fam, socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind((addr, port))
    t.listen(64)
    threading.Thread(target=serve_tcp, args=(t,), daemon=True).start()
    print("ready", flush=True)
    serve_udp(u)


if __name__ == "__main__":
    main()
