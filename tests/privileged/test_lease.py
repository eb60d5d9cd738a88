"""Issue 16 part 2: a pod's listeners handed to an unmodified proxy process with
`netsteerctl exec` (systemd socket activation), here Debian's HAProxy 2.6 with `bind fd@3` /
`bind fd@4` and `server o 0.0.0.0:0 namespace *`. While the lease lives the agent does not accept
on them (capture and fail-closed unchanged); when HAProxy dies the agent takes them back.

HAProxy 2.6 needs root to dial from a named netns, so it runs as uid 0 with `--exempt-uid 0` and
the pod's clients run as another uid (65534).
"""
import json
import os
import re
import signal
import subprocess
import time

import pytest

import nstest
from nstest import agent, topology

APP, REMOTE_PORT = 8080, 9000
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture(autouse=True)
def _root():
    nstest.require_root()
    nstest.require_tool("haproxy")


def as_nobody(t, ns, host, port, *args):
    return ns.exec(NOBODY + [nstest.PY, os.path.join(nstest.LIB, "peer_client.py"), host, str(port)] +
                   [str(a) for a in args], timeout=60).stdout.strip()


def haproxy_cfg(tmp, pod_ns):
    cfg = os.path.join(tmp, "haproxy.cfg")
    with open(cfg, "w") as f:
        f.write(nstest.HAPROXY_DEFAULTS + f"""frontend out
  bind fd@3 namespace {pod_ns}
  log-format "lease out client=%[src]:%[src_port] dst=%[dst]:%[dst_port]"
  default_backend orig
frontend in
  bind fd@4 namespace {pod_ns}
  log-format "lease in client=%[src]:%[src_port] dst=%[dst]:%[dst_port]"
  default_backend orig
backend orig
  server o 0.0.0.0:0 namespace *
""")
    return cfg


def lease_of(a, uid):
    return a.inspect(uid)["lease"]


