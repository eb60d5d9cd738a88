"""Issue 15 (DNS part): the pod's DNS over UDP is steered by sk_lookup to the agent's 15053 socket
(rule `ipproto udp dport 53 lookup 133`, no iptables, no NAT, no conntrack entry), forwarded to the
server asked (or a configured upstream) from the pod netns with the agent's mark, and answered from
exactly the address and port the app asked.

Topology: a pod netns and a remote netns (tests/lib/nstest.Topology); the DNS server is
tests/lib/dns_server.py or a real dnsmasq in the remote.
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

CLIENT = os.path.join(nstest.LIB, "dns_client.py")


@pytest.fixture(autouse=True)
def _root():
    nstest.require_root()


def dns_server(t, port=53, log=True):
    """dns_server.py on [::]:port in the remote; returns the Popen. With log, its stdout has a
    line per query (read them: an unread pipe fills and stalls the server); without, it only
    says when it is ready."""
    p = t.remote.popen([nstest.PY, os.path.join(nstest.LIB, "dns_server.py"), "::", str(port)] +
                       ([] if log else ["quiet"]), stdout=subprocess.PIPE, text=True)
    t.procs.append(p)
    assert p.stdout.readline().strip() == "ready"
    return p


def ask(t, server, *args, port=53, check=True):
    return t.pod.exec([nstest.PY, CLIENT, server, str(port)] + [str(a) for a in args], check=check,
                      timeout=60).stdout.strip()


def dns(a, uid):
    return a.inspect(uid)["dns"]


def enrol_pod(t, a, **enrol):
    """Enrol the pod and make IPv6 usable (DAD over, neighbours known): a burst sent while the
    neighbour is unresolved overflows the kernel's unresolved queue, captured or not."""
    a.enrol(t.pod, ip=[t.pod_ip, t.pod_ip6], **enrol)
    t.wait_v6_ready()
    return t.pod.name


@pytest.mark.parametrize("v6", [False, True])
def test_dns_captured_and_answered_from_the_server_asked(v6):
    with agent() as a, topology() as t:
        srv = dns_server(t)
        uid = enrol_pod(t, a)
        server = t.remote_ip6 if v6 else t.remote_ip
        # The client connect()s its UDP socket: an answer from any other address or port is dropped.
        assert ask(t, server, "query", "a.test") == "NOERROR 10.53.0.1 udp"
        assert ask(t, server, "query", "a.test", "AAAA") == "NOERROR fd00:53::1 udp"
        assert ask(t, server, "query", "nx.test") == "NXDOMAIN - udp"
        b = a.inspect(uid)["capture"]["bpf_stats"]
        assert b["dns_assigned"] >= 1
        d = dns(a, uid)
        assert d["queries"] == 3 and d["answers"] == 3, d
        assert d["rcodes"]["NOERROR"] == 2 and d["rcodes"]["NXDOMAIN"] == 1, d
        assert d["upstream_latency"]["count"] == 3
        # The server saw the query from the pod's own address (the agent's socket in the pod netns).
        line = srv.stdout.readline().split()
        assert line[:2] == ["udp", t.pod_ip6 if v6 else t.pod_ip], line
        # Steered without a netfilter rule in the pod.
        assert t.pod.exec("iptables-save; ip6tables-save").stdout.count("-A ") == 0
        assert t.pod.exec(["nft", "list", "ruleset"]).stdout.strip() == ""
        rules = t.pod.exec(["ip", "-6" if v6 else "-4", "rule"]).stdout
        assert "ipproto udp dport 53 lookup 133" in rules, rules


