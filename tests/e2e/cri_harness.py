"""A private containerd (own root, state, socket, CNI dirs) in its own "node" netns, a pause image
made from busybox-static, and a minimal CRI client (tests/e2e/cri_min.proto) — enough to create
and delete real pods and containers the way the kubelet does, so the CNI chain gets real K8S_*
args and images run under runc as they would on a node."""
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

import nstest

HERE = os.path.dirname(os.path.abspath(__file__))
PAUSE = "netsteer.test/pause:1"


def _grpc_modules(outdir):
    os.makedirs(outdir, exist_ok=True)
    subprocess.run([nstest.PY, "-m", "grpc_tools.protoc", "-I", HERE, f"--python_out={outdir}",
                    f"--grpc_python_out={outdir}", os.path.join(HERE, "cri_min.proto")], check=True)
    sys.path.insert(0, outdir)
    import cri_min_pb2  # noqa: E402
    import cri_min_pb2_grpc  # noqa: E402
    return cri_min_pb2, cri_min_pb2_grpc


def _blob(d, data):
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(d, "blobs", "sha256", digest), "wb") as f:
        f.write(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def pause_image_tar(path):
    """An OCI layout with one layer holding busybox-static; the entrypoint sleeps."""
    with tempfile.TemporaryDirectory() as d:
        os.makedirs(os.path.join(d, "blobs", "sha256"))
        layer = io.BytesIO()
        with tarfile.open(fileobj=layer, mode="w") as t:
            for dname in ("bin", "etc", "proc", "sys", "dev", "tmp"):
                ti = tarfile.TarInfo(dname)
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                t.addfile(ti)
            t.add("/bin/busybox", arcname="bin/busybox")
        layer = layer.getvalue()
        ldesc = _blob(d, layer)
        config = {"architecture": "amd64", "os": "linux",
                  "config": {"Entrypoint": ["/bin/busybox", "sleep", "2147483647"]},
                  "rootfs": {"type": "layers", "diff_ids": [ldesc["digest"]]}}
        cdesc = _blob(d, json.dumps(config).encode())
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": dict(cdesc, mediaType="application/vnd.oci.image.config.v1+json"),
                    "layers": [dict(ldesc, mediaType="application/vnd.oci.image.layer.v1.tar")]}
        mdesc = _blob(d, json.dumps(manifest).encode())
        index = {"schemaVersion": 2, "manifests": [dict(
            mdesc, mediaType="application/vnd.oci.image.manifest.v1+json",
            annotations={"io.containerd.image.name": PAUSE, "org.opencontainers.image.ref.name": "1"})]}
        with open(os.path.join(d, "index.json"), "w") as f:
            json.dump(index, f)
        with open(os.path.join(d, "oci-layout"), "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)
        with tarfile.open(path, "w") as t:
            for name in ("oci-layout", "index.json", "blobs"):
                t.add(os.path.join(d, name), arcname=name)


class Node:
    """containerd + CNI chain (bridge + host-local + netsteer-cni) in a private node netns.
    With agent_socket=None the chain is bridge + host-local alone and no netsteer-cni is in the
    CNI bin dir: what a node looks like before netsteer's installer ran."""

    def __init__(self, agent_socket, failure_policy="fail"):
        self.dir = tempfile.mkdtemp(prefix="netsteer-e2e-")
        self.node = nstest.Netns(nstest.unique("node"))
        self.proc = None
        self.pods = []
        self.pod_configs = {}
        self.pod_netns = {}
        self.containers = []
        self.channel = None
        self.log = None
        try:
            self._start(agent_socket, failure_policy)
        except BaseException:
            self.close()
            raise

    def _start(self, agent_socket, failure_policy):
        s = 100 + os.getpid() % 150
        self.subnet = f"10.{s}.7.0/24"
        self.gateway = f"10.{s}.7.1"
        self.bridge = f"nsbr{os.getpid() % 100000}"
        self.sock = os.path.join(self.dir, "containerd.sock")
        self.cni_log = os.path.join(self.dir, "netsteer-cni.log")
        self.bin_dir = bin_dir = os.path.join(self.dir, "cni", "bin")
        self.conf_dir = conf_dir = os.path.join(self.dir, "cni", "net.d")
        os.makedirs(bin_dir)
        os.makedirs(conf_dir)
        for p in ("bridge", "host-local", "loopback"):
            os.symlink(f"/usr/lib/cni/{p}", os.path.join(bin_dir, p))
        if agent_socket is not None:
            os.symlink(nstest.NETSTEER_CNI, os.path.join(bin_dir, "netsteer-cni"))
        self.conflist = os.path.join(conf_dir, "10-netsteer-e2e.conflist")
        self.write_conflist(agent_socket, failure_policy)
        cfg = os.path.join(self.dir, "config.toml")
        with open(cfg, "w") as f:
            f.write(f"""version = 2
root = "{self.dir}/root"
state = "{self.dir}/state"
plugin_dir = "{self.dir}/plugins"
[grpc]
  address = "{self.sock}"
[ttrpc]
  address = "{self.sock}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{self.dir}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin_dir}"
    conf_dir = "{conf_dir}"
    max_conf_num = 1
""")
        self.log = open(os.path.join(self.dir, "containerd.log"), "w")
        self.proc = subprocess.Popen(["nsenter", f"--net={self.node.path}", "containerd", "--config", cfg],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None or time.time() > deadline:
                raise AssertionError("containerd did not start:\n" + self.logs())
            time.sleep(0.05)
        tar = os.path.join(self.dir, "pause.tar")
        pause_image_tar(tar)
        nstest.run(["ctr", "-a", self.sock, "-n", "k8s.io", "images", "import", tar])
        import grpc
        self.pb, pbg = _grpc_modules(os.path.join(self.dir, "gen"))
        self.channel = grpc.insecure_channel(f"unix://{self.sock}")
        self.rt = pbg.RuntimeServiceStub(self.channel)
        self.images = pbg.ImageServiceStub(self.channel)
        self.rt.Version(self.pb.VersionRequest(version="v1"), timeout=10)

    def write_conflist(self, agent_socket, failure_policy):
        conf = {"cniVersion": "1.0.0", "name": "netsteer-e2e", "plugins": [
            {"type": "bridge", "bridge": self.bridge, "isGateway": True, "ipMasq": False,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": self.subnet}]],
                      "dataDir": os.path.join(self.dir, "ipam")}}]}
        if agent_socket is not None:
            conf["plugins"].append({"type": "netsteer-cni", "socketPath": agent_socket, "failurePolicy": failure_policy,
                                    "timeoutMs": 5000, "logFile": self.cni_log})
        with open(self.conflist, "w") as f:
            json.dump(conf, f)

    def import_image(self, tar):
        """ctr import into the CRI namespace (what a pull would leave); returns CRI's view of it."""
        nstest.run(["ctr", "-a", self.sock, "-n", "k8s.io", "images", "import", tar], timeout=120)

    def logs(self):
        with open(os.path.join(self.dir, "containerd.log")) as f:
            return f.read()[-4000:]

    def cni_config(self):
        """The CNI network config containerd has loaded (it reloads the conf dir on change)."""
        r = self.rt.Status(self.pb.StatusRequest(verbose=True), timeout=30)
        return json.loads(r.info.get("cniconfig", "{}"))

    def image_status(self, ref):
        return self.images.ImageStatus(self.pb.ImageStatusRequest(image=self.pb.ImageSpec(image=ref)),
                                       timeout=30).image

    def run_pod(self, name, namespace, uid, host_network=False, labels=None):
        """A pod sandbox; host_network: NamespaceMode NODE for the network (the node netns)."""
        cfg = self.pb.PodSandboxConfig(
            metadata=self.pb.PodSandboxMetadata(name=name, namespace=namespace, uid=uid, attempt=0),
            hostname="" if host_network else name, log_directory=os.path.join(self.dir, "logs", uid),
            labels=labels or {},
            linux=self.pb.LinuxPodSandboxConfig(security_context=self.pb.LinuxSandboxSecurityContext(
                namespace_options=self.pb.NamespaceOption(network=2 if host_network else 0, pid=0, ipc=0))))
        r = self.rt.RunPodSandbox(self.pb.RunPodSandboxRequest(config=cfg), timeout=60)
        self.pods.append(r.pod_sandbox_id)
        self.pod_configs[r.pod_sandbox_id] = cfg
        if not host_network:
            self.pod_netns[r.pod_sandbox_id] = self.status(r.pod_sandbox_id)[1]
        return r.pod_sandbox_id

    def create_container(self, pod_id, config):
        """CreateContainer with the pod's own sandbox config (as the kubelet passes it)."""
        r = self.rt.CreateContainer(self.pb.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=config, sandbox_config=self.pod_configs[pod_id]), timeout=60)
        self.containers.append(r.container_id)
        return r.container_id

    def start_container(self, cid):
        self.rt.StartContainer(self.pb.StartContainerRequest(container_id=cid), timeout=60)

    def container_status(self, cid):
        """(ContainerStatus, info dict: pid, runtimeSpec, ...)."""
        r = self.rt.ContainerStatus(self.pb.ContainerStatusRequest(container_id=cid, verbose=True), timeout=30)
        return r.status, json.loads(r.info.get("info", "{}"))

    def wait_exited(self, cid, timeout):
        deadline = time.time() + timeout
        while True:
            st, _ = self.container_status(cid)
            if st.state == 2:  # CONTAINER_EXITED
                return st
            if time.time() > deadline:
                raise AssertionError(f"container {st.metadata.name} still in state {st.state} after {timeout} s")
            time.sleep(0.05)

    def exec_sync(self, cid, cmd, timeout=10):
        return self.rt.ExecSync(self.pb.ExecSyncRequest(container_id=cid, cmd=cmd, timeout=timeout),
                                timeout=timeout + 10)

    def stop_container(self, cid, timeout):
        """SIGTERM, then SIGKILL after `timeout` seconds (the kubelet's grace period)."""
        self.rt.StopContainer(self.pb.StopContainerRequest(container_id=cid, timeout=timeout), timeout=timeout + 30)

    def remove_container(self, cid):
        self.rt.RemoveContainer(self.pb.RemoveContainerRequest(container_id=cid), timeout=60)
        if cid in self.containers:
            self.containers.remove(cid)

    def status(self, pod_id):
        r = self.rt.PodSandboxStatus(self.pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True),
                                     timeout=30)
        info = json.loads(r.info.get("info", "{}"))
        netns = next((n.get("path") for n in info.get("runtimeSpec", {}).get("linux", {}).get("namespaces", [])
                      if n.get("type") == "network"), None)
        return r.status, netns

    def remove_pod(self, pod_id):
        """StopPodSandbox (stops its containers at once, CNI DEL) and RemovePodSandbox."""
        self.rt.StopPodSandbox(self.pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
        self.rt.RemovePodSandbox(self.pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
        if pod_id in self.pods:
            self.pods.remove(pod_id)
        self.containers = [c for c in self.containers if self._exists(c)]

    def _exists(self, cid):
        try:
            self.container_status(cid)
            return True
        except Exception:  # noqa: BLE001 - NotFound once the pod took it
            return False

    def close(self):
        try:
            for c in list(self.containers):
                try:
                    self.stop_container(c, 0)
                    self.remove_container(c)
                except Exception:  # noqa: BLE001 - best effort; the pods are removed next
                    pass
            for p in list(self.pods):
                try:
                    self.remove_pod(p)
                except Exception:  # noqa: BLE001 - best effort; containerd is stopped next
                    pass
            if self.proc and self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(20)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            # Shims we caused (they outlive containerd) are found by our socket in their cmdline,
            # container processes by their root (a rootfs under our state dir).
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        cmd = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
                        root = os.readlink(f"/proc/{pid}/root")
                    except OSError:
                        continue
                    if ("containerd-shim" in cmd and self.sock in cmd) or root.startswith(self.dir + "/"):
                        subprocess.run(["kill", "-9", pid], check=False)
            # Pod netns containerd made and could not remove (it was stopped first).
            for path in self.pod_netns.values():
                if path and os.path.exists(path):
                    subprocess.run(["umount", path], check=False, capture_output=True)
                    try:
                        os.unlink(path)
                    except OSError:
                        pass
            # containerd leaves its snapshot mounts and runc state; unmount what is under our dir.
            for line in reversed(open("/proc/mounts").read().splitlines()):
                mnt = line.split()[1]
                if mnt.startswith(self.dir):
                    subprocess.run(["umount", "-l", mnt], check=False)
            if self.channel is not None:
                self.channel.close()
            if self.log is not None:
                self.log.close()
            self.node.close()
            shutil.rmtree(self.dir, ignore_errors=True)
