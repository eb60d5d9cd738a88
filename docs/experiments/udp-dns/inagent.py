"""Inbound UDP agent prototype (pod netns, bpffs visible):
   [BIND_LO=1] nsenter --net=/run/netns/udpx-pod python3 inagent.py PORT {bypass|ifindex|none} {transparent|raw}
BIND_LO=1: delivery sockets get SO_BINDTODEVICE lo (v6 then needs `ip -6 rule add oif lo lookup 133`).
Captures datagrams to PORT (sk_lookup -> socks[1] = [::]:15006), delivers them to the app from the client's
address (IP_TRANSPARENT socket bound to client ip:port, SO_MARK 0x539, connected to the app), relays the
app's reply back to the client from the original destination (transparent bound socket or raw socket)."""
import selectors, socket, sys, os, struct, signal
import bpfmap
from common import *
port, loopguard, replyhow = int(sys.argv[1]), sys.argv[2], sys.argv[3]
cap = capture_socket(15006)
fd = bpfmap.m("socks"); bpfmap.update(fd, bpfmap.u32(1), struct.pack("=Q", cap.fileno())); os.close(fd)
fd = bpfmap.m("in_ports"); bpfmap.update(fd, bpfmap.u32(port), bpfmap.u32(1)); os.close(fd)
fd = bpfmap.m("cfg"); bpfmap.update(fd, bpfmap.u32(0), bpfmap.u32(1 if loopguard == "ifindex" else 0))
bpfmap.update(fd, bpfmap.u32(1), bpfmap.u32(1 if os.environ.get("BIND_LO") else 0)); os.close(fd)
bypass = bpfmap.m("bypass")
def bkey(ip, p):
    a = socket.inet_pton(fam(ip), ip); a = a if len(a) == 16 else b"\0" * 12 + a
    return a + struct.pack("=I", struct.unpack("=H", struct.pack("!H", p))[0])
sel = selectors.DefaultSelector(); sel.register(cap, selectors.EVENT_READ, None)
def send_reply(data, odst, client):
    f = fam(odst[0])
    if replyhow == "transparent":
        r = transparent_socket(f)
        try: r.bind(odst)
        except OSError as e: print("reply socket bind", odst, "failed:", e, flush=True); r.close(); return
        r.connect(client); r.send(data); r.close(); return
    r = socket.socket(f, socket.SOCK_RAW, socket.IPPROTO_UDP); r.setsockopt(socket.SOL_SOCKET, SO_MARK, MARK)
    if f == socket.AF_INET6: r.setsockopt(socket.IPPROTO_IPV6, 7, 6)   # IPV6_CHECKSUM at offset 6: kernel fills it
    r.bind((odst[0], 0))
    hdr = struct.pack("!HHHH", odst[1], client[1], 8 + len(data), 0)  # v4: checksum 0 = none
    r.sendto(hdr + data, (client[0], 0)); r.close()
def on_signal(*_):
    for k in set(keys): bpfmap.delete(bypass, k)
    print("inagent captures", ncap, "bpf", bpfmap.stats(), flush=True); sys.exit(0)
signal.signal(signal.SIGTERM, on_signal)
ncap = 0
keys = []
print("inagent ready", port, loopguard, replyhow, flush=True)
while True:
    for k, _ in sel.select():
        if k.data is None:
            data, anc, _, src = cap.recvmsg(4096, 256); odst = origdst(anc); client = (plain(src[0]), src[1])
            ncap += 1
            if ncap <= 3: print("captured", data, "from", client, "orig dst", odst, flush=True)
            if ncap > 50:
                if ncap == 51: print("more than 50 captures: a delivery loop; not delivering any more", flush=True)
                continue
            d = transparent_socket(fam(client[0]))
            if os.environ.get("BIND_LO"): d.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo")
            try: d.bind(client)
            except OSError as e: print("deliver bind", client, "failed:", e, flush=True); continue
            if loopguard == "bypass": bpfmap.update(bypass, bkey(*client), bpfmap.u32(1)); keys.append(bkey(*client))
            d.connect(odst); d.send(data)
            sel.register(d, selectors.EVENT_READ, (odst, client))
        else:
            odst, client = k.data
            try: data = k.fileobj.recv(4096)
            except OSError as e: print("deliver socket error", e, flush=True); sel.unregister(k.fileobj); continue
            print("app reply", data, "caught by agent for", client, flush=True)
            send_reply(data, odst, client)
