"""Issue 17: the relay keeps a cleanly closed upstream socket as a spare and reuses it
(connect AF_UNSPEC, then connect again) for the pod's next connection from the same source.

What must hold: every exchange is byte-exact and ends with a FIN on both sides (never a reset),
whichever side closes first; inbound keeps the client's address on a reused socket; a reused
socket that meets a refused connect resets its client, it does not hang; nothing is kept after a
reset; spares are closed when unused for 5 s, when the pod goes, and never with --upstream-spares 0.
"""
import time

import pytest

import nstest
from nstest import agent, topology

PORT = 9300
N = 30


@pytest.fixture(autouse=True)
def _root():
    nstest.require_root()


# One connection at a time (the spare of one is there for the next). Per connection the client
# sends a mode line: S, the server sends "<peer ip> <peer port>" and shuts its side first; C, the
# client closes first once it has the reply. The server then reads to the end and prints the
# peer and how the connection ended: fin (EOF) or rst.
SERVER = f"""
import socket
s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0); s.bind(('::', {PORT})); s.listen(64)
print('ready', flush=True)
while True:
    c, addr = s.accept()
    host = addr[0][7:] if addr[0].startswith('::ffff:') else addr[0]
    end = 'fin'
    try:
        mode = c.recv(2)
        c.sendall(f'{{host}} {{addr[1]}}\\n'.encode())
        if mode == b'S\\n':
            c.shutdown(socket.SHUT_WR)
        while c.recv(100):
            pass
    except ConnectionResetError:
        end = 'rst'
    print(host, addr[1], mode.decode().strip(), end, flush=True)
    c.close()
"""

CLIENT = """
import socket, sys
host, port, n, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
for i in range(n):
    m = 'S' if mode == 'S' or (mode == 'mix' and i % 2) else 'C'
    s = socket.create_connection((host, port), timeout=10)
    s.sendall(m.encode() + b'\\n')
    d = b''
    while not d.endswith(b'\\n'):
        b = s.recv(100)
        if not b:
            break
        d += b
    if m == 'S':
        assert s.recv(100) == b'', 'bytes after the reply'
    s.close()
    print(d.decode().strip(), flush=True)
"""


def relay_stats(a):
    st = a.status()["relay"]
    return sum(w["upstreams_reused"] for w in st), sum(w["upstream_spares"] for w in st)


def run_client(ns, host, n, mode):
    return ns.exec([nstest.PY, "-c", CLIENT, host, str(PORT), str(n), mode], timeout=60).stdout.split("\n")[:-1]


def serve(t, ns):
    return t.spawn(ns, SERVER)


def records(server, n):
    return [server.stdout.readline().split() for _ in range(n)]


@pytest.mark.parametrize("v6", [False, True])
def test_outbound_upstreams_are_reused_and_every_close_is_clean(v6):
    with agent() as a, topology() as t:
        server = serve(t, t.remote)
        a.wait_settled()  # the agent's spare BPF loads hold fds while they run
        base_fds = nstest.stable_fd_count(a.pid)
        a.enrol(t.pod, ip=[t.pod_ip, t.pod_ip6])
        dst, src = (t.remote_ip6, t.pod_ip6) if v6 else (t.remote_ip, t.pod_ip)
        for mode in ("S", "C"):
            reused0, _ = relay_stats(a)
            told = run_client(t.pod, dst, N, mode)
            recs = records(server, N)
            assert len(told) == N and all(x.split()[0] == src for x in told), told
            # Each connection ended with the client's FIN at the server.
            assert [r[2:] for r in recs] == [[mode, "fin"]] * N, recs
            reused = relay_stats(a)[0] - reused0
            assert reused >= N // 2, f"mode {mode}: {reused} of {N} upstreams were reused"
        assert relay_stats(a)[1] >= 1
        # The spares are in the pod's netns, marked, in CLOSE: ss lists them with no peer.
        a.ctl("unenroll", "--uid", t.pod.name)
        assert relay_stats(a)[1] == 0, "spares outlived their pod"
        assert f"pid={a.pid}," not in t.pod.exec(["ss", "-Htanp"]).stdout
        a.wait_settled()
        assert nstest.stable_fd_count(a.pid) == base_fds