def wait_for(cond, what, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(what)


def log_lines(path, prefix, n, timeout=10):
    got = []
    def enough():
        nonlocal got
        got = [l for l in open(path).read().splitlines() if l.startswith(prefix)]
        return len(got) >= n
    wait_for(enough, f"{path}: fewer than {n} '{prefix}' lines: {open(path).read()}", timeout)
    return got


def test_haproxy_takes_the_listeners_and_gives_them_back(tmp_path):
    with agent() as a, topology() as t:
        t.serve(t.pod, APP)
        t.serve(t.remote, REMOTE_PORT)
        uid = t.pod.name
        a.enrol(t.pod, ip=[t.pod_ip, t.pod_ip6], name="web", namespace="shop")
        log = str(tmp_path / "haproxy.log")
        env_dump = str(tmp_path / "env")
        # The child's environment and fds as systemd-style activation describes them.
        probe = a.ctl("--timeout-ms", "5000", "exec", "--name", "shop/web", "--listeners", "outbound,inbound", "--",
                      "sh", "-c", f"env > {env_dump}; ls -l /proc/self/fd >> {env_dump}")
        env = open(env_dump).read()
        for want in ("LISTEN_FDS=2", "LISTEN_FDNAMES=outbound:inbound", f"NETSTEER_POD_UID={uid}",
                     "NETSTEER_POD_NAMESPACE=shop", "NETSTEER_POD_NAME=web", f"NETSTEER_NETNS={t.pod.path}",
                     "NETSTEER_NETNS_FD=5", "NETSTEER_LEASE_FD=6"):
            assert want in env, env
        assert all(re.search(rf" {fd} -> socket:", env) for fd in (3, 4, 6)) and re.search(rf" 5 -> .*{t.pod.name}", env), env
        wait_for(lambda: lease_of(a, uid) is None, "the lease of the exited shell did not end")
        assert "lease of listeners ended (the holder closed the connection)" in a.logs()

        hp = subprocess.Popen([nstest.NETSTEERCTL, "--socket", a.socket, "exec", "--uid", uid, "--exempt-uid", "0",
                               "--", "haproxy", "-db", "-f", haproxy_cfg(str(tmp_path), t.pod.name)],
                              stdout=open(log, "w"), stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: lease_of(a, uid) is not None, "no lease")
            l = lease_of(a, uid)
            assert l["listeners"] == ["outbound", "inbound"] and l["exempt_uid"] == 0, l
            assert "exempt uid 0 also exempts the pod's own root processes" in a.logs()
            assert "uidrange 0-0 lookup main" in t.pod.ip("rule show").stdout
            time.sleep(0.3)  # HAProxy accepts once its frontends are up
            # Outbound from the pod (not root) to the remote, through HAProxy, which dials the
            # original destination from the pod netns (exempt, so not captured again).
            assert as_nobody(t, t.pod, t.remote_ip, REMOTE_PORT, "peer").split()[0] == t.pod_ip
            # Inbound from the remote to the pod's app, through HAProxy.
            assert t.client(t.remote, t.pod_ip, APP, "peer").split()[0] == t.pod_ip
            out_line = log_lines(log, "lease out", 1)[0]
            in_line = log_lines(log, "lease in", 1)[0]
            # (The listeners are dual-stack: HAProxy prints IPv4 v4-mapped.)
            m4 = "(?:::ffff:)?"
            assert re.fullmatch(rf"lease out client={m4}{re.escape(t.pod_ip)}:\d+ dst={m4}{re.escape(t.remote_ip)}:{REMOTE_PORT}", out_line), out_line
            assert re.fullmatch(rf"lease in client={m4}{re.escape(t.remote_ip)}:\d+ dst={m4}{re.escape(t.pod_ip)}:{APP}", in_line), in_line
            r = a.inspect(uid)["relay"]
            assert r["outbound"]["opened"] == 0 and r["inbound"]["opened"] == 0, r  # the agent stood aside
            # A --takeover upgrade while the lease lives is refused with the reason.
            with pytest.raises(AssertionError) as e:
                a.upgrade(timeout=5)
            assert "leased" in str(e.value)
            a.proc = a.retired.pop()[0]  # the running agent keeps serving
        finally:
            hp.kill()  # a crash: the lease connection closes with it
            hp.wait()
        wait_for(lambda: lease_of(a, uid) is None, "the agent did not take the listeners back")
        assert "uidrange" not in t.pod.ip("rule show").stdout
        # The agent relays again: the app sees the real client, the remote sees the pod.
        assert t.client(t.remote, t.pod_ip, APP, "peer").split()[0] == t.remote_ip
        assert as_nobody(t, t.pod, t.remote_ip, REMOTE_PORT, "peer").split()[0] == t.pod_ip
        r = a.inspect(uid)["relay"]
        assert r["outbound"]["opened"] == 1 and r["inbound"]["opened"] == 1, r


def test_lease_refusals_change_nothing():
    with agent() as a, topology() as t:
        a.enrol(t.pod, ip=[t.pod_ip])
        for args, want in ((["--uid", "nope"], "unknown pod"), (["--name", "no/such"], "unknown pod"),
                           (["--uid", t.pod.name, "--listeners", "bogus"], "not outbound, inbound or tunnel")):
            r = a.ctl("exec", *args, "--", "true", check=False)
            assert r.returncode != 0 and want in r.stderr, r
        holder = subprocess.Popen([nstest.NETSTEERCTL, "--socket", a.socket, "exec", "--uid", t.pod.name, "--",
                                   "sleep", "30"])
        try:
            wait_for(lambda: lease_of(a, t.pod.name) is not None, "no lease")
            r = a.ctl("exec", "--uid", t.pod.name, "--", "true", check=False)
            assert r.returncode != 0 and "already leased" in r.stderr, r
            # A flood of idle control connections (past the 128 the agent keeps) closes the
            # longest-silent ones, never the lease, which is silent by design.
            flood = [a.connect() for _ in range(140)]
            try:
                time.sleep(0.3)
                assert lease_of(a, t.pod.name) is not None
                assert "lease of listeners ended" not in a.logs()
            finally:
                for s in flood:
                    s.close()
        finally:
            holder.kill()
            holder.wait()
        wait_for(lambda: lease_of(a, t.pod.name) is None, "lease not ended")
        # Unenrolling a pod ends its lease (and the holder keeps only dead sockets).
        holder = subprocess.Popen([nstest.NETSTEERCTL, "--socket", a.socket, "exec", "--uid", t.pod.name,
                                   "--exempt-uid", "1234", "--", "sleep", "30"])
        try:
            wait_for(lambda: lease_of(a, t.pod.name) is not None, "no lease")
            assert "uidrange 1234-1234" in t.pod.ip("rule show").stdout
            a.ctl("unenroll", "--uid", t.pod.name)
            assert "uidrange" not in t.pod.ip("rule show").stdout
            assert "unenrolled while its listeners are leased" in a.logs()
        finally:
            holder.kill()
            holder.wait()
        assert a.alive()
