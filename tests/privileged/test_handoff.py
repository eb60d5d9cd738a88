"""Issue 16 part 1: captured connections handed to a real, unmodified proxy with a PROXY v2 header.

The agent (in this machine's netns, the node's) sends a pod's outbound and/or inbound connections
to a proxy address instead of their destination, with a PROXY v2 header first: the client, the
original destination, UNIQUE_ID (the connection id), CRC32C and, behind an option, the pod's
identity. Consumers are Debian's HAProxy 2.6 (`accept-proxy`, forwarding to the original
destination) and nginx 1.22 (`listen … proxy_protocol`), both on 127.0.0.1 in this netns.

Topology: a pod netns and a remote netns (tests/lib/nstest.Topology). HAProxy dials the original
destination from inside the remote netns (`server … namespace`) from a second remote address, which
the pod excludes from inbound capture (a proxy's own connections must not be captured again).
"""
import json
import os
import re
import socket
import subprocess
import time

import pytest

import nstest
from nstest import agent, topology

APP, REMOTE_PORT = 8080, 9000


@pytest.fixture(autouse=True)
def _root():
    nstest.require_root()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listen(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if f":{port} " in nstest.run(["ss", "-Htln"]).stdout:
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


class Haproxy:
    """HAProxy 2.6 on 127.0.0.1:port with accept-proxy; logs one line per connection with the
    addresses and unique id it took from the PROXY header, then forwards to the original
    destination from inside `netns` (from `source`)."""

    def __init__(self, tmp, netns, source):
        self.port = free_port()
        self.log = os.path.join(tmp, "haproxy.log")
        cfg = os.path.join(tmp, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(nstest.HAPROXY_DEFAULTS + f"""frontend pods
  bind 127.0.0.1:{self.port} accept-proxy
  log-format "pp client=%[src]:%[src_port] dst=%[dst]:%[dst_port] id=%[fc_pp_unique_id] bytes=%B"
  default_backend original
backend original
  server o 0.0.0.0:0 namespace {netns} source {"[" + source + "]" if ":" in source else source}
""")
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", cfg], stdout=open(self.log, "w"), stderr=subprocess.STDOUT)
        wait_listen(self.port)

    def lines(self, n, timeout=15):
        deadline = time.time() + timeout
        while time.time() < deadline:
            got = [l for l in open(self.log).read().splitlines() if l.startswith("pp ")]
            if len(got) >= n:
                return got
            time.sleep(0.05)
        raise AssertionError("haproxy logged: " + open(self.log).read())

    def close(self):
        self.proc.kill()
        self.proc.wait()


def nginx(tmp, port):
    """nginx on 127.0.0.1:port with proxy_protocol; answers with the PROXY header's addresses."""
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""master_process off; daemon off; pid {tmp}/nginx.pid; error_log stderr crit;
events {{}}
http {{ access_log off;
  client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp}; uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  server {{ listen 127.0.0.1:{port} proxy_protocol;
    return 200 "$proxy_protocol_addr $proxy_protocol_port $proxy_protocol_server_addr $proxy_protocol_server_port\\n"; }} }}
""")
    p = subprocess.Popen(["nginx", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listen(port)
    return p


def srv_connections(t):
    """The remote's TCP connections in any connected state, one line each (empty: none)."""
    return nstest.run(["ip", "netns", "exec", t.remote.name, "ss", "-Htn", "state", "connected"]).stdout.strip()


def relay(a, uid):
    return a.inspect(uid)["relay"]


@pytest.mark.parametrize("v6", [False, True])
def test_haproxy_gets_client_destination_and_id_both_ways(v6, tmp_path):
    nstest.require_tool("haproxy")
    with agent() as a, topology() as t:
        pod_ip, rem_ip = (t.pod_ip6, t.remote_ip6) if v6 else (t.pod_ip, t.remote_ip)
        proxy_src = f"fd00:{t.s}::3" if v6 else f"10.{t.s}.0.3"
        # A second remote address for HAProxy's own connections; deprecated (v6) so that the
        # remote's clients never pick it as their source.
        t.remote.ip(f"addr add {proxy_src}/{64 if v6 else 24} dev eth0" + (" nodad preferred_lft 0" if v6 else ""))
        t.serve(t.pod, APP)
        t.serve(t.remote, REMOTE_PORT)
        h = Haproxy(str(tmp_path), t.remote.name, proxy_src)
        try:
            uid = t.pod.name
            a.enrol(t.pod, ip=[t.pod_ip, t.pod_ip6], proxy_outbound=f"127.0.0.1:{h.port}",
                    proxy_inbound=f"127.0.0.1:{h.port}", exclude_inbound_source=f"{proxy_src}")
            t.wait_v6_ready()
            # Outbound: the remote sees HAProxy (from proxy_src); HAProxy saw the pod's client and
            # the original destination in the header.
            assert t.client(t.pod, rem_ip, REMOTE_PORT, "peer").split()[0] == proxy_src
            # Inbound: the pod's app sees HAProxy; HAProxy saw the remote client.
            assert t.client(t.remote, pod_ip, APP, "peer").split()[0] == proxy_src
            out_line, in_line = h.lines(2)
            m = re.fullmatch(rf"pp client={re.escape(pod_ip)}:(\d+) dst={re.escape(rem_ip)}:{REMOTE_PORT} id=([0-9a-f]{{16}}) bytes=\d+", out_line)
            assert m, out_line
            m2 = re.fullmatch(rf"pp client={re.escape(rem_ip)}:(\d+) dst={re.escape(pod_ip)}:{APP} id=([0-9a-f]{{16}}) bytes=\d+", in_line)
            assert m2, in_line
            assert m.group(2) != m2.group(2)  # one id per connection
            r = relay(a, uid)
            assert (r["outbound"]["proxied"], r["inbound"]["proxied"]) == (1, 1), r
            assert r["outbound"]["proxy_failed"] == 0 and r["inbound"]["failed"] == 0
            # Bulk both ways through the proxy, byte-exact.
            assert t.client(t.remote, pod_ip, APP, "bytes", 1 << 20) == f"ok {1 << 20}"
        finally:
            h.close()


@pytest.mark.parametrize("v6", [False, True])
def test_nginx_proxy_protocol_variables_match_the_connection(v6, tmp_path):
    nstest.require_tool("nginx")
    port = free_port()
    with agent() as a, topology() as t:
        n = nginx(str(tmp_path), port)
        try:
            pod_ip, rem_ip = (t.pod_ip6, t.remote_ip6) if v6 else (t.pod_ip, t.remote_ip)
            a.enrol(t.pod, ip=[t.pod_ip, t.pod_ip6], proxy_outbound=f"127.0.0.1:{port}")
            t.wait_v6_ready()
            host = f"[{rem_ip}]" if v6 else rem_ip
            out = t.pod.exec(["curl", "-sS", "--max-time", "5", "--local-port", "41234", f"http://{host}:{REMOTE_PORT}/"]).stdout
            assert out.split() == [pod_ip, "41234", rem_ip, str(REMOTE_PORT)], out
        finally:
            n.kill()
            n.wait()


def test_pod_identity_tlvs_and_header_size(tmp_path):
    """With --proxy-pod-tlvs the header carries namespace/name (0xE0) and uid (0xE1); without, a
    TCP6 header stays within nginx's 107 bytes. Read raw by a listener that records the header."""
    port = free_port()
    code = f"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", {port})); s.listen(4)
