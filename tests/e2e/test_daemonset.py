"""Issue 18 e2e: the DaemonSet under a real runtime. The image scripts/image.sh builds offline is
imported into a private containerd (cri_harness) and deploy/daemonset.yaml's pod is run from the
parsed manifest over CRI the way the kubelet runs it: host network (the harness's node netns),
exactly the manifest's capabilities, its hostPath/configMap/projected volumes, command, user,
read-only root filesystem, seccomp profile, readiness probe (CRI ExecSync). Its init container
chains netsteer-cni into containerd's CNI config; application pods are then enrolled with their
Kubernetes identity and steered both ways; a second agent pod rolls in with --takeover under load
(zero failures) and the old one drains and stops; deploy/uninstall.yaml's pod and the agent's own
--cleanup-on-exit remove everything, as deploy/README.md says.

Node paths: the node's / for hostPath volumes (and the paths inside netconf.json, which the plugin
reads on the node) is a directory of the test; /opt/cni/bin and /etc/cni/net.d are containerd's
CNI dirs, /sys/fs/bpf a fresh bpffs mounted there, /var/run/netns the real one (containerd puts
the pod netns there)."""
import contextlib
import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import nstest  # noqa: E402
from nstest import run  # noqa: E402
import cri_harness  # noqa: E402

REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
DEPLOY = os.path.join(REPO, "deploy")
APP = 8080
LOAD_PORT = 9000
NS = "e2e-ns"
CAP_BITS = {"NET_BIND_SERVICE": 10, "NET_ADMIN": 12, "NET_RAW": 13, "SYS_ADMIN": 21, "SYS_RESOURCE": 24, "BPF": 39}
# What the kubelet sends for procMount: Default (k8s.io/kubernetes pkg/securitycontext).
MASKED_PATHS = ["/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap"]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


@pytest.fixture(autouse=True, scope="module")
def _root():
    """Module scope: checked before the module's image is built."""
    nstest.require_root()
    for tool in ("containerd", "runc", "ctr", "/usr/lib/cni/bridge", "/bin/busybox", "bpftool", "catatonit", "strip"):
        nstest.require_tool(tool)
    try:
        import yaml  # noqa: F401
    except ImportError:
        msg = "python3-yaml is not installed (scripts/setup.sh installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg + " and CI=true: refusing to skip")
        pytest.skip(msg)
    if not os.access(nstest.LOADGEN, os.X_OK):
        pytest.fail(f"{nstest.LOADGEN} not built")


def manifests():
    import yaml
    docs = {}
    for f in ("daemonset.yaml", "uninstall.yaml", "configmap.yaml"):
        with open(os.path.join(DEPLOY, f)) as fh:
            for d in yaml.safe_load_all(fh):
                if d:
                    docs[(d["kind"], d["metadata"]["name"])] = d
    return docs


def quantity(q):
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    for u, m in units.items():
        if str(q).endswith(u):
            return int(str(q)[:-2]) * m
    return int(q)


