"""Issue 15 (general UDP): opt-in UDP capture per pod, both ways, through the agent's UDP proxy.

Outbound UDP to a listed remote port is steered by sk_lookup (rule `ipproto udp dport P lookup 133`)
to the pod's 15001/udp socket and relayed from the pod netns with the agent's mark; the answer
reaches the app from exactly the address and port it sent to. Inbound UDP to a listed pod port is
steered to 15006/udp and delivered to the app with the real client's address and port; the app's
replies go back to the client from the pod's address and port. ICMP errors from upstream are
reflected to the app. Flows have an idle timeout and a per-pod bound.

Topology: a pod netns and a remote netns (tests/lib/nstest.Topology); peers are
tests/lib/udp_tool.py (echo servers that say whom they saw, and clients that say whom they heard).
"""
import json
import os
import signal
import subprocess
import time
import urllib.request

import pytest

import nstest
from nstest import agent, topology

TOOL = os.path.join(nstest.LIB, "udp_tool.py")
OUT_PORT, OTHER_PORT, IN_PORT, DEAD_PORT = 7001, 7002, 7100, 7003


@pytest.fixture(autouse=True)
def _root():
    nstest.require_root()


def echo(t, ns, port):
    p = ns.popen([nstest.PY, TOOL, "echo", str(port)], stdout=subprocess.PIPE, text=True)
    t.procs.append(p)
    assert p.stdout.readline().strip() == "ready"
    return p


def ask(ns, host, port, n, *extra, timeout=60):
    out = ns.exec([nstest.PY, TOOL, "ask", host, str(port), str(n)] + [str(e) for e in extra], timeout=timeout)
    return json.loads(out.stdout)


def udp(a, uid):
    return a.inspect(uid)["udp"]


def bpf_stats(a, uid):
    return a.inspect(uid)["capture"]["bpf_stats"]


def enrol_pod(t, a, **enrol):
    a.enrol(t.pod, ip=[t.pod_ip, t.pod_ip6], **enrol)
    t.wait_v6_ready()
    return t.pod.name


def addrs(t, v6):
    return (t.pod_ip6, t.remote_ip6) if v6 else (t.pod_ip, t.remote_ip)


@pytest.mark.parametrize("v6", [False, True])
def test_outbound_udp_to_a_listed_port_goes_through_the_agent(v6):
    with agent() as a, topology() as t:
        pod_ip, rem_ip = addrs(t, v6)
        echo(t, t.remote, OUT_PORT)
        echo(t, t.remote, OTHER_PORT)
        uid = enrol_pod(t, a, udp_outbound_port=OUT_PORT)
        r = ask(t.pod, rem_ip, OUT_PORT, 20)
        # Answered in full, from exactly the address and port asked (the socket is connected, so
        # the kernel would drop anything else), relayed: the remote saw the agent's upstream socket
        # (the pod's address, another port), not the app's socket.
        assert r["answers"] == 20, r
        assert r["from"] == [f"{rem_ip} {OUT_PORT}"], r
        assert len(r["seen_as"]) == 1 and r["seen_as"][0].split()[0] == pod_ip, r
        assert int(r["seen_as"][0].split()[1]) != r["local_port"], r
        u = udp(a, uid)
        assert (u["outbound_flows"], u["datagrams_up"], u["datagrams_down"], u["active_flows"]) == (1, 20, 20, 1), u
        assert bpf_stats(a, uid)["udp_outbound_assigned"] >= 1
        # A port that is not listed is not captured: the remote sees the app's own port.
        r = ask(t.pod, rem_ip, OTHER_PORT, 5)
        assert r["answers"] == 5 and r["seen_as"] == [f"{pod_ip} {r['local_port']}"], r
        assert udp(a, uid)["datagrams_up"] == 20
        # Node metrics carry it.
        url = "http://" + a.call({"type": "status", "version": 1})["status"]["metrics"] + "/metrics"
        m = urllib.request.urlopen(url, timeout=5).read().decode()
        assert 'netsteer_udp_flows_total{direction="outbound"} 1' in m, m
        assert 'netsteer_udp_datagrams_total{way="up"} 20' in m
        assert 'netsteer_bpf_sk_lookup_total{outcome="udp_outbound_assigned"}' in m


