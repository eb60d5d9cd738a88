"""Issue 3/6: netsteer-cni against a real netsteerd and real pod netns (spec behaviours, failure
policy, idempotent DEL, CHECK, STATUS/VERSION, logs never on stdout, snapshot, reconcile)."""
import json
import os
import subprocess
import tempfile

import pytest

import nstest
from nstest import agent, topology, run

APP = 8080


@pytest.fixture(autouse=True)
def _root():
    nstest.require_root()


def prev_result(t):
    return {"cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": t.pod.path}],
            "ips": [{"address": f"{t.pod_ip}/24", "interface": 0}, {"address": f"{t.pod_ip6}/64", "interface": 0}]}


def netconf(sock, t=None, **kw):
    c = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "netsteer-cni", "socketPath": sock,
         "timeoutMs": 5000}
    if t is not None:
        c["prevResult"] = prev_result(t)
    c.update(kw)
    return c


def cni(command, conf, netns="", cid="cid-0001", args=None, ifname="eth0"):
    """Run netsteer-cni; returns (exit code, stdout, stderr)."""
    env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": netns,
           "CNI_IFNAME": ifname, "CNI_PATH": "/usr/lib/cni"}
    if args is not None:
        env["CNI_ARGS"] = args
    data = conf if isinstance(conf, str) else json.dumps(conf)
    p = subprocess.run([nstest.NETSTEER_CNI], input=data, capture_output=True, text=True, env=env, timeout=30)
    return p.returncode, p.stdout, p.stderr


def k8s_args(uid, name="web-0", ns="default"):
    return f"IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID=x;K8S_POD_UID={uid}"


def error_object(out):
    e = json.loads(out)  # stdout is exactly one JSON document
    assert set(e) <= {"cniVersion", "code", "msg", "details"} and e["msg"], e
    return e


def test_add_enrols_with_k8s_identity_and_prints_prev_result_unchanged():
    with agent() as a, topology() as t:
        t.serve(t.pod, APP)
        conf = netconf(a.socket, t)
        rc, out, err = cni("ADD", conf, t.pod.path, args=k8s_args("uid-aaa-1"))
        assert rc == 0, err
        assert json.loads(out) == conf["prevResult"]
        pods = a.pods()
        assert len(pods) == 1
        p = pods[0]
        assert (p["uid"], p["name"], p["namespace"]) == ("uid-aaa-1", "web-0", "default")
        assert sorted(p["ips"]) == sorted([t.pod_ip, t.pod_ip6])
        assert p["netns_path"] == t.pod.path
        # Steered: inbound from the remote reaches the app through 15006 with the real peer.
        before = a.inspect("uid-aaa-1")["capture"]["bpf_stats"]["inbound_assigned"]
        assert t.client(t.remote, t.pod_ip, APP, "peer").startswith(t.remote_ip)
        assert a.inspect("uid-aaa-1")["capture"]["bpf_stats"]["inbound_assigned"] == before + 1
        # CNI_ARGS in another order name the same pod; a repeated ADD is a no-op.
        rc, out, err = cni("ADD", conf, t.pod.path,
                           args="K8S_POD_UID=uid-aaa-1;K8S_POD_NAME=web-0;K8S_POD_NAMESPACE=default")
        assert rc == 0, err
        assert len(a.pods()) == 1
        assert cni("CHECK", conf, t.pod.path, args=k8s_args("uid-aaa-1"))[0] == 0
        # DEL, then the runtime's second DEL with an empty CNI_NETNS and no prevResult.
        assert cni("DEL", conf, t.pod.path, args=k8s_args("uid-aaa-1"))[0] == 0
        assert a.pods() == []
        assert cni("DEL", netconf(a.socket), "", args=k8s_args("uid-aaa-1"))[0] == 0
        # CHECK of a pod that is not enrolled fails with a spec error object.
        rc, out, _ = cni("CHECK", conf, t.pod.path, args=k8s_args("uid-aaa-1"))
        assert rc != 0 and error_object(out)["code"] == 101
        assert t.pod.exec(["ip", "rule"]).stdout.count("lookup 133") == 0


def test_add_without_k8s_args_uses_the_container_id():
    with agent() as a, topology() as t:
        rc, out, err = cni("ADD", netconf(a.socket, t), t.pod.path, cid="0123456789abcdef0123")
        assert rc == 0, err
        assert [p["uid"] for p in a.pods()] == ["c-0123456789abcdef0123"]
        assert cni("DEL", netconf(a.socket), "", cid="0123456789abcdef0123")[0] == 0
        assert a.pods() == []


def test_failure_policy_when_the_agent_is_down():
    with agent() as a, topology() as t:
        sock = a.socket
        a.stop()
        rc, out, err = cni("ADD", netconf(sock, t), t.pod.path, args=k8s_args("uid-f"))
        e = error_object(out)
        assert rc != 0 and e["code"] == 11 and "unreachable" in e["msg"] and "failurePolicy=fail" in e["details"]
        log = os.path.join(a.dir, "cni.log")
        conf = netconf(sock, t, failurePolicy="ignore", logFile=log)
        rc, out, err = cni("ADD", conf, t.pod.path, args=k8s_args("uid-f"))
        assert rc == 0 and json.loads(out) == conf["prevResult"]
        assert "WITHOUT traffic capture" in open(log).read()
        assert "WITHOUT traffic capture" in err  # stderr too, never stdout
        # DEL always succeeds with the agent down; STATUS reports it unavailable (code 50).
        assert cni("DEL", netconf(sock), "", args=k8s_args("uid-f"))[0] == 0
        rc, out, _ = cni("STATUS", netconf(sock))
        assert rc != 0 and error_object(out)["code"] == 50
        # Pods created while the agent was down are enrolled on the runtime's next ADD retry.
        a.restart()
        assert cni("STATUS", netconf(sock))[0] == 0
        rc, out, err = cni("ADD", netconf(sock, t), t.pod.path, args=k8s_args("uid-f"))
        assert rc == 0, err
        assert [p["uid"] for p in a.pods()] == ["uid-f"]