print("ready", flush=True)
while True:
    c, _ = s.accept(); c.settimeout(5)
    b = b""
    while len(b) < 16 or len(b) < 16 + int.from_bytes(b[14:16], "big"):
        d = c.recv(4096)
        if not d: break
        b += d
    print(b[:16 + int.from_bytes(b[14:16], "big")].hex(), flush=True); c.close()
"""
    def tlvs(h):
        out, i = {}, 16 + (36 if h[13] == 0x21 else 12)
        while i < len(h):
            n = int.from_bytes(h[i + 1:i + 3], "big")
            out[h[i]] = h[i + 3:i + 3 + n]
            i += 3 + n
        return out
    with agent() as a, topology() as t:
        rec = subprocess.Popen([nstest.PY, "-c", code], stdout=subprocess.PIPE, text=True)
        try:
            assert rec.stdout.readline().strip() == "ready"
            a.enrol(t.pod, ip=[t.pod_ip, t.pod_ip6], proxy_outbound=f"127.0.0.1:{port}", name="web", namespace="shop")
            t.wait_v6_ready()
            nstest.tcp_connect(t.pod, t.remote_ip6, REMOTE_PORT, timeout=2)
            h = bytes.fromhex(rec.stdout.readline().strip())
            assert h[12:14] == b"\x21\x21" and len(h) <= 107, h.hex()  # TCP6
            assert set(tlvs(h)) == {0x03, 0x05}, tlvs(h)
            a.ctl("unenroll", "--uid", t.pod.name)
            a.enrol(t.pod, ip=[t.pod_ip, t.pod_ip6], proxy_outbound=f"127.0.0.1:{port}", proxy_pod_tlvs=True,
                    name="web", namespace="shop")
            nstest.tcp_connect(t.pod, t.remote_ip, REMOTE_PORT, timeout=2)
            h = bytes.fromhex(rec.stdout.readline().strip())
            tl = tlvs(h)
            assert h[12:14] == b"\x21\x11" and tl[0xE0] == b"shop/web" and tl[0xE1] == t.pod.name.encode(), tl
            assert len(tl[0x05]) == 16
        finally:
            rec.kill()
            rec.wait()


def test_proxy_down_resets_the_client_counts_and_never_dials_direct():
    port = free_port()  # nothing listens there
    with agent() as a, topology() as t:
        srv = t.serve(t.remote, REMOTE_PORT)
        a.enrol(t.pod, ip=[t.pod_ip, t.pod_ip6], proxy_outbound=f"127.0.0.1:{port}")
        out = t.client(t.pod, t.remote_ip, REMOTE_PORT, "probe", check=False)
        assert out in ("reset", "refused"), out
        rl = relay(a, t.pod.name)["outbound"]
        assert rl["proxy_failed"] >= 1 and rl["proxied"] >= 1, rl
        # Every connection went the proxy's way and failed there: none was dialled direct.
        assert rl["proxied"] == rl["opened"] and rl["failed"] == rl["proxy_failed"], rl
        assert f"proxy 127.0.0.1:{port} unreachable" in a.logs()
        # The remote server never saw a connection (no silent direct dial).
        assert srv_connections(t) == "", "the remote got a connection"
        assert srv.poll() is None


def test_bad_proxy_addresses_are_refused():
    with agent() as a, topology() as t:
        for bad in ("127.0.0.1", "nope:80", "[::1]"):
            r = a.ctl("enroll", "--netns", t.pod.path, "--uid", "x", "--proxy-outbound", bad, check=False)
            assert r.returncode != 0 and "--proxy-outbound" in r.stderr, r
        r = a.call({"type": "add", "version": 1, "pod": {"uid": "x", "proxy": {"inbound": "10.0.0.1"}}})
        assert r["ok"] is False and "proxy.inbound" in r["error"], r
        assert a.pods() == []
