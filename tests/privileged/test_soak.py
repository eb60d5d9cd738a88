"""Issue 6/6: soak. Enrol/unenrol cycles across 50 pod netns while every pod carries traffic:
fds, threads and pins back to baseline, RSS within 5 % of the warmed-up baseline, and no rule,
route, tc filter or BPF link left in any netns. CI runs NETSTEER_SOAK_CYCLES (default 300); the
full soak is NETSTEER_SOAK_CYCLES=10000 (figures in bench/RESULTS.md)."""
import os
import subprocess
import time

import pytest

import nstest
from nstest import LOADGEN, agent

PODS = 50
PORT = 9000
CYCLES = int(os.environ.get("NETSTEER_SOAK_CYCLES", "300"))
WARMUP = PODS  # one full round before the baseline: allocator pools and pipe caches settle


@pytest.fixture(autouse=True)
def _root():
    nstest.require_root()


def rss_kb(pid):
    s = open(f"/proc/{pid}/status").read()
    return int(s.split("VmRSS:")[1].split()[0])


def leftovers(ns):
    """Anything netsteer installs in a pod netns, as text (empty when clean)."""
    out = []
    rules = ns.exec(["ip", "rule"]).stdout + ns.exec(["ip", "-6", "rule"]).stdout
    out += [l for l in rules.splitlines() if "lookup 133" in l]
    out += ns.exec(["ip", "route", "show", "table", "133"], check=False).stdout.splitlines()
    out += ns.exec(["ip", "-6", "route", "show", "table", "133"], check=False).stdout.splitlines()
    for d in ("ingress", "egress"):
        out += ns.exec(["tc", "filter", "show", "dev", "eth0", d], check=False).stdout.splitlines()
    net = ns.exec(["bpftool", "net", "show"], check=False).stdout
    out += [l for l in net.splitlines() if "netsteer" in l]
    return out


def test_soak_enrol_unenrol_cycles_with_traffic():
    remote = nstest.Netns(nstest.unique("sr"))
    pods, clients = [], []
    try:
        for i in range(PODS):
            ns = nstest.Netns(nstest.unique("sp"))
            pods.append(ns)
            nstest.run(["ip", "link", "add", "eth0", "netns", ns.name, "type", "veth", "peer", "name", f"r{i}",
                        "netns", remote.name])
            ns.ip(f"addr add 10.233.{i}.1/24 dev eth0")
            ns.ip("link set eth0 up")
            remote.ip(f"addr add 10.233.{i}.2/24 dev r{i}")
            remote.ip(f"link set r{i} up")
        srv = remote.popen([LOADGEN, "server", str(PORT)], stdout=subprocess.PIPE, text=True)
        assert srv.stdout.readline().strip() == "ready"
        clients.append(srv)
        # Every pod talks to the remote the whole time (captured while enrolled, direct otherwise).
        for i, ns in enumerate(pods):
            clients.append(ns.popen([LOADGEN, "client", f"10.233.{i}.2", str(PORT), "3", "0", "100000"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with agent() as a:
            def cycle(c):
                ns = pods[c % PODS]
                try:
                    a.enrol(ns, ip=[f"10.233.{c % PODS}.1"])
                    a.ctl("unenroll", "--uid", ns.name)
                except AssertionError as e:
                    raise AssertionError(f"cycle {c}: {e}\nagent log:\n{a.logs()[-6000:]}") from None
            for c in range(WARMUP):
                cycle(c)
            def pipe_fds():  # the relay's pools (pipes, spare upstreams) grow with peak concurrency
                return nstest.relay_pool_fds(a)
            base_fds = nstest.stable_fd_count(a.pid) - pipe_fds()
            base_threads = nstest.thread_count(a.pid)
            base_rss = rss_kb(a.pid)
            t0 = time.time()
            for c in range(WARMUP, WARMUP + CYCLES):
                cycle(c)
            secs = time.time() - t0
            st = a.call({"type": "status", "version": 1})["status"]
            assert st["enrol_ok"] == WARMUP + CYCLES and st["enrol_failed"] == 0, st
            relay = a.call({"type": "status", "version": 1})["status"]["relay"]
            fds = nstest.stable_fd_count(a.pid) - pipe_fds()
            assert fds == base_fds, f"fds {base_fds} -> {fds} (relay pools excluded)"
            assert nstest.thread_count(a.pid) == base_threads
            rss = rss_kb(a.pid)
            assert rss <= base_rss * 1.05, f"RSS {base_rss} kB -> {rss} kB"
            assert not os.path.exists(a.pin_root) or os.listdir(a.pin_root) == []
            for ns in pods:
                assert leftovers(ns) == [], (ns.name, leftovers(ns))
            print(f"soak: {CYCLES} cycles over {PODS} netns in {secs:.1f} s "
                  f"({secs / CYCLES * 1000:.1f} ms per enrol+unenrol), fds {base_fds}, threads {base_threads}, "
                  f"RSS {base_rss} -> {rss} kB ({(rss - base_rss) / base_rss * 100:+.1f} %), relay {relay}")
    finally:
        for p in clients:
            p.kill()
            p.wait()
        for ns in pods:
            ns.close()
        remote.close()
