"""Issue 14 item 4: scripts/demo.sh works and leaves nothing behind: no process, netns, pins or
temporary directory (it used to leave its two python http.servers running)."""
import glob
import os
import subprocess

import pytest

import nstest

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


@pytest.fixture(autouse=True)
def _root():
    nstest.require_root()
    nstest.require_tool("dnsmasq")


def demo_processes():
    """pids (not ours) whose command line mentions the demo's names or temporary directory."""
    found = {}
    for d in glob.glob("/proc/[0-9]*"):
        pid = int(os.path.basename(d))
        if pid == os.getpid():
            continue
        try:
            cmd = open(f"{d}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "netsteer-demo" in cmd or "udp_tool.py echo" in cmd or "haproxy" in cmd:
            found[pid] = cmd
    return found


def test_demo_runs_and_leaves_nothing():
    assert not demo_processes(), "a demo is already running"
    env = dict(os.environ, NETSTEER_DEMO_PREBUILT="1", BUILD_DIR=nstest.BUILD)
    p = subprocess.run(["bash", os.path.join(ROOT, "scripts", "demo.sh")], env=env, capture_output=True,
                       text=True, timeout=300)
    out = p.stdout + p.stderr
    try:
        assert p.returncode == 0, out
        for want in ("hello from the remote", "hello from the pod's app", "(timed out, as it should)",
                     "10.250.0.80     web.demo", "dns: queries=",
                     '"seen_as": ["10.250.0.2 5555"]', "udp: outbound_flows=1 inbound_flows=1 datagrams up=6 down=6",
                     "haproxy: client=::ffff:10.250.0.2:", "original destination=::ffff:10.250.0.1:8080",
                     "lease of listeners ended (the holder closed the connection)",
                     "pins left under /sys/fs/bpf/netsteer-demo: 0"):
            assert want in out, f"demo output lacks {want!r}:\n{out}"
        left = demo_processes()
        assert not left, f"the demo left processes running: {left}"
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert "netsteer-demo" not in netns, netns
        assert not os.path.exists("/sys/fs/bpf/netsteer-demo")
        assert not glob.glob("/tmp/netsteer-demo.*")
        assert not os.path.exists("/etc/netns/netsteer-demo-pod")
    finally:
        for pid in demo_processes():  # our own leftovers only (the demo's), by pid
            try:
                os.kill(pid, 9)
            except OSError:
                pass