@pytest.mark.parametrize("v6", [False, True])
def test_inbound_udp_reaches_the_app_with_the_real_client_address(v6):
    with agent() as a, topology() as t:
        pod_ip, rem_ip = addrs(t, v6)
        echo(t, t.pod, IN_PORT)  # the pod's app
        uid = enrol_pod(t, a, udp_inbound_port=IN_PORT)
        for client_port in (5555, 5556):
            r = ask(t.remote, pod_ip, IN_PORT, 10, "--bind", client_port)
            # The app saw the real client (address and port); the client heard the pod's
            # address and port (its socket is connected there).
            assert r["answers"] == 10, r
            assert r["seen_as"] == [f"{rem_ip} {client_port}"], r
            assert r["from"] == [f"{pod_ip} {IN_PORT}"], r
        u = udp(a, uid)
        assert (u["inbound_flows"], u["datagrams_up"], u["datagrams_down"]) == (2, 20, 20), u
        s = bpf_stats(a, uid)
        # Every client datagram went through the program (no connected socket matches it); each
        # delivery to the app passed it on lo.
        assert s["udp_inbound_assigned"] == 20 and s["passed_udp_delivery"] == 20, s
        # A pod port that is not listed is not captured.
        echo(t, t.pod, IN_PORT + 1)
        r = ask(t.remote, pod_ip, IN_PORT + 1, 3, "--bind", 5557)
        assert r["answers"] == 3 and r["seen_as"] == [f"{rem_ip} 5557"], r
        assert bpf_stats(a, uid)["udp_inbound_assigned"] == 20


@pytest.mark.parametrize("v6", [False, True])
def test_icmp_port_unreachable_is_reflected_to_the_app(v6):
    with agent() as a, topology() as t:
        pod_ip, rem_ip = addrs(t, v6)
        uid = enrol_pod(t, a, udp_outbound_port=DEAD_PORT)
        # Nothing listens on DEAD_PORT in the remote: without capture a connected socket gets
        # ECONNREFUSED at once; through the agent it must too (not a timeout).
        r = ask(t.pod, rem_ip, DEAD_PORT, 1, "--wait", 3)
        assert r["error"] == "ConnectionRefusedError" and r["error_after_s"] < 1.0, r
        assert udp(a, uid)["icmp_reflected"] >= 1
        assert udp(a, uid)["errors"] >= 1


def test_flows_end_when_idle_and_the_per_pod_bound_evicts_the_oldest():
    with agent(["--udp-idle-s", "1", "--udp-max-flows", "4"]) as a, topology() as t:
        echo(t, t.remote, OUT_PORT)
        uid = enrol_pod(t, a, udp_outbound_port=OUT_PORT)
        # Six flows (six client sockets) against a bound of 4: every one is answered, the two
        # oldest are evicted and counted, never more than 4 are open.
        for _ in range(6):
            assert ask(t.pod, t.remote_ip, OUT_PORT, 3)["answers"] == 3
        u = udp(a, uid)
        assert (u["outbound_flows"], u["flows_evicted"], u["active_flows"]) == (6, 2, 4), u
        # Idle for longer than --udp-idle-s: all closed (their sockets with them).
        deadline = time.time() + 5
        while udp(a, uid)["active_flows"] and time.time() < deadline:
            time.sleep(0.1)
        assert udp(a, uid)["active_flows"] == 0
        assert "udp" not in t.pod.exec(["ss", "-Hanu", "sport", "=", f":{OUT_PORT}"]).stdout


