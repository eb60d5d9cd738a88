"""Issue 3/6 e2e: real pods from a real containerd (CRI RunPodSandbox/StopPodSandbox/
RemovePodSandbox) with a bridge + host-local + netsteer-cni chain, enrolled by netsteerd."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import nstest  # noqa: E402
from nstest import agent, run  # noqa: E402
import cri_harness  # noqa: E402

APP = 8080


@pytest.fixture(autouse=True)
def _root():
    nstest.require_root()
    for tool in ("containerd", "runc", "ctr", "/usr/lib/cni/bridge", "/bin/busybox"):
        nstest.require_tool(tool)


class PodNs:
    """A pod netns made by containerd, entered by path (nsenter --net, as the node would)."""

    def __init__(self, path):
        self.path = path

    def exec(self, cmd, check=True, **kw):
        return run(["nsenter", f"--net={self.path}"] + cmd, check=check, **kw)

    def popen(self, cmd, **kw):
        import subprocess
        return subprocess.Popen(["nsenter", f"--net={self.path}"] + cmd, **kw)


def serve(ns, port, procs):
    import subprocess
    p = ns.popen([nstest.PY, os.path.join(nstest.LIB, "peer_server.py"), str(port)], stdout=subprocess.PIPE,
                 stderr=subprocess.DEVNULL, text=True)
    procs.append(p)
    assert p.stdout.readline().strip() == "ready"


def peer(ns, host, port):
    return ns.exec([nstest.PY, os.path.join(nstest.LIB, "peer_client.py"), host, str(port), "peer"],
                   timeout=60).stdout.strip()


def test_real_pods_enrolled_steered_and_unenrolled():
    procs = []
    with agent() as a:
        node = cri_harness.Node(a.socket)
        try:
            ids = {}
            for name, uid in (("web-0", "11111111-aaaa-4000-8000-000000000001"),
                              ("client-0", "22222222-bbbb-4000-8000-000000000002")):
                ids[name] = node.run_pod(name, "e2e-ns", uid)
            pods = {p["uid"]: p for p in a.pods()}
            assert set(pods) == {"11111111-aaaa-4000-8000-000000000001", "22222222-bbbb-4000-8000-000000000002"}
            nets = {}
            for name, pid in ids.items():
                st, netns = node.status(pid)
                uid = st.metadata.uid
                p = pods[uid]
                assert (p["name"], p["namespace"]) == (name, "e2e-ns")
                assert p["ips"] == [st.network.ip], (p, st.network.ip)  # from the CNI prevResult
                assert netns and p["netns_path"] == netns
                nets[name] = (PodNs(netns), st.network.ip, uid)
            web_ns, web_ip, web_uid = nets["web-0"]
            cli_ns, cli_ip, cli_uid = nets["client-0"]
            serve(web_ns, APP, procs)
            # pod → pod: out of client-0 through its 15001, into web-0 through its 15006; the app
            # sees client-0's real address.
            out0 = a.inspect(cli_uid)["relay"]["outbound"]["opened"]
            in0 = a.inspect(web_uid)["relay"]["inbound"]["opened"]
            assert peer(cli_ns, web_ip, APP).startswith(cli_ip)
            assert a.inspect(cli_uid)["relay"]["outbound"]["opened"] == out0 + 1
            assert a.inspect(web_uid)["relay"]["inbound"]["opened"] == in0 + 1
            # node → pod: inbound capture, the node's bridge address is the peer.
            assert peer(node.node, web_ip, APP).startswith(node.gateway)
            assert a.inspect(web_uid)["relay"]["inbound"]["opened"] == in0 + 2
            # The plugin logged to its file (never stdout: containerd parsed its results).
            log = open(node.cni_log).read()
            assert "ADD 11111111-aaaa-4000-8000-000000000001 (e2e-ns/web-0): enrolled" in log
            # Removing a pod unenrols it (DEL via StopPodSandbox; the second DEL is a no-op).
            for p in procs:
                p.kill()
                p.wait()
            procs.clear()
            node.remove_pod(ids["web-0"])
            assert [p["uid"] for p in a.pods()] == [cli_uid]
            assert not os.path.exists(os.path.join(a.pin_root, web_uid))
            # failurePolicy=fail with the agent stopped: pod creation fails with the agent's error.
            a.stop()
            with pytest.raises(Exception) as e:
                node.run_pod("late-0", "e2e-ns", "33333333-cccc-4000-8000-000000000003")
            assert "netsteer agent unreachable" in str(e.value), str(e.value)
            # The agent restarts: the runtime's retry enrols the pod.
            a.restart()
            late = node.run_pod("late-0", "e2e-ns", "33333333-cccc-4000-8000-000000000003")
            assert {p["uid"] for p in a.pods()} == {cli_uid, "33333333-cccc-4000-8000-000000000003"}
            node.remove_pod(late)
            node.remove_pod(ids["client-0"])
            assert a.pods() == []
        finally:
            for p in procs:
                p.kill()
                p.wait()
            node.close()
