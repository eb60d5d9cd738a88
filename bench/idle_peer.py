#!/usr/bin/python3
"""Idle TCP connections for bench.py --idle: one process holds thousands of sockets (selectors,
non-blocking), in any number of network namespaces (it enters each with setns(2) before creating a
socket there, so one server and one client process serve a hundred pods).

  idle_peer.py serve NETNS,IP,PORT ...
      listen on each IP:PORT inside NETNS (a /var/run/netns path) and echo what arrives; prints
      "ready" once every listener is up; runs until stdin closes.
  idle_peer.py connect [--rate R] [--inflight K] NETNS,IP,PORT,COUNT ...
      open COUNT connections to each IP:PORT from inside NETNS, the targets interleaved (so the
      directions and pods mix), at most R new connections a second and K handshakes at once; on
      each one 4-byte request and its echo, then nothing. Prints one JSON line
      {"open": n, "failed": f, "secs": s} when all are done; then on each "check" line on stdin one
      {"open": n, "closed": c} (closed: a connection the peer or the proxy ended since), until
      stdin closes.

On exit every socket is closed with a reset (SO_LINGER 0): nothing lingers in TIME_WAIT.
"""
import ctypes
import errno
import json
import os
import resource
import select
import selectors
import socket
import struct
import sys
import time

CLONE_NEWNET = 0x40000000
PING = b"idle"
_libc = ctypes.CDLL(None, use_errno=True)
_netns_fds = {}


def enter(path):
    """Make `path` the network namespace new sockets are created in."""
    fd = _netns_fds.get(path)
    if fd is None:
        fd = _netns_fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns {path}: {os.strerror(e)}")


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(hard, 65536), max(hard, 65536)))
    except (ValueError, OSError):  # no CAP_SYS_RESOURCE: the hard limit is the most
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def abort_all(socks):
    linger = struct.pack("ii", 1, 0)
    for s in socks:
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            s.close()
        except OSError:
            pass


def serve(specs):
    sel = selectors.DefaultSelector()
    listeners, conns = [], set()
    for spec in specs:
        ns, ip, port = spec.split(",")
        enter(ns)
        ls = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((ip, int(port)))
        ls.listen(4096)
        ls.setblocking(False)
        sel.register(ls, selectors.EVENT_READ, "listen")
        listeners.append(ls)
    sel.register(sys.stdin, selectors.EVENT_READ, "stdin")
    print("ready", flush=True)
    try:
        while True:
            for key, _ in sel.select():
                if key.data == "stdin":
                    if not os.read(sys.stdin.fileno(), 4096):
                        return
                elif key.data == "listen":
                    for _ in range(256):
                        try:
                            c, _ = key.fileobj.accept()
                        except BlockingIOError:
                            break
                        c.setblocking(False)
                        sel.register(c, selectors.EVENT_READ, "conn")
                        conns.add(c)
                else:
                    c = key.fileobj
                    try:
                        data = c.recv(4096)
                        if data:
                            c.send(data)  # a few bytes: the socket buffer takes them
                            continue
                    except BlockingIOError:
                        continue
                    except OSError:
                        pass
                    sel.unregister(c)  # the peer closed or reset
                    conns.discard(c)
                    c.close()
    finally:
        abort_all(conns)


def connect(specs, rate, inflight_max):
    # Interleave the targets: one connection to each in turn until each has its count.
    todo, queues = [], []
    for spec in specs:
        ns, ip, port, count = spec.split(",")
        queues.append([(ns, ip, int(port))] * int(count))
    while any(queues):
        for q in queues:
            if q:
                todo.append(q.pop())
    todo.reverse()
    sel = selectors.DefaultSelector()
    idle, failed, inflight = [], 0, {}
    t0 = time.monotonic()
    started = 0
    while todo or inflight:
        # Start as many as the rate and the in-flight cap allow.
        allowed = int((time.monotonic() - t0) * rate) + 1 - started
        while todo and allowed > 0 and len(inflight) < inflight_max:
            ns, ip, port = todo.pop()
            enter(ns)
            s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
            s.setblocking(False)
            rc = s.connect_ex((ip, port))
            started += 1
            allowed -= 1
            if rc not in (0, errno.EINPROGRESS):
                failed += 1
                s.close()
                continue
            inflight[s] = time.monotonic()
            sel.register(s, selectors.EVENT_WRITE, "connecting")
        for key, _ in sel.select(timeout=0.01):
            s = key.fileobj
            try:
                if key.data == "connecting":
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, os.strerror(err))
                    s.send(PING)
                    sel.modify(s, selectors.EVENT_READ, "waiting")
                    continue
                data = s.recv(16)
                if data != PING:
                    raise OSError(errno.EPROTO, f"unexpected answer {data!r}")
            except BlockingIOError:
                continue
            except OSError:
                failed += 1
                sel.unregister(s)
                del inflight[s]
                s.close()
                continue
            sel.unregister(s)
            del inflight[s]
            idle.append(s)
        now = time.monotonic()
        for s in [s for s, t in inflight.items() if now - t > 10]:  # no answer in 10 s
            failed += 1
            sel.unregister(s)
            del inflight[s]
            s.close()
    print(json.dumps({"open": len(idle), "failed": failed, "secs": round(time.monotonic() - t0, 3)}), flush=True)
    try:
        for line in sys.stdin:
            if line.strip() == "check":
                # An idle connection has nothing to read: readable means EOF or a reset.
                p = select.poll()
                for s in idle:
                    p.register(s, select.POLLIN | select.POLLRDHUP)
                closed = len(p.poll(0))
                print(json.dumps({"open": len(idle) - closed, "closed": closed}), flush=True)
    finally:
        abort_all(idle)


def main():
    raise_nofile()
    args = sys.argv[1:]
    if args[:1] == ["serve"]:
        serve(args[1:])
    elif args[:1] == ["connect"]:
        rate, inflight, specs = 2000, 200, []
        it = iter(args[1:])
        for a in it:
            if a == "--rate":
                rate = int(next(it))
            elif a == "--inflight":
                inflight = int(next(it))
            else:
                specs.append(a)
        connect(specs, rate, inflight)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