def in_netns(path, fn):
    """fn() on a thread that entered the netns at path (sockets it opens stay there)."""
    out = {}

    def body():
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(path, os.O_RDONLY)
            try:
                if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised on the caller's thread
            out["error"] = e

    t = threading.Thread(target=body)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def wait_for(what, cond, timeout, interval=0.05):
    deadline = time.time() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Kubelet:
    """Runs pod templates from the manifests over CRI as the kubelet would, with the node's
    directories mapped under `root`."""

    def __init__(self, node, root, bpffs, api, configmaps):
        self.node, self.root, self.bpffs, self.api = node, root, bpffs, api
        # /proc/sys read-only as in every non-privileged container: the agent sets pod devconf
        # values over rtnetlink.
        self.readonly_paths = list(READONLY_PATHS)
        self.configmaps = configmaps
        self.pods = {}  # pod id -> (uid, spec)
        bnd = caps_of("self")[0]["CapBnd"]
        self.not_grantable = {n for n, bit in CAP_BITS.items() if not bnd >> bit & 1}

    def node_path(self, p):
        # /var/run/netns: the node's own (containerd's pod netns are there), by its real path
        # /run/netns, a shared mount (HostToContainer propagation needs one; this machine's / is
        # private, where a systemd node's is shared).
        fixed = {"/opt/cni/bin": self.node.bin_dir, "/etc/cni/net.d": self.node.conf_dir, "/sys/fs/bpf": self.bpffs,
                 "/var/run/netns": os.path.realpath("/var/run/netns")}
        for k, v in fixed.items():
            if p == k or p.startswith(k + "/"):
                return v + p[len(k):]
        return self.root + p

    def volume(self, pod_uid, v):
        """The host directory behind a pod volume (made as the kubelet would)."""
        if "hostPath" in v:
            path, kind = self.node_path(v["hostPath"]["path"]), v["hostPath"].get("type", "")
            if kind == "DirectoryOrCreate":
                os.makedirs(path, exist_ok=True)
            elif kind == "Directory":
                assert os.path.isdir(path), f"hostPath {v['hostPath']['path']} (type Directory) is missing on the node"
            return path
        d = os.path.join(self.root, "pods", pod_uid, "volumes", v["name"])
        if os.path.isdir(d):
            return d
        os.makedirs(d)
        if "configMap" in v:
            for k, data in self.configmaps[v["configMap"]["name"]].items():
                with open(os.path.join(d, k), "w") as f:
                    f.write(data)
        elif "projected" in v:
            for src in v["projected"]["sources"]:
                if "serviceAccountToken" in src:
                    shutil.copy(self.api.token_file, os.path.join(d, src["serviceAccountToken"]["path"]))
                elif "configMap" in src and src["configMap"]["name"] == "kube-root-ca.crt":
                    for item in src["configMap"]["items"]:
                        shutil.copy(self.api.cert, os.path.join(d, item["path"]))
                else:
                    raise AssertionError(f"unexpected projected source {src}")
        else:
            raise AssertionError(f"unexpected volume kind {v}")
        return d

    def run_pod(self, name, namespace, uid, spec, labels=None):
        pid = self.node.run_pod(name, namespace, uid, host_network=bool(spec.get("hostNetwork")), labels=labels)
        self.pods[pid] = (uid, spec)
        return pid

    def container_config(self, pod_id, c, extra_args=()):
        pb = self.node.pb
        uid, spec = self.pods[pod_id]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        mounts = []
        for m in c.get("volumeMounts", []):
            prop = {"HostToContainer": 1, "Bidirectional": 2}.get(m.get("mountPropagation", "None"), 0)
            mounts.append(pb.Mount(container_path=m["mountPath"], host_path=self.volume(uid, volumes[m["name"]]),
                                   readonly=bool(m.get("readOnly")), propagation=prop))
        sc = c.get("securityContext", {})
        caps = dict(sc.get("capabilities", {}))
        # runc cannot give what the node itself lacks (this workplace's root has no SYS_RESOURCE in
        # its bounding set): those are left out and the test checks the agent reports them.
        caps["add"] = [n for n in caps.get("add", []) if n not in self.not_grantable]
        seccomp = sc.get("seccompProfile", spec.get("securityContext", {}).get("seccompProfile", {})).get("type")
        ctx = pb.LinuxContainerSecurityContext(
            capabilities=pb.Capability(add_capabilities=caps.get("add", []), drop_capabilities=caps.get("drop", [])),
            privileged=bool(sc.get("privileged")),
            # hostNetwork: NODE; hostPID false and no shareProcessNamespace: CONTAINER; IPC: POD
            namespace_options=pb.NamespaceOption(network=2 if spec.get("hostNetwork") else 0, pid=1, ipc=0),
            readonly_rootfs=bool(sc.get("readOnlyRootFilesystem")),
            no_new_privs=sc.get("allowPrivilegeEscalation") is False,
            masked_paths=MASKED_PATHS, readonly_paths=self.readonly_paths,
            # the kubelet's default without a profile is Unconfined
            seccomp=pb.SecurityProfile(profile_type=0 if seccomp == "RuntimeDefault" else 1))
        if "runAsUser" in sc:
            ctx.run_as_user.value = sc["runAsUser"]
        limit = c.get("resources", {}).get("limits", {}).get("memory")
        envs = [pb.KeyValue(key=e["name"], value=e["value"]) for e in c.get("env", [])]
        # The service links the kubelet gives every container (the API of this test's "cluster").
        envs += [pb.KeyValue(key="KUBERNETES_SERVICE_HOST", value="127.0.0.1"),
                 pb.KeyValue(key="KUBERNETES_SERVICE_PORT", value=str(self.api.port))]
        os.makedirs(os.path.join(self.node.dir, "logs", uid, c["name"]), exist_ok=True)
        return pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=c["name"], attempt=0),
            image=pb.ImageSpec(image=c["image"]), command=c.get("command", []),
            args=list(c.get("args", [])) + list(extra_args), envs=envs, mounts=mounts,
            log_path=f"{c['name']}/0.log",
            linux=pb.LinuxContainerConfig(
                resources=pb.LinuxContainerResources(memory_limit_in_bytes=quantity(limit) if limit else 0),
                security_context=ctx))

    def start(self, pod_id, c, extra_args=()):
        cid = self.node.create_container(pod_id, self.container_config(pod_id, c, extra_args))
        self.node.start_container(cid)
        return cid

    def run_init_containers(self, pod_id, timeout=30):
        for c in self.pods[pod_id][1].get("initContainers", []):
            cid = self.start(pod_id, c)
            st = self.node.wait_exited(cid, timeout)
            assert st.exit_code == 0, (c["name"], st.exit_code, st.reason, self.logs(pod_id, c["name"]))

    def logs(self, pod_id, name):
        p = os.path.join(self.node.dir, "logs", self.pods[pod_id][0], name, "0.log")
        return open(p).read() if os.path.exists(p) else ""

    def wait_ready(self, cid, probe, timeout=30):
        """The readiness probe, by CRI ExecSync as the kubelet runs exec probes."""
        last = []

        def ready():
            r = self.node.exec_sync(cid, probe["exec"]["command"], timeout=probe.get("timeoutSeconds", 1))
            last[:] = [r.exit_code, r.stdout, r.stderr]
            return r.exit_code == 0

        try:
            wait_for("the readiness probe", ready, timeout, interval=0.2)
        except AssertionError as e:
            raise AssertionError(f"{e}: last probe {last}") from None


