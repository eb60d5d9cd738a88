"""netsteerd with /proc/sys read-only, as every non-privileged Kubernetes container has it
(deploy/daemonset.yaml: privileged: false): the pod's per-interface IPv4 sysctls (accept_local=1,
rp_filter=0) are set over rtnetlink and restored on unenrol; conf/all/rp_filter, which has no
netlink setter, may stay at 2 (loose: capture works) but not at 1 (strict drops the pod's captured
IPv4 traffic), and the enrol then fails saying so.

The agent runs in its own mount namespace where /proc/sys is bind-mounted on itself and remounted
read-only, exactly as runc does it. Propagation is slave so the test's /var/run/netns mounts still
reach it (the test reads and writes the pod's /proc/sys from outside, where it is writable).
"""
import contextlib
import os
import signal

import pytest

import nstest
from nstest import topology

APP = 8080
REMOTE_PORT = 9000

RO_WRAPPER = ["unshare", "-m", "--propagation", "slave", "sh", "-c",
              "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && exec \"$@\"",
              "ro-proc-sys"]


class ReadOnlyProcSysAgent(nstest.Agent):
    """nstest.Agent whose netsteerd sees /proc/sys read-only (the wrapper execs it: same pid)."""

    def cmd(self):
        return RO_WRAPPER + super().cmd()


@pytest.fixture(autouse=True)
def _root():
    nstest.require_root()
    nstest.require_tool("unshare")


def ro_agent():
    a = ReadOnlyProcSysAgent()
    try:
        # Really read-only in the agent's mount namespace, writable here.
        with open(f"/proc/{a.pid}/mountinfo") as f:
            mounts = [l.split() for l in f]
        proc_sys = [m for m in mounts if m[4] == "/proc/sys"]
        assert proc_sys and "ro" in proc_sys[-1][5].split(","), proc_sys
        probe = nstest.run(["nsenter", "-t", str(a.pid), "-m", "sh", "-c",
                            "echo 0 > /proc/sys/net/ipv4/conf/all/rp_filter"], check=False)
        assert probe.returncode != 0 and "Read-only" in probe.stderr, probe
        assert os.access("/proc/sys/net/ipv4/conf/all/rp_filter", os.W_OK)
    except BaseException:
        a.close()
        raise
    return a


def sysctl(ns, key):
    return ns.exec(["sysctl", "-n", key]).stdout.strip()


def set_sysctl(ns, key, value):
    ns.exec(["sysctl", "-qw", f"{key}={value}"])


def relay_opened(a, uid, direction):
    return a.inspect(uid)["relay"][direction]["opened"]


def check_capture(a, t, uid, v4_only=False):
    """Outbound through the relay and inbound with the client's address kept, v4 (and v6)."""
    cases = [(t.pod_ip, t.remote_ip)] + ([] if v4_only else [(t.pod_ip6, t.remote_ip6)])
    for pod_ip, remote_ip in cases:
        before = relay_opened(a, uid, "outbound")
        assert t.client(t.pod, remote_ip, REMOTE_PORT, "peer", timeout=20).split()[0] == pod_ip
        assert relay_opened(a, uid, "outbound") >= before + 1
        before = relay_opened(a, uid, "inbound")
        assert t.client(t.remote, pod_ip, APP, "peer", timeout=20).split()[0] == remote_ip
        assert relay_opened(a, uid, "inbound") >= before + 1


def pod_rules(t):
    return t.pod.exec("ip rule; ip -6 rule").stdout


@contextlib.contextmanager
def pod_with_ro_agent(sysctls):
    """A pod/remote pair with the given IPv4 sysctls in the pod, servers on both sides and a
    read-only-/proc/sys agent; yields (topology, agent, the pod's rules before any enrol)."""
    with topology() as t:
        for key, value in sysctls.items():
            set_sysctl(t.pod, key, value)
        t.serve(t.remote, REMOTE_PORT)
        t.serve(t.pod, APP)
        rules = pod_rules(t)
        a = ro_agent()
        try:
            yield t, a, rules
        finally:
            a.close()


def test_enrol_sets_devconf_over_netlink_and_unenrol_restores():
    with pod_with_ro_agent({"net.ipv4.conf.eth0.accept_local": 0, "net.ipv4.conf.eth0.rp_filter": 1,
                            "net.ipv4.conf.all.rp_filter": 0}) as (t, a, rules):
        a.enrol(t.pod, ip=[t.pod_ip, t.pod_ip6])
        uid = t.pod.name
        assert sysctl(t.pod, "net.ipv4.conf.eth0.accept_local") == "1"
        assert sysctl(t.pod, "net.ipv4.conf.eth0.rp_filter") == "0"
        changed = a.inspect(uid)["capture"]["sysctls_changed"]
        assert changed == {"net/ipv4/conf/eth0/accept_local": {"before": "0"},
                           "net/ipv4/conf/eth0/rp_filter": {"before": "1"}}, changed
        t.wait_v6_ready()
        check_capture(a, t, uid)
        a.ctl("unenroll", "--uid", uid)
        assert sysctl(t.pod, "net.ipv4.conf.eth0.accept_local") == "0"
        assert sysctl(t.pod, "net.ipv4.conf.eth0.rp_filter") == "1"
        assert sysctl(t.pod, "net.ipv4.conf.all.rp_filter") == "0"
        assert pod_rules(t) == rules
        assert "EROFS" not in a.logs() and "Read-only" not in a.logs()