@pytest.mark.parametrize("v6", [False, True])
def test_no_conntrack_entry_for_captured_dns(v6):
    """The captured flow leaves nothing in the pod's conntrack table. The positive control shows
    the check can fail: with a (test-only) nft rule that makes conntrack track the pod's traffic,
    the same query does leave an entry."""
    nstest.require_tool("conntrack")
    with agent() as a, topology() as t:
        dns_server(t)
        t.wait_v6_ready()
        enrol_pod(t, a)
        server = t.remote_ip6 if v6 else t.remote_ip
        listing = ["conntrack", "-L", "-f", "ipv6" if v6 else "ipv4", "-p", "udp", "--dport", "53"]
        assert ask(t, server, "query", "a.test") == "NOERROR 10.53.0.1 udp"
        listed = t.pod.exec(listing, check=False)
        assert "dport=53" not in listed.stdout, listed.stdout
        t.pod.exec(["nft", "add table inet ctcheck; add chain inet ctcheck out "
                    "{ type filter hook output priority 0; }; add rule inet ctcheck out ct state new counter"])
        try:
            assert ask(t, server, "query", "b.test") == "NOERROR 10.53.0.1 udp"
            listed = t.pod.exec(listing, check=False)
            assert "dport=53" in listed.stdout, "positive control: conntrack did not see the flow"
        finally:
            t.pod.exec(["nft", "delete table inet ctcheck"], check=False)


@pytest.mark.parametrize("v6", [False, True])
def test_1000_parallel_queries_from_one_socket(v6):
    """A resolver's parallel queries from one source port (glibc's A + AAAA, at scale): all sent
    before any answer is read; every one answered, none lost. Direct first, as the baseline."""
    with agent() as a, topology() as t:
        dns_server(t, log=False)
        t.wait_v6_ready()
        server = t.remote_ip6 if v6 else t.remote_ip
        ask(t, server, "query", "warm.test")
        assert ask(t, server, "burst", 1000) == "answered 1000 of 1000", "direct (no capture)"
        uid = enrol_pod(t, a)
        assert ask(t, server, "burst", 1000) == "answered 1000 of 1000"
        d = dns(a, uid)
        assert d["queries"] == 1000 and d["answers"] == 1000 and d["upstream_timeouts"] == 0, d


@pytest.mark.parametrize("v6", [False, True])
def test_truncated_answer_retried_over_tcp_through_capture(v6):
    with agent() as a, topology() as t:
        srv = dns_server(t)
        uid = enrol_pod(t, a)
        server = t.remote_ip6 if v6 else t.remote_ip
        assert ask(t, server, "query", "big.test") == "NOERROR 10.53.1.1 tcp"
        assert dns(a, uid)["answers"] == 1
        st = a.inspect(uid)
        # The TCP retry was steered to the 15053 TCP listener (dns_assigned: UDP then TCP), not to
        # 15001, and relayed.
        assert st["capture"]["bpf_stats"]["dns_assigned"] == 2 and st["capture"]["bpf_stats"]["outbound_assigned"] == 0
        assert st["relay"]["outbound"]["opened"] == 1
        assert [l["port"] for l in st["listeners"] if l["role"] == "dns_tcp"] == [15053]
        log = [srv.stdout.readline().split()[0] for _ in range(2)]
        assert log == ["udp", "tcp"], log


def test_getent_through_capture_with_dnsmasq(tmp_path):
    """glibc (getent) against a real dnsmasq in the remote, through capture, v4 and v6 servers."""
    nstest.require_tool("dnsmasq")
    with agent() as a, topology() as t:
        pidfile = tmp_path / "dnsmasq.pid"
        t.remote.exec(["dnsmasq", "--no-resolv", "--no-hosts", "--bind-interfaces", f"--listen-address={t.remote_ip}",
                       f"--listen-address={t.remote_ip6}", "--address=/svc.test/10.53.0.7",
                       "--address=/svc.test/fd00:53::7", f"--pid-file={pidfile}", "--user=root"])
        try:
            uid = enrol_pod(t, a)
            etc = f"/etc/netns/{t.pod.name}"
            os.makedirs(etc)
            try:
                for server in (t.remote_ip, t.remote_ip6):
                    with open(f"{etc}/resolv.conf", "w") as f:
                        f.write(f"nameserver {server}\noptions timeout:2 attempts:1\n")
                    out = nstest.run(["ip", "netns", "exec", t.pod.name, "getent", "ahosts", "svc.test"]).stdout
                    assert "10.53.0.7" in out and "fd00:53::7" in out, out
            finally:
                nstest.run(["rm", "-rf", etc])
            d = dns(a, uid)
            assert d["answers"] >= 4 and d["upstream_timeouts"] == 0, d
        finally:
            os.kill(int(pidfile.read_text()), signal.SIGTERM)