def test_bad_input_is_a_spec_error_and_changes_nothing():
    with agent() as a, topology() as t:
        good = netconf(a.socket, t)
        cases = [
            ("malformed netconf", "ADD", "{nope", t.pod.path, 6),
            ("unsupported version", "ADD", dict(good, cniVersion="0.1.0"), t.pod.path, 1),
            ("no prevResult", "ADD", netconf(a.socket), t.pod.path, 7),
            ("bad failurePolicy", "ADD", dict(good, failurePolicy="maybe"), t.pod.path, 7),
            ("bad exclusion", "ADD", dict(good, excludeOutboundCIDRs=["10.0.0.0/40"]), t.pod.path, 7),
            ("netns is not a netns", "ADD", good, "/etc/hostname", 3),
            ("netns missing", "ADD", good, "/var/run/netns/does-not-exist", 3),
            ("missing CNI_NETNS", "ADD", good, "", 4),
            ("unknown command", "FROB", good, t.pod.path, 4),
        ]
        fds = nstest.stable_fd_count(a.pid)
        for what, cmd, conf, ns, code in cases:
            rc, out, err = cni(cmd, conf, ns, args=k8s_args("uid-bad"))
            assert rc != 0, what
            assert error_object(out)["code"] == code, (what, out)
        rc, out, _ = cni("ADD", good, t.pod.path, args="garbage-without-equals")
        assert rc != 0 and error_object(out)["code"] == 4
        assert a.pods() == []
        assert a.alive() and nstest.settled_fd_count(a.pid, fds) == fds
        assert "lookup 133" not in t.pod.exec(["ip", "rule"]).stdout


def test_version_and_status():
    with agent() as a:
        rc, out, _ = cni("VERSION", {"cniVersion": "1.1.0"})
        v = json.loads(out)
        assert rc == 0 and v["cniVersion"] == "1.1.0" and {"1.0.0", "1.1.0"} <= set(v["supportedVersions"])
        assert cni("STATUS", netconf(a.socket)) == (0, "", cni("STATUS", netconf(a.socket))[2])
        assert cni("GC", netconf(a.socket))[0] == 0


def test_logs_go_to_the_log_file_and_stderr_never_stdout():
    with agent() as a, topology() as t:
        log = os.path.join(a.dir, "plugin.log")
        conf = netconf(a.socket, t, logFile=log, logLevel="debug")
        rc, out, err = cni("ADD", conf, t.pod.path, args=k8s_args("uid-log"))
        assert rc == 0
        assert json.loads(out) == conf["prevResult"]  # nothing but the result on stdout
        text = open(log).read()
        assert "ADD uid-log (default/web-0): enrolled" in text and "enrolled" in err
        rc, out, _ = cni("DEL", conf, "", args=k8s_args("uid-log"))
        assert rc == 0 and out == ""
        assert "DEL uid-log (default/web-0): unenrolled" in open(log).read()


def test_snapshot_drops_pods_that_no_longer_exist():
    with agent() as a, topology() as t1, topology() as t2:
        assert cni("ADD", netconf(a.socket, t1), t1.pod.path, args=k8s_args("uid-keep", "a"))[0] == 0
        assert cni("ADD", netconf(a.socket, t2), t2.pod.path, args=k8s_args("uid-gone", "b"))[0] == 0
        out = a.ctl("snapshot", "--uid", "uid-keep", "--uid", "uid-unknown").stdout
        assert out.strip() == "unenrolled uid-gone"
        assert [p["uid"] for p in a.pods()] == ["uid-keep"]
        assert "lookup 133" not in t2.pod.exec(["ip", "rule"]).stdout
        assert "lookup 133" in t1.pod.exec(["ip", "rule"]).stdout
        assert not os.path.exists(os.path.join(a.pin_root, "uid-gone"))
        assert a.ctl("snapshot", "--none-exist").stdout.strip() == "unenrolled uid-keep"
        assert a.pods() == []


def test_restart_cleans_pods_deleted_while_down_and_keeps_the_rest():
    with agent() as a, topology() as t1:
        t1.serve(t1.pod, APP)
        t2 = nstest.Topology()
        try:
            assert cni("ADD", netconf(a.socket, t1), t1.pod.path, args=k8s_args("uid-live", "a"))[0] == 0
            assert cni("ADD", netconf(a.socket, t2), t2.pod.path, args=k8s_args("uid-dead", "b"))[0] == 0
            a.kill()
        finally:
            t2.close()  # the pod is deleted while the agent is down (no DEL reaches it)
        a.restart()
        assert [p["uid"] for p in a.pods()] == ["uid-live"]
        assert not os.path.exists(os.path.join(a.pin_root, "uid-dead"))
        before = a.inspect("uid-live")["relay"]["inbound"]["opened"]
        assert t1.client(t1.remote, t1.pod_ip, APP, "peer").startswith(t1.remote_ip)
        assert a.inspect("uid-live")["relay"]["inbound"]["opened"] == before + 1
        assert cni("CHECK", netconf(a.socket, t1), t1.pod.path, args=k8s_args("uid-live", "a"))[0] == 0