def test_loose_all_rp_filter_is_left_and_capture_works():
    with pod_with_ro_agent({"net.ipv4.conf.all.rp_filter": 2, "net.ipv4.conf.eth0.accept_local": 0}) as (t, a, _):
        a.enrol(t.pod, ip=[t.pod_ip, t.pod_ip6])
        uid = t.pod.name
        assert sysctl(t.pod, "net.ipv4.conf.all.rp_filter") == "2"
        assert sysctl(t.pod, "net.ipv4.conf.eth0.rp_filter") == "0"
        assert sysctl(t.pod, "net.ipv4.conf.eth0.accept_local") == "1"
        assert "net/ipv4/conf/all/rp_filter" not in a.inspect(uid)["capture"]["sysctls_changed"]
        check_capture(a, t, uid, v4_only=True)
        assert "net.ipv4.conf.all.rp_filter stays 2" in a.logs()
        a.ctl("unenroll", "--uid", uid)
        assert sysctl(t.pod, "net.ipv4.conf.all.rp_filter") == "2"
        assert sysctl(t.pod, "net.ipv4.conf.eth0.accept_local") == "0"


def test_strict_all_rp_filter_fails_the_enrol_saying_what_to_do():
    with topology() as t:
        set_sysctl(t.pod, "net.ipv4.conf.all.rp_filter", 1)
        set_sysctl(t.pod, "net.ipv4.conf.eth0.accept_local", 0)
        set_sysctl(t.pod, "net.ipv4.conf.eth0.rp_filter", 1)
        rules = pod_rules(t)
        a = ro_agent()
        try:
            r = a.ctl("enroll", "--netns", t.pod.path, "--uid", t.pod.name, "--ip", t.pod_ip, check=False)
            out = r.stdout + r.stderr
            assert r.returncode != 0, out
            for want in ("net.ipv4.conf.all.rp_filter is 1", "/proc/sys is read-only in netsteerd's container",
                         "net.ipv4.conf.all.rp_filter=0 or 2"):
                assert want in out, out
            # Nothing left behind: the per-interface values it had set are back.
            assert sysctl(t.pod, "net.ipv4.conf.eth0.accept_local") == "0"
            assert sysctl(t.pod, "net.ipv4.conf.eth0.rp_filter") == "1"
            assert sysctl(t.pod, "net.ipv4.conf.all.rp_filter") == "1"
            assert pod_rules(t) == rules
            assert [p for p in a.pods() if p["uid"] == t.pod.name] == []
        finally:
            a.close()


def test_writable_proc_sys_still_clears_strict_all_rp_filter():
    # Unchanged where /proc/sys is writable (privileged agent): conf/all/rp_filter 1 -> 0, restored.
    with topology() as t, nstest.agent() as a:
        set_sysctl(t.pod, "net.ipv4.conf.all.rp_filter", 1)
        t.serve(t.remote, REMOTE_PORT)
        t.serve(t.pod, APP)
        a.enrol(t.pod, ip=[t.pod_ip, t.pod_ip6])
        assert sysctl(t.pod, "net.ipv4.conf.all.rp_filter") == "0"
        check_capture(a, t, t.pod.name, v4_only=True)
        a.ctl("unenroll", "--uid", t.pod.name)
        assert sysctl(t.pod, "net.ipv4.conf.all.rp_filter") == "1"


def test_restarted_agent_restores_sysctls_saved_in_the_old_format():
    """The state file keeps the /proc/sys spelling older agents wrote; a restarted agent (read-only
    /proc/sys) restores such records over netlink."""
    with pod_with_ro_agent({"net.ipv4.conf.eth0.accept_local": 0, "net.ipv4.conf.eth0.rp_filter": 2}) as (t, a, _):
        a.enrol(t.pod, ip=[t.pod_ip, t.pod_ip6])
        uid = t.pod.name
        a.kill()
        doc = nstest.read_state(a.state_dir)
        rec = [p for p in doc["pods"] if p["pod"]["uid"] == uid][0]
        old_format = [{"key": "net/ipv4/conf/eth0/accept_local", "value": "0"},
                      {"key": "net/ipv4/conf/eth0/rp_filter", "value": "2"}]
        assert rec["capture"]["sysctls"] == old_format
        # As an older agent wrote it (only these fields): replace the record's capture state.
        rec["capture"] = {"sysctls": old_format, "guarded_ifindexes": rec["capture"]["guarded_ifindexes"],
                          "tc_mode": rec["capture"]["tc_mode"]}
        nstest.write_state(a.state_dir, doc)
        a.restart()
        a.wait_guard(uid)
        assert sysctl(t.pod, "net.ipv4.conf.eth0.accept_local") == "1"
        check_capture(a, t, uid, v4_only=True)
        a.ctl("unenroll", "--uid", uid)
        assert sysctl(t.pod, "net.ipv4.conf.eth0.accept_local") == "0"
        assert sysctl(t.pod, "net.ipv4.conf.eth0.rp_filter") == "2"