@pytest.mark.parametrize("v6", [False, True])
def test_fail_closed_without_agent_and_restart_takes_over(v6):
    """No agent: captured UDP is dropped in BPF (counted), never sent around the proxy, both ways.
    A restarted agent serves it again without re-enrolment."""
    with agent() as a, topology() as t:
        pod_ip, rem_ip = addrs(t, v6)
        echo(t, t.remote, OUT_PORT)
        echo(t, t.pod, IN_PORT)
        uid = enrol_pod(t, a, udp_outbound_port=OUT_PORT, udp_inbound_port=IN_PORT)
        assert ask(t.pod, rem_ip, OUT_PORT, 2)["answers"] == 2
        a.kill()
        # Unconnected senders, so that each datagram is sent (a connected one stops at the ICMP
        # port unreachable the kernel answers a dropped datagram with: also fail closed).
        assert ask(t.pod, rem_ip, OUT_PORT, 3, "--wait", 1, "--unconnected")["answers"] == 0
        assert ask(t.remote, pod_ip, IN_PORT, 3, "--wait", 1, "--unconnected")["answers"] == 0
        r = ask(t.pod, rem_ip, OUT_PORT, 1, "--wait", 1)
        assert r["answers"] == 0 and r["error"] in (None, "ConnectionRefusedError"), r
        a.restart()
        assert bpf_stats(a, uid)["drop_no_udp_socket"] >= 6
        r = ask(t.pod, rem_ip, OUT_PORT, 2)
        assert r["answers"] == 2 and r["seen_as"][0].split()[1] != str(r["local_port"]), r
        r = ask(t.remote, pod_ip, IN_PORT, 2, "--bind", 5600)
        assert r["answers"] == 2 and r["seen_as"] == [f"{rem_ip} 5600"], r


@pytest.mark.parametrize("v6", [False, True])
def test_strict_drops_udp_that_bypasses_capture_and_exclusions_pass(v6):
    with agent() as a, topology() as t:
        pod_ip, rem_ip = addrs(t, v6)
        echo(t, t.remote, OUT_PORT)
        echo(t, t.remote, OTHER_PORT)
        uid = enrol_pod(t, a, udp_outbound_port=[OUT_PORT, OTHER_PORT], strict=True,
                        exclude_outbound_port=OTHER_PORT)
        # The excluded port is not captured (the remote sees the app's own port) and strict lets it out.
        r = ask(t.pod, rem_ip, OTHER_PORT, 2)
        assert r["answers"] == 2 and r["seen_as"] == [f"{pod_ip} {r['local_port']}"], r
        assert ask(t.pod, rem_ip, OUT_PORT, 2)["answers"] == 2
        # The pod's own CAP_NET_ADMIN removes the capture rule: its UDP now leaves unmarked and
        # the tc guard drops it.
        t.pod.ip(("-6 " if v6 else "") + f"rule del priority 100 ipproto udp dport {OUT_PORT} lookup 133")
        before = bpf_stats(a, uid)["drop_strict"]
        assert ask(t.pod, rem_ip, OUT_PORT, 3, "--wait", 1)["answers"] == 0
        assert bpf_stats(a, uid)["drop_strict"] >= before + 3


def test_takeover_upgrade_keeps_udp_flows_answered():
    with agent() as a, topology() as t:
        echo(t, t.remote, OUT_PORT)
        echo(t, t.pod, IN_PORT)
        uid = enrol_pod(t, a, udp_outbound_port=OUT_PORT, udp_inbound_port=IN_PORT)
        # One client socket each way, sending before, during and after the upgrade.
        code = f"""
import socket, sys, time
out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); out.connect(("{t.remote_ip}", {OUT_PORT}))
out.settimeout(1)
print("ready", flush=True)
ok = 0
for i in range(60):
    out.send(b"x%d" % i)
    try:
        out.recv(100); ok += 1
    except OSError:
        pass
    time.sleep(0.05)
print(ok, flush=True)
"""
        p = t.spawn(t.pod, code)
        time.sleep(0.5)
        old = a.upgrade()
        assert p.stdout.readline().strip() == "60"
        r = ask(t.remote, t.pod_ip, IN_PORT, 5, "--bind", 5700)
        assert r["answers"] == 5 and r["seen_as"] == [f"{t.remote_ip} 5700"], r
        assert [p["uid"] for p in a.pods()] == [uid]
        assert old.wait(70) == 0