def loaded_plugins(node):
    """The plugin types of the pod network containerd has loaded (its last network; the first is lo)."""
    nets = node.cni_config().get("Networks") or []
    return [p["Network"]["type"] for p in nets[-1]["Config"]["Plugins"]] if len(nets) > 1 else []


def caps_of(pid):
    st = {k: v.strip() for k, v in (line.split(":", 1) for line in open(f"/proc/{pid}/status"))}
    return {k: int(st[k], 16) for k in ("CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb")}, st


def mask(names):
    return sum(1 << CAP_BITS[n] for n in names)


def tables(netns_name):
    """Rules (v4, v6) and routes outside the main/local tables in a netns."""
    rules = [r for fam in ("-4", "-6") for r in json.loads(
        run(["ip", "-j", fam, "-n", netns_name, "rule", "show"]).stdout)]
    routes = [r for fam in ("-4", "-6") for r in json.loads(
        run(["ip", "-j", fam, "-n", netns_name, "route", "show", "table", "all"]).stdout)
        if r.get("table") not in (None, "main", "local")]
    return rules, routes


# A fresh netns: IPv4 has local/main/default, IPv6 local/main.
DEFAULT_RULES = sorted([("0", "local"), ("32766", "main"), ("32767", "default"), ("0", "local"), ("32766", "main")])


