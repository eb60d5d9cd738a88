"""DNS capture agent prototype. Run in the pod netns with bpffs visible:
   nsenter --net=/run/netns/udpx-pod python3 dnsagent.py {session|close} [ports...]
session: the per-flow reply socket (bound to orig dst, connected to the client) lives as long as the flow
         and is read: client datagrams that land on it are forwarded too.
close:   a reply socket is made per answer and closed right after; datagrams it caught are counted as lost."""
import selectors, socket, sys, os, signal, errno
import bpfmap
from common import *
mode = sys.argv[1]; ports = [int(p) for p in sys.argv[2:]] or [53]
cap = capture_socket(15053)
fd = bpfmap.m("socks"); bpfmap.update(fd, bpfmap.u32(0), struct.pack("=Q", cap.fileno())); os.close(fd)
fd = bpfmap.m("out_ports")
for p in ports: bpfmap.update(fd, bpfmap.u32(p), bpfmap.u32(1))
os.close(fd)
sel = selectors.DefaultSelector(); sel.register(cap, selectors.EVENT_READ, ("cap", None))
sessions = {}   # (client, odst) -> dict(up=sock, reply=sock|None)
st = dict(queries=0, via_reply=0, answers=0, stranded=0, refused=0)
def session(client, odst):
    key = (client, odst); s = sessions.get(key)
    if s: return s
    f = fam(odst[0]); s = dict(client=client, odst=odst, up=upstream_socket(f, odst), reply=None)
    sel.register(s["up"], selectors.EVENT_READ, ("up", s)); sessions[key] = s; return s
def reply_socket(s):
    f = fam(s["odst"][0]); r = transparent_socket(f)
    r.bind(s["odst"]); r.connect(s["client"]); return r
def on_signal(*_):
    print("agent stats", st, "bpf", bpfmap.stats(), flush=True); sys.exit(0)
signal.signal(signal.SIGTERM, on_signal); signal.signal(signal.SIGINT, on_signal)
print("agent ready", mode, ports, flush=True)
while True:
    for k, _ in sel.select():
        kind, s = k.data
        if kind == "cap":
            data, anc, _, src = cap.recvmsg(4096, 256)
            odst = origdst(anc); client = (plain(src[0]), src[1])
            st["queries"] += 1; s = session(client, odst); s["up"].send(data)
            if mode == "session" and s["reply"] is None:
                s["reply"] = reply_socket(s); sel.register(s["reply"], selectors.EVENT_READ, ("reply", s))
        elif kind == "reply":
            data = s["reply"].recv(4096); st["queries"] += 1; st["via_reply"] += 1; s["up"].send(data)
        else:
            try: data = s["up"].recv(4096)
            except OSError as e:
                st["refused"] += 1; print("upstream error", e, "for", s["client"], "->", s["odst"], flush=True)
                if os.environ.get("REFLECT_ICMP"):
                    import icmpreflect; icmpreflect.reflect(s["client"], s["odst"])
                continue
            st["answers"] += 1
            if mode == "session": s["reply"].send(data)
            else:
                r = reply_socket(s); r.send(data); r.setblocking(False)
                while True:
                    try: r.recv(4096); st["stranded"] += 1
                    except BlockingIOError: break
                r.close()