def test_unenrol_removes_udp_capture():
    with agent() as a, topology() as t:
        echo(t, t.remote, OUT_PORT)
        uid = enrol_pod(t, a, udp_outbound_port=OUT_PORT, udp_inbound_port=IN_PORT)
        rules = t.pod.ip("rule show").stdout + t.pod.ip("-6 rule show").stdout
        assert f"dport {OUT_PORT} lookup 133" in rules and f"sport {IN_PORT} lookup 133" in rules, rules
        assert "oif lo lookup 133" in t.pod.ip("-6 rule show").stdout
        assert ask(t.pod, t.remote_ip, OUT_PORT, 2)["answers"] == 2
        a.ctl("unenroll", "--uid", uid)
        rules = t.pod.ip("rule show").stdout + t.pod.ip("-6 rule show").stdout
        assert "133" not in rules, rules
        assert t.pod.exec(["ss", "-Hanu"]).stdout.strip() == ""  # no socket of the agent left
        r = ask(t.pod, t.remote_ip, OUT_PORT, 2)  # direct now
        assert r["answers"] == 2 and r["seen_as"] == [f"{t.pod_ip} {r['local_port']}"], r


def test_bad_udp_ports_are_refused_and_change_nothing():
    with agent() as a, topology() as t:
        for bad in (["--udp-outbound-port", "53"], ["--udp-inbound-port", "15006"], ["--udp-outbound-port", "0"]):
            r = a.ctl("enroll", "--netns", t.pod.path, "--uid", "bad", *bad, check=False)
            assert r.returncode != 0 and "udp" in (r.stderr + r.stdout), r
        assert a.pods() == []
        assert "133" not in t.pod.ip("rule show").stdout


def test_a_datagram_to_the_proxys_own_port_is_dropped_not_forwarded_to_itself():
    """A process in the pod sending straight to 15001/udp, 15006/udp or 15053 (not steered: the
    kernel reports that address as the original destination). Forwarded, the datagram reached the
    same socket again from a new flow, and so on: one datagram kept a core busy and 1,024 flows
    open for as long as the pod lived. It is dropped and counted; captured flows still work."""
    with agent() as a, topology() as t:
        echo(t, t.remote, OUT_PORT)
        uid = enrol_pod(t, a, udp_outbound_port=OUT_PORT, udp_inbound_port=IN_PORT)
        fds = len(os.listdir(f"/proc/{a.pid}/fd"))
        targets = [(h, p) for p in (15001, 15006) for h in ("127.0.0.1", "::1", t.pod_ip, t.pod_ip6)]
        for host, port in targets + [("127.0.0.1", 15053), (t.pod_ip6, 15053)]:
            t.pod.exec([nstest.PY, "-c", "import socket, sys; h, p = sys.argv[1], int(sys.argv[2]); "
                        "socket.socket(socket.AF_INET6 if ':' in h else socket.AF_INET, socket.SOCK_DGRAM)"
                        ".sendto(b'x', (h, p))", host, str(port)])
        deadline = time.time() + 10
        while (udp(a, uid)["errors"], a.inspect(uid)["dns"]["malformed"]) != (len(targets), 2):
            assert time.time() < deadline, (udp(a, uid), a.inspect(uid)["dns"])
            time.sleep(0.05)
        time.sleep(0.3)  # a loop would go on: nothing more may be counted or opened
        u = udp(a, uid)
        assert (u["errors"], u["outbound_flows"], u["inbound_flows"], u["active_flows"]) == (len(targets), 0, 0, 0), u
        assert a.inspect(uid)["dns"]["sessions"] == 0
        assert len(os.listdir(f"/proc/{a.pid}/fd")) == fds
        assert ask(t.pod, t.remote_ip, OUT_PORT, 2)["answers"] == 2  # captured UDP still relayed
        assert udp(a, uid)["outbound_flows"] == 1
