"""Issue 6/6: hostile and broken peers on the control socket (beyond test_foundation's bad
messages): 250 fds in one message, floods of connects that never send, slow peers that hold the
socket, peers that vanish mid-request or never read their reply. The agent answers or disconnects
each, keeps serving the CNI plugin throughout, and ends with the fds it started with."""
import json
import os
import selectors
import socket
import time

import pytest

import nstest
from nstest import agent, netns

IDLE_MS = 400


@pytest.fixture(autouse=True)
def _root():
    nstest.require_root()


def hello(a):
    return a.call({"type": "hello", "version": 1})["ok"]


def test_hostile_peers_are_cut_off_and_others_served():
    with agent(["--control-idle-timeout-ms", str(IDLE_MS)]) as a, netns(3) as nss:
        a.enrol(nss[0])
        base = nstest.stable_fd_count(a.pid)
        # 250 fds with one add: refused (control data truncated), every fd closed by the agent.
        fds = [os.open(nss[1].path, os.O_RDONLY) for _ in range(250)]
        try:
            with a.connect() as s:
                msg = json.dumps({"type": "add", "version": 1, "pod": {"uid": "many"}}).encode()
                try:
                    socket.send_fds(s, [msg], fds)
                    r = json.loads(s.recv(65536))
                    assert not r["ok"] and ("truncated" in r["error"] or "one netns fd" in r["error"]), r
                except OSError:
                    pass  # the kernel may refuse that many fds outright (SCM_MAX_FD): also fine
        finally:
            for fd in fds:
                os.close(fd)
        # A flood of connects that never send anything: the agent keeps at most its limit open,
        # evicting the longest silent; the CNI plugin's request is served in the middle of it.
        flood = []
        for _ in range(300):
            flood.append(a.connect())
        assert hello(a), "a legitimate peer was locked out by the flood"
        r = a.ctl("enroll", "--netns", nss[2].path, "--uid", nss[2].name)
        assert r.returncode == 0
        # Slow peers holding the socket are disconnected after the idle timeout: wait (bounded)
        # for every one of them to see EOF (an evicted one may get the "too many control
        # connections" reply first).
        still_open = set(flood)
        sel = selectors.DefaultSelector()
        for s in flood:
            sel.register(s, selectors.EVENT_READ)
        deadline = time.monotonic() + IDLE_MS / 1000 * 3 + 10
        while still_open and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.2):
                try:
                    data = key.fileobj.recv(65536)
                except OSError:
                    data = b""  # reset: disconnected too
                if not data:
                    sel.unregister(key.fileobj)
                    still_open.discard(key.fileobj)
        sel.close()
        for s in flood:
            s.close()
        assert not still_open, f"{len(still_open)} silent peers still connected"
        # Peers that vanish mid-request, or never read their replies.
        for _ in range(20):
            s = a.connect()
            s.send(json.dumps({"type": "list", "version": 1}).encode())
            s.close()  # gone before the reply
        deaf = a.connect()
        for _ in range(2000):
            try:
                deaf.send(json.dumps({"type": "status", "version": 1}).encode(), socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except OSError:
                break  # the agent dropped us: fine
        assert hello(a)
        deaf.close()
        assert a.alive()
        assert sorted(p["uid"] for p in a.pods()) == sorted([nss[0].name, nss[2].name])
        a.ctl("unenroll", "--uid", nss[2].name)
        assert nstest.settled_fd_count(a.pid, base) == base, "fd leak after hostile peers"
        assert "closing the longest silent one" in a.logs()
