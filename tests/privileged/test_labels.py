"""Issue 3/6: excludePodLabels. netsteer-cni passes the requirements; netsteerd reads the pod's
labels from the Kubernetes API (a fake HTTPS API server here) and leaves matching pods uncaptured."""
import json
import os

import pytest

import nstest
from fake_kube_api import fake_kube_api
from nstest import agent, topology
from test_cni import cni, error_object, k8s_args, netconf

SKIP = ["netsteer.io/capture=disabled", "legacy"]


@pytest.fixture(autouse=True)
def _root():
    nstest.require_root()
    nstest.require_tool("openssl")


def capture_rules(t):
    return t.pod.exec(["ip", "rule"]).stdout.count("lookup 133")


def test_matching_pods_are_skipped_others_captured():
    with fake_kube_api() as api, agent(api.agent_args()) as a, topology() as t:
        api.pods["prod/legacy-0"] = {"app": "shop", "netsteer.io/capture": "disabled"}
        api.pods["prod/web-0"] = {"app": "web"}
        conf = netconf(a.socket, t, excludePodLabels=SKIP)
        # A matching pod: success, prevResult unchanged, nothing installed in its netns.
        rc, out, err = cni("ADD", conf, t.pod.path, args=k8s_args("uid-legacy", "legacy-0", "prod"))
        assert rc == 0, err
        assert json.loads(out) == conf["prevResult"]
        assert a.pods() == []
        assert capture_rules(t) == 0
        assert "netsteer.io/capture=disabled" in err
        assert "not captured" in a.logs()
        assert api.requests[-1] == ("/api/v1/namespaces/prod/pods/legacy-0", "Bearer token-1")
        # CHECK re-evaluates (survives agent restarts); DEL is a no-op success.
        assert cni("CHECK", conf, t.pod.path, args=k8s_args("uid-legacy", "legacy-0", "prod"))[0] == 0
        assert cni("DEL", conf, t.pod.path, args=k8s_args("uid-legacy", "legacy-0", "prod"))[0] == 0
        # A pod that matches nothing is captured as usual; the token is re-read (rotation).
        api.set_token("token-2")
        rc, out, err = cni("ADD", conf, t.pod.path, args=k8s_args("uid-web", "web-0", "prod"))
        assert rc == 0, err
        assert [p["uid"] for p in a.pods()] == ["uid-web"]
        assert capture_rules(t) > 0
        assert api.requests[-1][1] == "Bearer token-2"
        assert cni("CHECK", conf, t.pod.path, args=k8s_args("uid-web", "web-0", "prod"))[0] == 0
        # The same sandbox re-created with a skip label: the old enrolment goes, nothing stays.
        api.pods["prod/web-0"] = {"app": "web", "legacy": ""}
        rc, out, err = cni("ADD", conf, t.pod.path, args=k8s_args("uid-web", "web-0", "prod"))
        assert rc == 0, err
        assert a.pods() == [] and capture_rules(t) == 0
        # Without Kubernetes identity (no K8S_* args) there are no labels: captured, no lookup.
        n = len(api.requests)
        rc, out, err = cni("ADD", conf, t.pod.path, cid="0123456789abcdef0123")
        assert rc == 0, err
        assert len(a.pods()) == 1 and len(api.requests) == n
        assert cni("DEL", netconf(a.socket), "", cid="0123456789abcdef0123")[0] == 0
        assert a.alive()


def test_api_failures_fail_the_add_and_install_nothing():
    with fake_kube_api() as api, agent(api.agent_args()) as a, topology() as t:
        conf = netconf(a.socket, t, excludePodLabels=SKIP)
        # Not found yet (or API down): "try again later" (11), so the runtime retries the ADD.
        rc, out, _ = cni("ADD", conf, t.pod.path, args=k8s_args("uid-new", "new-0", "prod"))
        e = error_object(out)
        assert rc != 0 and e["code"] == 11 and "not found" in e["msg"], e
        # A refused token names the missing permission.
        api.pods["prod/new-0"] = {"app": "web"}
        api.set_token("token-rotated-elsewhere", server_too=False)
        rc, out, _ = cni("ADD", conf, t.pod.path, args=k8s_args("uid-new", "new-0", "prod"))
        e = error_object(out)
        assert rc != 0 and e["code"] == 100 and "HTTP 401" in e["msg"] and "'get' on pods" in e["msg"], e
        assert a.pods() == [] and capture_rules(t) == 0
        # Unreachable API: also 11, within the lookup deadline.
        api.stop()
        rc, out, _ = cni("ADD", conf, t.pod.path, args=k8s_args("uid-new", "new-0", "prod"))
        e = error_object(out)
        assert rc != 0 and e["code"] == 11 and "Kubernetes API" in e["msg"], e
        assert a.pods() == [] and capture_rules(t) == 0
        assert a.alive()


def test_agent_without_api_access_refuses_label_exclusions():
    with agent() as a, topology() as t:
        conf = netconf(a.socket, t, excludePodLabels=SKIP)
        rc, out, _ = cni("ADD", conf, t.pod.path, args=k8s_args("uid-x", "x-0", "prod"))
        e = error_object(out)
        assert rc != 0 and e["code"] == 100 and "--kube-api" in e["msg"], e
        assert a.pods() == [] and capture_rules(t) == 0


def test_bad_kube_api_flags_are_refused_at_start():
    for args in (["--kube-api", "ftp://x"], ["--kube-api", "https://127.0.0.1:1"], ["--kube-api", "in-cluster"]):
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
        p = nstest.run([nstest.NETSTEERD, "--socket", "/nonexistent/x.sock", "--metrics", "off"] + args,
                       check=False, env=env)
        assert p.returncode == 2, (args, p.stdout, p.stderr)
        assert "--kube" in p.stdout + p.stderr or "KUBERNETES_SERVICE_HOST" in p.stdout + p.stderr