def rule_keys(rules):
    return sorted((str(r.get("priority")), r.get("table")) for r in rules)


def accept_local(ns_path):
    return run(["nsenter", f"--net={ns_path}", "cat", "/proc/sys/net/ipv4/conf/eth0/accept_local"]).stdout.strip()


def netns_ino(path):
    return os.stat(path).st_ino


def links_in(path):
    """BPF links attached in the netns at path: sk_lookup (by netns_ino) and tc/xdp (bpftool net).
    (This bpftool lists no tcx: the guards' tcx links are checked by the ids of their pins.)"""
    ino = netns_ino(path)
    ids = {link["id"] for link in nstest.bpftool_json("link", "show") or [] if link.get("netns_ino") == ino}
    net = json.loads(run(["nsenter", f"--net={path}", "bpftool", "-j", "net", "show"]).stdout or "[]")
    for section in net:
        for kind in ("tc", "tcx", "xdp"):
            for e in section.get(kind, []):
                ids.add(e.get("link_id") or e.get("id") or json.dumps(e, sort_keys=True))
    return ids


class Load:
    """netsteer_loadgen from one pod netns to an address, on its own thread."""

    def __init__(self, ns_path, ip, rate, streams, seconds, procs):
        self.p = subprocess.Popen(["nsenter", f"--net={ns_path}", nstest.LOADGEN, "client", ip, str(LOAD_PORT),
                                   str(rate), str(streams), str(seconds)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        procs.append(self.p)
        self.out = None
        self.t = threading.Thread(target=self._wait)
        self.t.start()

    def _wait(self):
        self.out = self.p.communicate()

    def result(self, timeout):
        self.t.join(timeout)
        assert not self.t.is_alive(), "load did not finish"
        assert self.p.returncode == 0, self.out
        return json.loads(self.out[0])



@pytest.fixture(scope="module")
def image_tar():
    """The image, built offline from the build tree by scripts/image.sh (once for the module)."""
    d = tempfile.mkdtemp(prefix="netsteer-image-")
    try:
        tar = os.path.join(d, "netsteer-image.tar")
        out = run(["bash", os.path.join(REPO, "scripts", "image.sh"), nstest.BUILD, tar], timeout=300).stdout
        yield tar, out
    finally:
        shutil.rmtree(d, ignore_errors=True)


class Cluster:
    """One node of a cluster: containerd (cri_harness) with a bridge chain and no netsteer, the
    image imported, a fresh bpffs, a Kubernetes API (fake_kube_api) reachable from the node's
    network, and a Kubelet running the parsed manifests. Everything is removed at close()."""

    def __init__(self, tar):
        self.docs = manifests()
        self.ds = self.docs[("DaemonSet", "netsteer")]["spec"]["template"]["spec"]
        self.uninstall = self.docs[("DaemonSet", "netsteer-uninstall")]["spec"]["template"]["spec"]
        self.agent_c = next(c for c in self.ds["containers"] if c["name"] == "netsteerd")
        self.image_ref = self.agent_c["image"]
        self.root = tempfile.mkdtemp(prefix="netsteer-ds-")
        self.bpffs = os.path.join(self.root, "sys", "fs", "bpf")
        self.procs, self.node, self.api, self.bpffs_mounted = [], None, None, False
        try:
            self._start(tar)
        except BaseException:
            self.close()
            raise

    def _start(self, tar):
        from fake_kube_api import FakeKubeApi
        self.node = node = cri_harness.Node(None)
        os.makedirs(self.bpffs)
        run(["mount", "-t", "bpf", "bpffs", self.bpffs])
        self.bpffs_mounted = True
        run(["mount", "--make-shared", self.bpffs])  # HostToContainer propagation needs a shared source
        self.original_conflist = open(node.conflist).read()
        node.import_image(tar)
        self.api = in_netns(node.node.path, FakeKubeApi)
        self.api.port = self.api.server.server_address[1]
        self.kubelet = Kubelet(node, self.root, self.bpffs, self.api, {})
        # The plugin reads these netconf paths on the node, where / is self.root.
        netconf = json.loads(self.docs[("ConfigMap", "netsteer-cni-config")]["data"]["netconf.json"])
        for k in ("socketPath", "logFile"):
            netconf[k] = self.kubelet.node_path(netconf[k])
        self.kubelet.configmaps["netsteer-cni-config"] = {"netconf.json": json.dumps(netconf)}
        agent_socket = next(a.split("=", 1)[1] for a in self.agent_c["command"] if a.startswith("--socket="))
        self.socket = self.kubelet.node_path(agent_socket)
        assert netconf["socketPath"] == self.socket, "the ConfigMap's socketPath is not the agent's --socket"
        pin_root = next(a.split("=", 1)[1] for a in self.agent_c["command"] if a.startswith("--pin-root="))
        self.pins = self.kubelet.node_path(pin_root)
        self.installed = os.path.join(node.bin_dir, "netsteer-cni")

    def ctl(self, *args):
        return json.loads(run([nstest.NETSTEERCTL, "--socket", self.socket] + list(args)).stdout)

    def logs(self, pod):
        return self.kubelet.logs(pod, "netsteerd")

    def roll_in(self, n, extra_args=()):
        """Agent pod generation n: its init container (the installer), then netsteerd, Ready."""
        uid = f"00000000-0000-4000-8000-00000000a{n:03d}"
        pod = self.kubelet.run_pod(f"netsteer-{n}", "netsteer-system", uid, self.ds)
        before = open(self.node.conflist).read()
        self.kubelet.run_init_containers(pod)
        if n > 1:
            assert open(self.node.conflist).read() == before, "a second install changed the conflist"
        cid = self.kubelet.start(pod, self.agent_c, extra_args)
        self.kubelet.wait_ready(cid, self.agent_c["readinessProbe"])
        return pod, cid

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        if self.node is not None:
            self.node.close()
        if self.api is not None:
            self.api.close()
        if self.bpffs_mounted:
            run(["umount", "-l", self.bpffs], check=False)
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def cluster(image_tar):
    c = Cluster(image_tar[0])
    try:
        yield c
    finally:
        c.close()


def test_daemonset_image_install_upgrade_uninstall(image_tar):
    tar, built = image_tar
    t0 = time.time()
    timings = {}
    with cluster(image_tar) as c:
        node, kubelet, api, ds, agent_c = c.node, c.kubelet, c.api, c.ds, c.agent_c
        uninstall, pins, procs = c.uninstall, c.pins, c.procs
        # 1. The image: offline, tagged as the manifests' image, imported, known to the CRI.
        assert f"{c.image_ref} -> {tar}" in built, built
        assert all(x["image"] == c.image_ref for x in ds["containers"] + ds["initContainers"]
                   + uninstall["containers"] + uninstall["initContainers"])
        img = node.image_status(c.image_ref)
        assert c.image_ref in img.repo_tags and img.uid.value == 0, img
        assert loaded_plugins(node) == ["bridge"]  # no netsteer on the node yet
        timings["node"] = time.time() - t0

        # 2. Agent pod, generation 1: the installer chains netsteer-cni, then netsteerd is Ready.
        pod1, agent1 = c.roll_in(1)
        chain = json.load(open(node.conflist))
        assert [p["type"] for p in chain["plugins"]] == ["bridge", "netsteer-cni"], chain
        assert chain["plugins"][-1]["socketPath"] == c.socket
        assert os.path.isfile(c.installed) and not os.path.islink(c.installed)
        assert "supportedVersions" in run([c.installed], input='{"cniVersion":"1.0.0"}',
                                          env={"CNI_COMMAND": "VERSION"}).stdout
        # containerd reloads its CNI config on change: pods from now on go through netsteer-cni.
        wait_for("containerd to load the chained conflist",
                 lambda: loaded_plugins(node) == ["bridge", "netsteer-cni"], 10)
        timings["agent"] = time.time() - t0

        # The container got exactly what the manifest lists, and the agent runs inside it.
        st, info = node.container_status(agent1)
        assert st.state == 1, (st, c.logs(pod1))
        hpid = info["pid"]
        caps, status = caps_of(hpid)
        listed = agent_c["securityContext"]["capabilities"]["add"]
        want = mask(n for n in listed if n not in kubelet.not_grantable)
        assert caps["CapBnd"] == want and caps["CapEff"] == want and caps["CapAmb"] == 0, (caps, want)
        log1 = c.logs(pod1)
        for n in kubelet.not_grantable:
            assert f"CAP_{n}" in log1.split("not held:", 1)[1].split("\n", 1)[0], log1[:3000]
        assert status["Uid"].split()[0] == "0" and status["NoNewPrivs"] == "1" and status["Seccomp"] == "2", status
        root_mount = next(line.split() for line in open(f"/proc/{hpid}/mountinfo") if line.split()[4] == "/")
        assert "ro" in root_mount[5].split(","), root_mount
        assert os.readlink(f"/proc/{hpid}/exe") == "/usr/local/bin/netsteerd"
        assert os.readlink(f"/proc/{hpid}/ns/net") == os.readlink(f"/proc/{node.proc.pid}/ns/net")  # host network
        status1 = c.ctl("status", "--json")
        assert status1["kube_api"] == f"https://127.0.0.1:{api.port}"
        # RuntimeDefault lets unshare(2) through with SYS_ADMIN: the static keys are held.
        assert status1["static_keys"] and len(status1["static_keys"]["links"]) >= 1, log1[:3000]

        # 3. Application pods: enrolled with their identity (names from the CRI, labels from the API).
        apps = {"web-0": "11111111-aaaa-4000-8000-000000000001", "client-0": "22222222-bbbb-4000-8000-000000000002",
                "skip-0": "33333333-cccc-4000-8000-000000000003"}
        api.pods[f"{NS}/web-0"] = {"app": "web"}
        api.pods[f"{NS}/client-0"] = {"app": "client"}
        api.pods[f"{NS}/skip-0"] = {"app": "skip", "netsteer.io/capture": "disabled"}
        ids = {name: node.run_pod(name, NS, uid) for name, uid in apps.items()}
        # `kubectl exec ds/netsteer -- netsteerctl list`, as deploy/README.md shows it
        listed = json.loads(node.exec_sync(agent1, ["netsteerctl", "--socket=/var/run/netsteer/cni.sock", "list",
                                                    "--json"]).stdout)
        enrolled = {p["uid"]: p for p in listed}
        assert set(enrolled) == {apps["web-0"], apps["client-0"]}, listed  # skip-0: excluded by its label
        assert any(p.endswith(f"/{NS}/pods/skip-0") and auth == f"Bearer {api.token}" for p, auth in api.requests)
        nets = {}
        for name in ("web-0", "client-0"):
            st, netns = node.status(ids[name])
            p = enrolled[apps[name]]
            assert (p["name"], p["namespace"], p["ips"], p["netns_path"]) == (name, NS, [st.network.ip], netns), p
            assert os.listdir(os.path.join(pins, apps[name])), "no pins on the node's bpffs"
            nets[name] = (netns, st.network.ip)
        web_ns, web_ip = nets["web-0"]
        cli_ns, cli_ip = nets["client-0"]
        srv = subprocess.Popen(["nsenter", f"--net={web_ns}", nstest.PY, os.path.join(nstest.LIB, "peer_server.py"),
                                str(APP)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(srv)
        assert srv.stdout.readline().strip() == "ready"

        def peer(ns_path, host):
            return run(["nsenter", f"--net={ns_path}", nstest.PY, os.path.join(nstest.LIB, "peer_client.py"), host,
                        str(APP), "peer"], timeout=60).stdout.strip()

        def opened(uid, d):
            return c.ctl("inspect", "--uid", uid, "--json")["relay"][d]["opened"]

        out0, in0 = opened(apps["client-0"], "outbound"), opened(apps["web-0"], "inbound")
        assert peer(cli_ns, web_ip).split()[0] == cli_ip  # the app sees the client pod's own address
        assert (opened(apps["client-0"], "outbound"), opened(apps["web-0"], "inbound")) == (out0 + 1, in0 + 1)
        assert peer(node.node.path, web_ip).split()[0] == node.gateway  # node -> pod, inbound capture
        assert opened(apps["web-0"], "inbound") == in0 + 2
        timings["pods"] = time.time() - t0

        # 4. Rolling update as declared (maxSurge 1 + --takeover) under load: zero failures.
        strategy = c.docs[("DaemonSet", "netsteer")]["spec"]["updateStrategy"]["rollingUpdate"]
        assert (strategy["maxSurge"], strategy["maxUnavailable"]) == (1, 0) and "--takeover" in agent_c["command"]
        echo = subprocess.Popen(["nsenter", f"--net={web_ns}", nstest.LOADGEN, "server", str(LOAD_PORT)],
                                stdout=subprocess.PIPE, text=True)
        procs.append(echo)
        assert echo.stdout.readline().strip() == "ready"

        def pin_ids(uid):
            d = os.path.join(pins, uid)
            return {n: nstest.bpftool_json("link" if n.startswith("link") else "prog", "show", "pinned",
                                           os.path.join(d, n))["id"]
                    for n in sorted(os.listdir(d)) if n.startswith(("link", "prog"))}

        ids_before = {u: pin_ids(u) for u in (apps["web-0"], apps["client-0"])}
        streams, rate, seconds = 10, 100, 10
        in_before = opened(apps["web-0"], "inbound")
        load = Load(cli_ns, web_ip, rate, streams, seconds, procs)
        wait_for("the load's streams", lambda: opened(apps["web-0"], "inbound") >= in_before + streams, 10)
        pod2, agent2 = c.roll_in(2)
        wait_for("the old agent to hand over", lambda: "handed over to the new agent" in c.logs(pod1), 10)
        # The new pod is Ready: the DaemonSet controller deletes the old one and the kubelet stops
        # it with the pod's grace period. The SIGTERM does not cut the drain: it exits by itself
        # once its connections (the streams opened before the hand-over) have ended.
        grace = min(ds["terminationGracePeriodSeconds"], 120)
        stopper = threading.Thread(target=node.stop_container, args=(agent1, grace))
        stopper.start()
        res = load.result(seconds + 60)
        stopper.join(grace + 30)
        assert not stopper.is_alive()
        st1, _ = node.container_status(agent1)
        log1 = c.logs(pod1)
        assert st1.state == 2 and st1.exit_code == 0, (st1, log1[-3000:])
        assert (st1.finished_at - st1.started_at) / 1e9 < grace  # it exited by itself, no SIGKILL
        assert res["short_failed"] == 0 and res["streams_broken"] == 0, (res, log1[-3000:])
        assert res["streams_ok"] == streams and res["short_ok"] >= rate * seconds * 0.9, res
        drained = [int(n) for n in re.findall(r"draining (\d+) connections", log1)]
        assert drained and drained[0] >= 2 * streams, (drained, log1[-3000:])  # it carried the streams
        assert "draining goes on" in log1, log1[-3000:]  # the SIGTERM arrived mid-drain
        log2 = c.logs(pod2)
        assert "received 2 pods" in log2 and "metrics on http://127.0.0.1:15020" in log2, log2[-3000:]
        node.remove_pod(pod1)
        assert {u: pin_ids(u) for u in ids_before} == ids_before, "links/programs were replaced, not kept"
        assert peer(cli_ns, web_ip).split()[0] == cli_ip
        timings["upgrade"] = time.time() - t0

        # 5. Removing a pod unenrols it (CNI DEL through the installed plugin).
        for p in (srv, echo):
            p.kill()
            p.wait()
        node.remove_pod(ids.pop("web-0"))
        assert [p["uid"] for p in c.ctl("list", "--json")] == [apps["client-0"]]
        assert not os.path.exists(os.path.join(pins, apps["web-0"]))

        # 6. Uninstall, as deploy/README.md says: a last roll gives the agents --cleanup-on-exit,
        #    uninstall.yaml takes netsteer-cni out of the CNI config, deleting the DaemonSet stops
        #    the agents, which remove every pod's capture.
        cli_links = links_in(cli_ns) | set(pin_ids(apps["client-0"]).values())
        assert cli_links, "no BPF links in the client pod"
        assert accept_local(cli_ns) == "1"
        pod3, agent3 = c.roll_in(3, ["--cleanup-on-exit"])
        wait_for("the hand-over to generation 3", lambda: "handed over to the new agent" in c.logs(pod2), 10)
        node.stop_container(agent2, 60)
        st2, _ = node.container_status(agent2)
        assert st2.exit_code == 0, c.logs(pod2)[-3000:]
        node.remove_pod(pod2)

        upod = kubelet.run_pod("netsteer-uninstall-1", "netsteer-system", "00000000-0000-4000-8000-0000000000ff",
                               uninstall)
        kubelet.run_init_containers(upod)
        assert json.load(open(node.conflist)) == json.loads(c.original_conflist), open(node.conflist).read()
        assert not os.path.exists(c.installed)
        done_c = uninstall["containers"][0]
        done = kubelet.start(upod, done_c)
        wait_for("containerd to drop netsteer-cni from its CNI config", lambda: loaded_plugins(node) == ["bridge"], 10)
        st, info = node.container_status(done)
        assert st.state == 1, (st, kubelet.logs(upod, done_c["name"]))
        assert caps_of(info["pid"])[0]["CapEff"] == 0

        node.stop_container(agent3, 60)
        st3, _ = node.container_status(agent3)
        assert st3.exit_code == 0, c.logs(pod3)[-3000:]
        node.remove_pod(pod3)
        # Nothing left: no pins, links, rules, routes or changed sysctls, in the pod or on the node.
        # (a fresh bpffs shows the kernel's maps.debug/progs.debug iterators at its root)
        left = [os.path.join(d, f) for d, _, fs in os.walk(c.bpffs) for f in fs
                if d != c.bpffs or f not in ("maps.debug", "progs.debug")]
        assert left == [], left
        assert not links_in(cli_ns), links_in(cli_ns)
        existing = {link["id"] for link in nstest.bpftool_json("link", "show") or []}
        assert not (cli_links & existing), cli_links & existing
        for ns_name in (os.path.basename(cli_ns), node.node.name):
            rules, routes = tables(ns_name)
            assert rule_keys(rules) == DEFAULT_RULES and routes == [], (ns_name, rules, routes)
        assert accept_local(cli_ns) == "0"
        # The node is as before netsteer: a new pod starts without it (failurePolicy=fail would
        # refuse it if netsteer-cni were still chained, with no agent left).
        later = node.run_pod("later-0", NS, "44444444-dddd-4000-8000-000000000004")
        node.remove_pod(later)
        t_stop = time.time()
        node.stop_container(done, 30)
        assert time.time() - t_stop < 10, "the uninstall pod's container ignored SIGTERM"
        node.remove_pod(upod)
        node.remove_pod(ids.pop("client-0"))
        node.remove_pod(ids.pop("skip-0"))
        timings["uninstall"] = time.time() - t0
        print("timings (s from the image built):", {k: round(v, 1) for k, v in timings.items()})