@pytest.mark.parametrize("v6", [False, True])
def test_inbound_upstreams_are_reused_with_the_client_address_kept(v6):
    with agent() as a, topology() as t:
        server = serve(t, t.pod)
        a.enrol(t.pod, ip=[t.pod_ip, t.pod_ip6])
        dst, client = (t.pod_ip6, t.remote_ip6) if v6 else (t.pod_ip, t.remote_ip)
        reused0, _ = relay_stats(a)
        told = run_client(t.remote, dst, N, "mix")
        recs = records(server, N)
        assert [x.split()[0] for x in told] == [client] * N, told
        assert all(r[0] == client and r[3] == "fin" for r in recs), recs
        assert relay_stats(a)[0] - reused0 >= N // 2
        assert a.inspect(t.pod.name)["capture"]["bpf_stats"]["passed_bypass"] >= N


def test_a_reused_upstream_refused_resets_its_client_and_resets_keep_nothing():
    # One worker: the spares are per worker, and here each connection must find the last one's.
    with agent(["--relay-workers", "1"]) as a, topology() as t:
        server = serve(t, t.remote)
        a.enrol(t.pod, ip=[t.pod_ip, t.pod_ip6])
        run_client(t.pod, t.remote_ip, 5, "S")
        records(server, 5)
        reused0, spares = relay_stats(a)
        assert spares >= 1
        # Nothing listens on PORT+1: the spare's connect is refused, the client is reset at once.
        assert t.client(t.pod, t.remote_ip, PORT + 1, "probe", 5) in ("reset", "refused", "closed")
        assert relay_stats(a)[0] == reused0 + 1, "the refused connection did not take a spare"
        # A connection the server resets (SO_LINGER 0) is not kept: its socket is closed.
        t.spawn(t.remote, "import socket,struct\n"
                      "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
                      f"s.bind(('0.0.0.0',{PORT + 2})); s.listen(8); print('ready',flush=True)\n"
                      "while True:\n"
                      "  c,_=s.accept(); c.recv(10)\n"
                      "  c.setsockopt(socket.SOL_SOCKET,socket.SO_LINGER,struct.pack('ii',1,0)); c.close()\n")
        before = relay_stats(a)[1]
        for _ in range(3):  # each takes a spare while there is one, and gives none back
            assert t.client(t.pod, t.remote_ip, PORT + 2, "probe", 5) in ("reset", "closed")
        assert relay_stats(a)[1] == max(0, before - 3), "a reset upstream was kept as a spare"
        # The next connection still works (on a spare or a new socket).
        assert run_client(t.pod, t.remote_ip, 1, "C")[0].split()[0] == t.pod_ip
        assert records(server, 1)[0][3] == "fin"


def test_spares_are_closed_when_unused_and_never_kept_when_off():
    with agent() as a, topology() as t:
        server = serve(t, t.remote)
        a.enrol(t.pod, ip=[t.pod_ip, t.pod_ip6])
        run_client(t.pod, t.remote_ip, 5, "S")
        records(server, 5)
        assert relay_stats(a)[1] >= 1
        deadline = time.time() + 10
        while relay_stats(a)[1] and time.time() < deadline:
            time.sleep(0.2)
        assert relay_stats(a)[1] == 0, "spares held after 5 s unused"
    with agent(["--upstream-spares", "0"]) as a, topology() as t:
        server = serve(t, t.remote)
        a.enrol(t.pod, ip=[t.pod_ip, t.pod_ip6])
        run_client(t.pod, t.remote_ip, 10, "mix")
        assert [r[3] for r in records(server, 10)] == ["fin"] * 10
        assert relay_stats(a) == (0, 0)
