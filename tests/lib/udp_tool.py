"""UDP peer for capture tests.
  udp_tool.py echo PORT
      on [::]:PORT (dual-stack): answers every datagram with "<sender ip> <sender port> <payload>";
      prints "ready", then nothing.
  udp_tool.py ask HOST PORT N [--bind PORT] [--unconnected] [--wait S]
      from ONE socket (connect()ed, as resolvers and most UDP clients do, unless --unconnected):
      sends N datagrams "m<i>", collects answers for up to S s (default 2) and prints one JSON
      line: {"sent", "answers", "from": [sender "ip port", ...], "seen_as": [...], "error",
      "error_after_s", "local_port"}. "seen_as" is what the peer said it saw as our address.
"""
import json
import socket
import sys
import time


def family_of(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def echo(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.bind(("::", port))
    print("ready", flush=True)
    while True:
        data, peer = s.recvfrom(65535)
        ip = peer[0][7:] if peer[0].startswith("::ffff:") else peer[0]
        s.sendto(f"{ip} {peer[1]} ".encode() + data, peer)


def ask(host, port, n, bind_port=0, connected=True, wait=2.0):
    fam = family_of(host)
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", bind_port))
    out = {"sent": 0, "answers": 0, "from": [], "seen_as": [], "error": None, "error_after_s": None,
           "local_port": s.getsockname()[1]}
    if connected:
        s.connect((host, port))
    start = time.time()
    try:
        for i in range(n):
            msg = f"m{i}".encode()
            if connected:
                s.send(msg)
            else:
                s.sendto(msg, (host, port))
            out["sent"] += 1
        deadline = time.time() + wait
        while out["answers"] < n:
            left = deadline - time.time()
            if left <= 0:
                break
            s.settimeout(left)
            try:
                data, peer = s.recvfrom(65535)
            except socket.timeout:
                break
            out["answers"] += 1
            sender = f"{peer[0]} {peer[1]}"
            if sender not in out["from"]:
                out["from"].append(sender)
            seen = " ".join(data.decode().split(" ")[:2])
            if seen not in out["seen_as"]:
                out["seen_as"].append(seen)
    except OSError as e:
        out["error"] = type(e).__name__
        out["error_after_s"] = round(time.time() - start, 3)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "echo":
        echo(int(sys.argv[2]))
    else:
        args = sys.argv[2:]
        opts = {"bind_port": 0, "connected": True, "wait": 2.0}
        pos = []
        i = 0
        while i < len(args):
            if args[i] == "--bind":
                opts["bind_port"] = int(args[i + 1]); i += 2
            elif args[i] == "--unconnected":
                opts["connected"] = False; i += 1
            elif args[i] == "--wait":
                opts["wait"] = float(args[i + 1]); i += 2
            else:
                pos.append(args[i]); i += 1
        ask(pos[0], int(pos[1]), int(pos[2]), **opts)