def test_dns_upstream_agent_wide_and_per_pod():
    """--dns-upstream sends queries to a node-local resolver instead of the server asked, and the
    app still sees the answer come from the address it asked (here an address where no server
    exists). A pod's own upstream wins over the agent's."""
    with topology() as t:
        agent_wide = dns_server(t, 5353)
        with agent(["--dns-upstream", f"{t.remote_ip}:5353"]) as a:
            uid = enrol_pod(t, a)
            nowhere = f"10.{t.s}.0.99"
            assert ask(t, nowhere, "query", "a.test") == "NOERROR 10.53.0.1 udp"
            assert agent_wide.stdout.readline().split()[:2] == ["udp", t.pod_ip]
            assert dns(a, uid)["upstream"] == ""  # the agent-wide one applies
            # TCP DNS (the retry of a truncated answer) goes to the same upstream.
            assert ask(t, nowhere, "query", "big.test") == "NOERROR 10.53.1.1 tcp"
            assert [agent_wide.stdout.readline().split()[0] for _ in range(2)] == ["udp", "tcp"]
            a.ctl("unenroll", "--uid", uid)
            per_pod = dns_server(t, 5354)
            enrol_pod(t, a, dns_upstream=f"[{t.remote_ip6}]:5354")
            assert ask(t, nowhere, "query", "a.test") == "NOERROR 10.53.0.1 udp"
            assert per_pod.stdout.readline().split()[:2] == ["udp", t.pod_ip6]
            assert ask(t, nowhere, "query", "big.test") == "NOERROR 10.53.1.1 tcp"
            assert [per_pod.stdout.readline().split()[0] for _ in range(2)] == ["udp", "tcp"]
            assert dns(a, uid)["upstream"] == f"[{t.remote_ip6}]:5354"


def test_opt_out_and_excluded_port_leave_dns_alone():
    with agent() as a, topology() as t:
        srv = dns_server(t)
        uid = enrol_pod(t, a, no_dns=True)
        assert ask(t, t.remote_ip, "query", "a.test") == "NOERROR 10.53.0.1 udp"
        assert "udp" not in t.pod.exec(["ip", "rule"]).stdout
        assert 15053 not in [int(l.split()[3].rsplit(":", 1)[1]) for l in
                             t.pod.exec(["ss", "-Hunl"]).stdout.splitlines()]
        assert a.inspect(uid)["dns"] is None
        a.ctl("unenroll", "--uid", uid)
        uid = enrol_pod(t, a, exclude_outbound_port=53)
        assert ask(t, t.remote_ip, "query", "a.test") == "NOERROR 10.53.0.1 udp"
        assert dns(a, uid)["queries"] == 0
        srv.stdout.readline()


