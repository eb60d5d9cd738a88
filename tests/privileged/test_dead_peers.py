"""Issue 14 item 2: a dead peer must not pin a relay connection until the idle timeout.

Both sides of every relayed connection get TCP_USER_TIMEOUT and keepalive; a half-closed
connection has its own inactivity timeout. A peer "dies" here by having every packet it sends
dropped by an nft output rule in its own (the test's) netns: it neither acknowledges nor resets.
"""
import contextlib
import socket
import subprocess
import time

import pytest

import nstest
from nstest import agent, topology

APP = 8080
# The bounds under test (agent flags) and the slack allowed on top of them for the kernel's timers
# (keepalive/retransmission timers fire on their own schedule) and the relay's 1 s tick.
FAST = ["--tcp-user-timeout-ms", "1500", "--keepalive-idle-s", "1", "--keepalive-interval-s", "1",
        "--keepalive-count", "2", "--half-close-timeout-s", "2"]
SLACK = 3.0


@pytest.fixture(autouse=True)
def _root():
    nstest.require_root()


@contextlib.contextmanager
def silenced(ns):
    """Every TCP segment ns sends is dropped (an nft output rule in the test's own remote netns;
    this kernel has no tc action modules), until the block ends. Neighbour discovery still
    answers: the peer's host is reachable, its TCP is not (with NDP gone too, the kernel holds the
    segments in the neighbour queue and does not count retransmissions until the entry fails)."""
    table = "netsteer_test_silence"
    ns.exec(["nft", f"add table inet {table}; add chain inet {table} out "
             "{ type filter hook output priority 0; }; "
             f"add rule inet {table} out meta l4proto tcp drop"])
    try:
        yield
    finally:
        ns.exec(["nft", f"delete table inet {table}"], check=False)


def relay(a, uid, d):
    return a.inspect(uid)["relay"][d]


def wait_released(a, uid, d, start, bound, ns=None):
    """Seconds until the relay has no open connection in direction d; fails past bound + SLACK
    (with the TCP sockets of ns, timers and retransmissions included, in the message)."""
    while True:
        r = relay(a, uid, d)
        if r["active"] == 0:
            return time.time() - start, r
        if time.time() - start > bound + SLACK:
            socks = ns.exec(["ss", "-Htinoe"]).stdout if ns else ""
            raise AssertionError(f"{d} connection still open {bound + SLACK:.1f} s after the peer died: {r}\n{socks}")
        time.sleep(0.05)


HOLDER = (
    "import socket,sys,time\n"
    "h,p,mode=sys.argv[1],int(sys.argv[2]),sys.argv[3]\n"
    "s=socket.create_connection((h,p))\n"
    "s.sendall(b'ECHO\\n'+b'x'*100)\n"
    "got=b''\n"
    "while len(got)<100: got+=s.recv(100)\n"
    "print('up',flush=True)\n"
    "sys.stdin.readline()\n"  # the test says when to go on
    "if mode=='push':\n"
    "  try:\n"
    "    s.sendall(b'y'*200000)\n"
    "  except OSError: pass\n"
    "if mode=='halfclose': s.shutdown(socket.SHUT_WR)\n"
    "time.sleep(60)\n"
)


def hold(ns, host, mode):
    p = ns.popen([nstest.PY, "-c", HOLDER, host, str(APP), mode], stdin=subprocess.PIPE,
                 stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "up"
    return p


# (direction, client's mode, bound in s): outbound — the remote server stops acknowledging while
# the client pushes data, the relay's upstream hits TCP_USER_TIMEOUT; inbound — the remote client
# goes silent with nothing in flight, keepalive probes on the relay's downstream go unanswered
# (released within keepalive-idle + the user timeout).
CASES = [("outbound", "push", 1.5), ("inbound", "idle", 1 + 1.5)]


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("direction,mode,bound", CASES)
def test_dead_peer_is_released_and_counted(direction, mode, bound, v6):
    with agent(FAST) as a, topology() as t:
        server, client = (t.remote, t.pod) if direction == "outbound" else (t.pod, t.remote)
        t.serve(server, APP)
        a.enrol(t.pod, ip=[t.pod_ip, t.pod_ip6])
        uid = t.pod.name
        t.wait_v6_ready()
        dst = (t.remote_ip6 if v6 else t.remote_ip) if direction == "outbound" else (t.pod_ip6 if v6 else t.pod_ip)
        p = hold(client, dst, mode)
        try:
            assert relay(a, uid, direction)["active"] == 1
            with silenced(t.remote):
                start = time.time()
                p.stdin.write("go\n")
                p.stdin.flush()
                took, r = wait_released(a, uid, direction, start, bound, t.pod)
            assert r["dead_peers"] == 1 and r["closed"] == 1, r
        finally:
            p.kill()
            p.wait()


def test_half_closed_connection_times_out():
    """The client half-closes and the upstream neither answers nor closes: released after the
    half-close timeout (2 s here), not the hour-long idle timeout, and counted."""
    with agent(FAST) as a, topology() as t:
        # A server that reads and never answers or closes.
        t.spawn(t.remote, "import socket,time\n"
                          f"s=socket.create_server(('::',{APP}),family=socket.AF_INET6,dualstack_ipv6=True)\n"
                          "print('ready',flush=True)\n"
                          "c,_=s.accept()\n"
                          "while c.recv(65536): pass\n"
                          "time.sleep(60)\n")
        a.enrol(t.pod, ip=[t.pod_ip, t.pod_ip6])
        uid = t.pod.name
        code = ("import socket,sys,time\n"
                f"s=socket.create_connection(('{t.remote_ip}',{APP}))\n"
                "s.sendall(b'hello'); s.shutdown(socket.SHUT_WR)\n"
                "print('sent',flush=True)\n"
                "s.settimeout(20)\n"
                "try:\n"
                "  print('eof' if s.recv(10)==b'' else 'data',flush=True)\n"
                "except OSError as e: print('error',e.errno,flush=True)\n")
        c = t.pod.popen([nstest.PY, "-c", code], stdout=subprocess.PIPE, text=True)
        try:
            assert c.stdout.readline().strip() == "sent"
            start = time.time()
            took, r = wait_released(a, uid, "outbound", start, 2)
            assert took >= 1.5, f"released after {took:.1f} s, before the half-close timeout"
            assert r["half_close_timeouts"] == 1, r
            assert c.stdout.readline().strip() in ("eof", "error 104")
        finally:
            c.kill()
            c.wait()


def test_defaults_are_reported_in_status():
    """The bounds in force are visible to an operator (status), with the documented defaults."""
    with agent() as a:
        st = a.call({"type": "status", "version": 1})["status"]["relay_timeouts"]
        assert st == {"connect_ms": 10000, "idle_s": 3600, "half_close_s": 60, "tcp_user_timeout_ms": 60000,
                      "keepalive_idle_s": 60, "keepalive_interval_s": 10, "keepalive_count": 6}, st
