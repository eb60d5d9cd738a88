"""Issue 2/6: capture with sk_lookup + policy routing + tc, relay with original destination kept.

Topology per test: a pod netns and a remote netns joined by a veth (see nstest.Topology).
"""
import hashlib
import os
import re
import signal
import subprocess
import tempfile
import time

import pytest

import nstest
from nstest import agent, topology, run

APP = 8080


@pytest.fixture(autouse=True)
def _root():
    nstest.require_root()


def bpf(a, uid):
    return a.inspect(uid)["capture"]["bpf_stats"]


def relay(a, uid, direction):
    return a.inspect(uid)["relay"][direction]


def enrol(a, t, **kw):
    a.enrol(t.pod, ip=[t.pod_ip, t.pod_ip6], **kw)
    return t.pod.name


@pytest.mark.parametrize("v6", [False, True])
def test_outbound_steered_through_15001(v6):
    with agent() as a, topology() as t:
        t.serve(t.remote, APP)
        uid = enrol(a, t)
        dst = t.remote_ip6 if v6 else t.remote_ip
        before = bpf(a, uid)["outbound_assigned"]
        # While a connection is held open, ss in the pod shows netsteerd's marked upstream to the remote.
        holder = t.pod.popen([nstest.PY, "-c",
                              "import socket,sys,time\n"
                              f"s=socket.create_connection(('{dst}',{APP}))\n"
                              "print('up',flush=True); time.sleep(5)"],
                             stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "up"
            deadline = time.time() + 3
            ss = ""
            while time.time() < deadline:
                ss = t.pod.exec(["ss", "-Htnpe", "state", "established"]).stdout
                if re.search(rf"{re.escape(dst)}\]?:{APP}\s.*netsteerd.*fwmark:0x539", ss):
                    break
                time.sleep(0.1)
            assert re.search(rf"{re.escape(dst)}\]?:{APP}\s.*netsteerd.*fwmark:0x539", ss), ss
        finally:
            holder.kill()
            holder.wait()
        assert t.client(t.pod, dst, APP, "bytes", 1 << 20) == f"ok {1 << 20}"
        assert bpf(a, uid)["outbound_assigned"] >= before + 2
        assert relay(a, uid, "outbound")["opened"] >= 2
        # Loopback inside the pod is never captured.
        t.serve(t.pod, 9100)
        out_before = bpf(a, uid)["outbound_assigned"]
        in_before = bpf(a, uid)["inbound_assigned"]
        assert t.client(t.pod, "127.0.0.1", 9100, "peer").startswith("127.0.0.1")
        assert t.client(t.pod, t.pod_ip, 9100, "peer").startswith(t.pod_ip)
        assert bpf(a, uid)["outbound_assigned"] == out_before
        assert bpf(a, uid)["inbound_assigned"] == in_before


@pytest.mark.parametrize("v6", [False, True])
def test_inbound_steered_and_client_address_kept(v6):
    with agent() as a, topology() as t:
        t.serve(t.pod, APP)
        uid = enrol(a, t)
        pod, remote = (t.pod_ip6, t.remote_ip6) if v6 else (t.pod_ip, t.remote_ip)
        seen = t.client(t.remote, pod, APP, "peer").split()[0]
        assert seen == remote, f"app saw {seen}, not the real client {remote}"
        st = bpf(a, uid)
        assert st["inbound_assigned"] >= 1 and st["passed_bypass"] >= 1
        assert relay(a, uid, "inbound")["opened"] >= 1
        assert t.client(t.remote, pod, APP, "echo", 300000) == "ok 300000"  # half-close


def test_real_tools_curl_and_http_server():
    with agent() as a, topology() as t:
        d = tempfile.mkdtemp()
        with open(os.path.join(d, "blob"), "wb") as f:
            f.write(os.urandom(1 << 20))
        want = hashlib.sha256(open(os.path.join(d, "blob"), "rb").read()).hexdigest()
        t.http_server(t.remote, 8000, d)
        t.http_server(t.pod, 8001, d)
        uid = enrol(a, t)
        for ns, url in ((t.pod, f"http://{t.remote_ip}:8000/blob"), (t.pod, f"http://[{t.remote_ip6}]:8000/blob"),
                        (t.remote, f"http://{t.pod_ip}:8001/blob"), (t.remote, f"http://[{t.pod_ip6}]:8001/blob")):
            out = ns.exec(f"curl -sS --max-time 20 {url} | sha256sum").stdout.split()[0]
            assert out == want, url
        st = bpf(a, uid)
        assert st["outbound_assigned"] >= 2 and st["inbound_assigned"] >= 2


def test_no_iptables_or_nft_rules_in_pod():
    with agent() as a, topology() as t:
        enrol(a, t)
        ipt = t.pod.exec("iptables-save; ip6tables-save", check=False).stdout
        assert not [l for l in ipt.splitlines() if l.startswith("-A")], ipt
        nft = t.pod.exec(["nft", "list", "ruleset"]).stdout.strip()
        assert nft == "", nft


def test_exclusions_bypass_capture():
    with agent() as a, topology() as t:
        for port in (APP, 8081):
            t.serve(t.pod, port)
        for port in (9000, 9001):
            t.serve(t.remote, port)
        uid = enrol(a, t, exclude_inbound_port=[8081], exclude_outbound_port=[9001],
                    exclude_outbound_cidr=[f"{t.remote_ip}/32"])
        p = [x for x in a.pods() if x["uid"] == uid][0]
        assert p["exclusions"]["inbound_ports"] == [8081]
        assert p["exclusions"]["outbound_ports"] == [9001]
        assert p["exclusions"]["outbound_cidrs"] == [f"{t.remote_ip}/32"]
        s0 = bpf(a, uid)
        # excluded inbound port: not captured
        assert t.client(t.remote, t.pod_ip, 8081, "peer").startswith(t.remote_ip)
        # excluded outbound cidr (v4 remote) and port (9001 on v6)
        assert t.client(t.pod, t.remote_ip, 9000, "peer").startswith(t.pod_ip)
        assert t.client(t.pod, t.remote_ip6, 9001, "peer").startswith(t.pod_ip6)
        s1 = bpf(a, uid)
        assert s1["inbound_assigned"] == s0["inbound_assigned"]
        assert s1["outbound_assigned"] == s0["outbound_assigned"]
        # not excluded: captured
        t.client(t.pod, t.remote_ip6, 9000, "peer")
        assert bpf(a, uid)["outbound_assigned"] == s1["outbound_assigned"] + 1


def test_inbound_source_exclusion_for_probes():
    with agent() as a, topology() as t:
        t.serve(t.pod, APP)
        uid = enrol(a, t, exclude_inbound_source=[f"{t.remote_ip}/32"])
        s0 = bpf(a, uid)["inbound_assigned"]
        assert t.client(t.remote, t.pod_ip, APP, "peer").startswith(t.remote_ip)
        assert bpf(a, uid)["inbound_assigned"] == s0  # the probe source bypassed capture
        t.client(t.remote, t.pod_ip6, APP, "peer")
        assert bpf(a, uid)["inbound_assigned"] == s0 + 1  # other sources are captured


def test_strict_mode_drops_a_bypass():
    with agent() as a, topology() as t:
        t.serve(t.remote, 9000)
        uid = enrol(a, t, strict=True)
        assert t.client(t.pod, t.remote_ip, 9000, "peer").startswith(t.pod_ip)  # via relay, fine
        # Someone deletes the capture rules in the pod: strict mode still stops unmarked app TCP.
        t.pod.ip("rule del priority 100")
        t.pod.ip("-6 rule del priority 100")
        assert t.client(t.pod, t.remote_ip, 9000, "probe", "1") == "timeout"
        assert bpf(a, uid)["drop_strict"] >= 1


def test_fail_closed_after_sigkill_and_restart_takes_over():
    with agent() as a, topology() as t:
        t.serve(t.pod, APP)
        uid = enrol(a, t)
        assert t.client(t.remote, t.pod_ip, APP, "peer").startswith(t.remote_ip)
        a.kill()
        # Listener gone, link and pins stay: the SYN is dropped in BPF, never delivered to the app.
        assert t.client(t.remote, t.pod_ip, APP, "probe", "1") == "timeout"
        stats = nstest.bpftool_json("map", "dump", "pinned", f"{a.pin_root}/{uid}/map_ns_stats")
        assert stats, "stats map not pinned after crash"
        a.restart()
        assert [p["uid"] for p in a.pods()] == [uid]
        assert t.client(t.remote, t.pod_ip, APP, "peer").startswith(t.remote_ip)
        assert bpf(a, uid)["drop_no_listener"] >= 1


def test_two_pods_never_get_each_others_connections():
    with agent() as a, topology() as t1, topology() as t2:
        t1.serve(t1.pod, APP)
        t2.serve(t2.pod, APP)
        u1, u2 = enrol(a, t1), enrol(a, t2)
        for _ in range(3):
            assert t1.client(t1.remote, t1.pod_ip, APP, "peer").startswith(t1.remote_ip)
        r1, r2 = relay(a, u1, "inbound"), relay(a, u2, "inbound")
        assert r1["opened"] == 3 and r2["opened"] == 0
        assert bpf(a, u2)["inbound_assigned"] == 0


def _rules(ns, v6=False):
    return ns.exec(["ip"] + (["-6"] if v6 else []) + ["rule", "show"]).stdout


def test_unenrol_leaves_nothing_behind():
    with agent() as a, topology() as t:
        base4, base6 = _rules(t.pod), _rules(t.pod, True)
        uid = enrol(a, t, exclude_inbound_port=[8081], exclude_outbound_cidr=["192.0.2.0/24"])
        info = a.inspect(uid)["capture"]
        link_ids = [info["bpf"]["steer_link_id"]]
        assert "lookup 133" in _rules(t.pod)
        a.ctl("unenroll", "--uid", uid)
        assert _rules(t.pod) == base4 and _rules(t.pod, True) == base6
        assert t.pod.exec("ip route show table 133; ip -6 route show table 133").stdout.strip() == ""
        assert not os.path.exists(f"{a.pin_root}/{uid}")
        links = [l["id"] for l in nstest.bpftool_json("link", "show")]
        assert not set(link_ids) & set(links)
        tc = t.pod.exec("tc filter show dev eth0 ingress; tc filter show dev eth0 egress").stdout
        assert "netsteer" not in tc


@pytest.mark.parametrize("size", [1 << 20, 100 << 20])
def test_transfers_byte_exact(size):
    with agent() as a, topology() as t:
        t.serve(t.remote, 9000)
        t.serve(t.pod, APP)
        enrol(a, t)
        assert t.client(t.pod, t.remote_ip, 9000, "bytes", size) == f"ok {size}"
        assert t.client(t.remote, t.pod_ip6, APP, "bytes", size) == f"ok {size}"


def test_200_concurrent_connections():
    with agent() as a, topology() as t:
        t.serve(t.remote, 9000)
        t.serve(t.pod, APP)
        uid = enrol(a, t)
        assert t.client(t.pod, t.remote_ip, 9000, "concurrent", 200, 65536) == "ok 200"
        assert t.client(t.remote, t.pod_ip, APP, "concurrent", 200, 65536) == "ok 200"
        r = a.inspect(uid)["relay"]
        assert r["outbound"]["opened"] >= 200 and r["inbound"]["opened"] >= 200
        assert r["outbound"]["failed"] == 0 and r["inbound"]["failed"] == 0


def test_connect_error_is_a_reset_not_a_hang():
    with agent() as a, topology() as t:
        enrol(a, t)
        # nothing listens on the remote's 9999: the pod's client must fail fast
        start = time.time()
        r = t.client(t.pod, t.remote_ip, 9999, "probe", "5")
        assert r in ("refused", "reset", "closed"), r
        assert time.time() - start < 4


def test_tunnel_connect_with_curl():
    with agent() as a, topology() as t:
        d = tempfile.mkdtemp()
        with open(os.path.join(d, "hello"), "w") as f:
            f.write("hello through 15008\n")
        t.http_server(t.pod, 8001, d)
        enrol(a, t)
        out = t.remote.exec(f"curl -sS --max-time 10 -p -x http://{t.pod_ip}:15008 http://{t.pod_ip}:8001/hello").stdout
        assert out == "hello through 15008\n"
        # a target outside the pod is refused
        r = t.remote.exec(f"curl -sS --max-time 10 -p -x http://{t.pod_ip}:15008 http://{t.remote_ip}:8001/",
                          check=False)
        assert r.returncode != 0 and "403" in (r.stderr + r.stdout)