def test_metrics_debug_lines_and_unenrol():
    with agent() as a, topology() as t:
        dns_server(t)
        uid = enrol_pod(t, a)
        ask(t, t.remote_ip, "query", "nx.test")
        url = "http://" + a.call({"type": "status", "version": 1})["status"]["metrics"] + "/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
        assert 'netsteer_dns_answers_total{rcode="NXDOMAIN"} 1' in text
        assert "netsteer_dns_queries_total 1" in text
        assert 'netsteer_dns_upstream_latency_seconds_bucket{le="+Inf"} 1' in text
        assert 'netsteer_bpf_sk_lookup_total{outcome="dns_assigned"}' in text
        logs = a.logs()
        assert "dns query id 4660" in logs and "dns answer id 4660 NXDOMAIN" in logs  # debug level
        # The proxy thread made the flow's sockets in the pod netns and stays there (no setns per
        # flow) until the pod goes: a thread inside a netns keeps it alive.
        assert nstest.threads_in(a.pid, t.pod) >= 1
        a.ctl("unenroll", "--uid", uid)
        assert nstest.threads_in(a.pid, t.pod) == 0, "an agent thread still holds the unenrolled pod's netns"
        assert "udp" not in t.pod.exec(["ip", "rule"]).stdout
        assert not t.pod.exec(["ss", "-Hunl"]).stdout.strip()


def test_fail_closed_without_agent_and_restart_takes_over():
    """No agent: the pod's DNS is dropped in BPF (counted), never sent around the proxy. A
    restarted agent serves it again without re-enrolment."""
    with agent() as a, topology() as t:
        srv = dns_server(t)
        uid = enrol_pod(t, a)
        assert ask(t, t.remote_ip, "query", "a.test") == "NOERROR 10.53.0.1 udp"
        srv.stdout.readline()
        a.kill()
        out = t.pod.exec([nstest.PY, CLIENT, t.remote_ip, "53", "query", "a.test"], check=False)
        assert out.returncode != 0 and "TimeoutError" in out.stderr, out  # dropped, not answered around
        a.restart()
        assert a.inspect(uid)["capture"]["bpf_stats"]["drop_no_dns_socket"] >= 1
        assert ask(t, t.remote_ip, "query", "a.test") == "NOERROR 10.53.0.1 udp"
        assert srv.stdout.readline().split()[:2] == ["udp", t.pod_ip]  # only the answered ones reached it


def test_takeover_upgrade_answers_dns_in_flight():
    """--takeover while a query is in flight (the server answers it a second later): the old
    agent's session answers it; queries after the upgrade are served by the new agent."""
    with agent() as a, topology() as t:
        dns_server(t)
        uid = enrol_pod(t, a)
        slow = t.pod.popen([nstest.PY, CLIENT, t.remote_ip, "53", "query", "slow.test"], stdout=subprocess.PIPE,
                           text=True)
        deadline = time.time() + 5
        while dns(a, uid)["queries"] < 1 and time.time() < deadline:
            time.sleep(0.02)
        old = a.upgrade()
        assert slow.wait(10) == 0 and slow.stdout.read().strip() == "NOERROR 10.53.0.1 udp"
        assert ask(t, t.remote_ip6, "query", "a.test") == "NOERROR 10.53.0.1 udp"
        assert dns(a, uid)["answers"] == 1  # the new agent's counters: the query after the upgrade
        assert old.wait(15) == 0


def test_restart_over_pins_of_an_agent_without_dns():
    """An agent from before DNS capture left pins whose socket map has no DNS slot. The restarted
    agent must not adopt them (its rule would route DNS to a program that does not assign it):
    it replaces them and the pod's DNS works."""
    with agent() as a, topology() as t:
        dns_server(t, log=False)
        uid = enrol_pod(t, a)
        a.kill()
        sockets = os.path.join(a.pin_root, uid, "map_ns_sockets")
        os.unlink(sockets)
        nstest.run(["bpftool", "map", "create", sockets, "type", "sockmap", "key", "4", "value", "8", "entries", "2",
                    "name", "ns_sockets"])
        a.restart()
        assert "pins of an older agent (socket map of 2 slots, 6 needed): replaced" in a.logs()
        assert [p["uid"] for p in a.pods()] == [uid]
        assert ask(t, t.remote_ip, "query", "a.test") == "NOERROR 10.53.0.1 udp"
        assert a.inspect(uid)["capture"]["bpf_stats"]["dns_assigned"] == 1
