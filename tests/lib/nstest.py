"""Shared helpers for netsteer's privileged and e2e tests (real network namespaces, root).

Every namespace, veth, process and file a test creates is tracked and removed, even on failure.
Under CI=true a test that cannot run (not root, a tool missing) FAILS instead of skipping.
"""
import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time

import pytest

BUILD = os.environ.get("NETSTEER_BUILD") or os.path.join(os.path.dirname(__file__), "..", "..", "build")
NETSTEERD = os.path.join(BUILD, "netsteerd")
NETSTEERCTL = os.path.join(BUILD, "netsteerctl")
NETSTEER_CNI = os.path.join(BUILD, "netsteer-cni")
LOADGEN = os.path.join(BUILD, "tests", "netsteer_loadgen")


def require_root():
    """Fail under CI, skip elsewhere, when we are not root."""
    if os.geteuid() != 0:
        msg = "privileged test needs root (real network namespaces)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg + " and CI=true: refusing to skip")
        pytest.skip(msg)
    for b in (NETSTEERD, NETSTEERCTL, NETSTEER_CNI):
        if not os.access(b, os.X_OK):
            pytest.fail(f"{b} not built")


def require_tool(tool):
    """Fail under CI, skip elsewhere, when a tool the test needs is not installed."""
    if shutil.which(tool) is None and not os.access(tool, os.X_OK):
        msg = f"{tool} is not installed (scripts/setup.sh installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg + " and CI=true: refusing to skip")
        pytest.skip(msg)


def run(cmd, check=True, **kw):
    """Run a command (list or string), returning CompletedProcess with text output."""
    shell = isinstance(cmd, str)
    p = subprocess.run(cmd, shell=shell, capture_output=True, text=True, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"command failed ({p.returncode}): {cmd}\nstdout: {p.stdout}\nstderr: {p.stderr}")
    return p


_counter = [0]


def unique(prefix):
    _counter[0] += 1
    return f"{prefix}{os.getpid() % 100000}x{_counter[0]}"


class Netns:
    """A named netns under /var/run/netns, removed on close."""

    def __init__(self, name=None, lo_up=True):
        self.name = name or unique("nst")
        run(["ip", "netns", "add", self.name])
        self.path = f"/var/run/netns/{self.name}"
        if lo_up:
            self.ip("link set lo up")

    def ip(self, args, check=True):
        return run(["ip", "-n", self.name] + args.split(), check=check)

    def exec(self, cmd, check=True, **kw):
        """Run a command inside the netns via nsenter (keeps /sys and bpffs visible)."""
        if isinstance(cmd, str):
            cmd = ["sh", "-c", cmd]
        return run(["nsenter", f"--net={self.path}"] + cmd, check=check, **kw)

    def popen(self, cmd, **kw):
        if isinstance(cmd, str):
            cmd = ["sh", "-c", cmd]
        return subprocess.Popen(["nsenter", f"--net={self.path}"] + cmd, **kw)

    def listening_ports(self):
        """{port: process names} of TCP listeners in the netns, from ss."""
        out = self.exec(["ss", "-Htlnp"]).stdout
        res = {}
        for line in out.splitlines():
            parts = line.split()
            local = parts[3]
            port = int(local.rsplit(":", 1)[1])
            res.setdefault(port, set()).add(line.split("users:", 1)[1] if "users:" in line else "")
        return res

    def close(self):
        run(["ip", "netns", "del", self.name], check=False)


@contextlib.contextmanager
def netns(n=1, **kw):
    made = []
    try:
        for _ in range(n):
            made.append(Netns(**kw))
        yield made if n != 1 else made[0]
    finally:
        for ns in made:
            ns.close()


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def relay_pool_fds(a):
    """The fds the relay's bounded pools hold, which are not a leak: pipes (2 fds each, idle or in
    use) and spare upstream sockets (closed after 5 s unused, or with their pod)."""
    st = a.status()["relay"]
    return sum(2 * (w["pipes_idle"] + w["pipes_in_use"]) + w["upstream_spares"] for w in st)


def settled_fd_count(pid, expected, timeout=3.0):
    """The agent closes a control connection when it sees the peer's EOF, a moment after the
    reply: poll until the count reaches `expected` or the deadline passes; return the last count."""
    deadline = time.time() + timeout
    n = fd_count(pid)
    while n != expected and time.time() < deadline:
        time.sleep(0.02)
        n = fd_count(pid)
    return n


def stable_fd_count(pid, timeout=3.0):
    """The fd count once it has stopped moving (a control connection just used is closed by the
    agent when it reads the peer's EOF): four equal reads 50 ms apart, or the last read."""
    deadline = time.time() + timeout
    last, same = fd_count(pid), 0
    while same < 3 and time.time() < deadline:
        time.sleep(0.05)
        n = fd_count(pid)
        same = same + 1 if n == last else 0
        last = n
    return last


def thread_count(pid):
    return len(os.listdir(f"/proc/{pid}/task"))


SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                     "WARNING: ThreadSanitizer", "ERROR: ThreadSanitizer")


def check_sanitizer_reports(log_path):
    """Sanitizer builds (scripts/sanitize.sh): any report in an agent's log fails the test."""
    if not os.environ.get("NETSTEER_SANITIZE") or not os.path.exists(log_path):
        return
    text = open(log_path, errors="replace").read()
    for m in SANITIZER_MARKERS:
        if m in text:
            i = text.index(m)
            raise AssertionError(f"sanitizer report in {log_path}:\n{text[max(0, i - 200):i + 4000]}")


class Agent:
    """A netsteerd process of our own, on a private socket and state dir."""

    def __init__(self, extra_args=(), state_dir=None, socket_path=None, pin_root=None):
        self.dir = tempfile.mkdtemp(prefix="netsteer-test-")
        self.socket = socket_path or os.path.join(self.dir, "cni.sock")
        self.state_dir = state_dir or os.path.join(self.dir, "state")
        self.log_path = os.path.join(self.dir, "agent.log")
        self.pin_root = pin_root or f"/sys/fs/bpf/{unique('netsteer-test-')}"
        self.extra = list(extra_args)
        self.proc = None
        self.retired = []  # (process, log) of agents that handed over and drain
        self.start()

    def cmd(self):
        cmd = [NETSTEERD, "--socket", self.socket, "--log-level", "debug", "--state-dir", self.state_dir,
               "--pin-root", self.pin_root] + self.extra
        if "--metrics" not in self.extra:
            cmd += ["--metrics", "127.0.0.1:0"]  # a free port: agents of parallel runs never collide
        return cmd

    def upgrade(self, extra=(), timeout=10):
        """Hitless upgrade: a new netsteerd with --takeover on the same socket, state and pins.
        Returns the old process, which stops accepting, drains and exits on its own."""
        old = self.proc
        self.retired.append((self.proc, self.log))
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen(self.cmd() + ["--takeover"] + list(extra), stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"netsteerd --takeover exited ({self.proc.returncode}):\n{self.logs()}")
            try:
                if self.call({"type": "status", "version": 1})["status"]["pid"] == self.proc.pid:
                    return old
            except OSError:
                pass
            time.sleep(0.02)
        raise AssertionError("netsteerd --takeover did not take over:\n" + self.logs())

    def start(self):
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen(self.cmd(), stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"netsteerd exited early ({self.proc.returncode}):\n{self.logs()}")
            try:
                self.call({"type": "hello", "version": 1})
                return
            except OSError:
                time.sleep(0.02)
        raise AssertionError("netsteerd did not come up:\n" + self.logs())

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def logs(self):
        with open(self.log_path) as f:
            return f.read()

    def ctl(self, *args, check=True):
        cmd = [NETSTEERCTL, "--socket", self.socket] + list(args)
        p = run(cmd, check=False)
        if check and p.returncode != 0:
            # With the agent's side: whether it is still running, and the end of its log.
            raise AssertionError(f"command failed ({p.returncode}): {cmd}\nstdout: {p.stdout}\nstderr: {p.stderr}\n"
                                 f"agent alive: {self.alive()} (exit status {self.proc.returncode}); "
                                 f"its log ends:\n{self.logs()[-4000:]}")
        return p

    def connect(self):
        """Connect as the CNI plugin does: a blocking connect that waits out a full accept queue
        for at most 10 s (SO_SNDTIMEO), then 10 s timeouts on each call. (settimeout() before
        connect would make it non-blocking, and a unix connect then fails at once with EAGAIN
        whenever the agent is momentarily behind on accepts.)"""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 10, 0))
        s.connect(self.socket)
        s.settimeout(10)
        return s

    def call(self, msg, fds=(), raw=None):
        """Send one request (dict or raw bytes) with optional fds and return the decoded reply."""
        with contextlib.closing(self.connect()) as s:
            data = raw if raw is not None else json.dumps(msg).encode()
            if fds:
                socket.send_fds(s, [data], list(fds))
            else:
                s.send(data)
            return json.loads(s.recv(1 << 20))

    def enrol(self, ns, uid=None, wait_guard=True, **extra):
        """netsteerctl enroll; then (wait_guard) until the pod's tc guard is attached: with tcx it
        is attached after the enrol answered (--guard-attach deferred), and tests read its
        counters."""
        out = self._enrol(ns, uid, **extra)
        if wait_guard:
            self.wait_guard(uid or ns.name)
        return out

    def wait_guard(self, uid, timeout=30):
        """Until the pod's deferred tc guard is attached. Generous: a tcx attach needs rtnl, which
        network namespaces being torn down elsewhere on the host can hold for seconds (a CI run
        with other privileged tests on the machine saw one wait over 10 s)."""
        deadline = time.time() + timeout
        while True:
            j = json.loads(self.ctl("inspect", "--uid", uid, "--json", check=False).stdout or "null")
            guard = ((j or {}).get("capture") or {}).get("guard")
            if guard in (None, "attached"):  # None: no capture (e.g. --capture none) or not enrolled
                return guard
            if time.time() > deadline:
                raise AssertionError(f"pod {uid}: tc guard still {guard} after {timeout} s")
            time.sleep(0.01)

    def _enrol(self, ns, uid=None, **extra):
        args = ["enroll", "--netns", ns.path, "--uid", uid or ns.name]
        for k, v in extra.items():
            flag = "--" + k.replace("_", "-")
            if v is True:
                args.append(flag)
            elif isinstance(v, (list, tuple)):
                for item in v:
                    args += [flag, str(item)]
            else:
                args += [flag, str(v)]
        return self.ctl(*args)

    def pods(self):
        return json.loads(self.ctl("list", "--json").stdout)

    def status(self):
        return json.loads(self.ctl("status", "--json").stdout)

    def wait_settled(self, timeout=10):
        """Wait until the agent is done loading the next pod's BPF programs ahead of time (it
        starts after each enrol, on another thread, and holds ~a dozen fds while it runs) and has
        attached every deferred tc guard (another thread, after the enrol's reply; it holds fds
        too)."""
        deadline = time.time() + timeout
        while (st := self.status())["bpf_spare"] == "loading" or st.get("guards_pending", 0):
            if time.time() > deadline:
                raise AssertionError(f"the agent is not settled: spare BPF {st['bpf_spare']}, "
                                     f"{st.get('guards_pending', 0)} tc guard(s) pending")
            time.sleep(0.02)
        return st["bpf_spare"]

    def inspect(self, uid):
        return json.loads(self.ctl("inspect", "--uid", uid, "--json").stdout)

    def restart(self):
        self.start()

    def cleanup_pins(self):
        """Remove this agent's pin root (after it stopped); True if something was left."""
        left = os.path.exists(self.pin_root) and bool(os.listdir(self.pin_root))
        run(["rm", "-rf", self.pin_root], check=False)
        return left

    def stop(self, sig=signal.SIGTERM, timeout=15):
        # Draining agents ignore the first SIGTERM (Kubernetes sends it as soon as the new agent is
        # ready) and stop at the second. Send the second only once the agent has logged the first:
        # two signals pending at once would merge into one.
        marker = "draining goes on"
        for proc, log in self.retired:
            if proc.poll() is None:
                seen = self.logs().count(marker)
                proc.terminate()
                deadline = time.time() + timeout
                while proc.poll() is None and self.logs().count(marker) == seen and time.time() < deadline:
                    time.sleep(0.01)
                if proc.poll() is None:
                    proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            log.close()
        self.retired = []
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("netsteerd did not stop on signal")
        if self.log:
            self.log.close()
            self.log = None
        check_sanitizer_reports(self.log_path)
        return self.proc.returncode

    def kill(self):
        return self.stop(signal.SIGKILL)

    def close(self):
        """Stop the agent and remove all it left: pins, socket, state and log directory."""
        try:
            self.stop()
        finally:
            self.cleanup_pins()
            shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def agent(*args, **kw):
    a = Agent(*args, **kw)
    try:
        yield a
    finally:
        a.close()


def threads_in(pid, ns):
    """How many of the process's threads are inside the netns (by nsfs inode)."""
    ino = os.stat(f"/var/run/netns/{ns.name}").st_ino
    n = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            n += os.stat(f"/proc/{pid}/task/{tid}/ns/net").st_ino == ino
        except FileNotFoundError:
            pass
    return n


def tcp_connect(ns, host, port, timeout=2.0):
    """Connect from inside ns; return 'ok', 'refused' or 'timeout'."""
    code = (
        "import socket,sys\n"
        f"s=socket.socket(socket.AF_INET6 if ':' in {host!r} else socket.AF_INET)\n"
        f"s.settimeout({timeout})\n"
        "try:\n"
        f"  s.connect(({host!r},{port})); print('ok')\n"
        "except ConnectionRefusedError: print('refused')\n"
        "except (socket.timeout, TimeoutError): print('timeout')\n"
        "except OSError as e: print('error', e.errno)\n"
    )
    if ns is None:
        return run(["/usr/bin/python3", "-c", code]).stdout.strip()
    return ns.exec(["/usr/bin/python3", "-c", code]).stdout.strip()


LIB = os.path.dirname(os.path.abspath(__file__))
PY = "/usr/bin/python3"
_subnet = [0]


class Topology:
    """A pod netns and a remote netns joined by a veth pair.

    pod:    eth0 10.S.0.1/24, fd00:S::1/64      remote: eth0 10.S.0.2/24, fd00:S::2/64
    Addresses live only inside these test namespaces.
    """

    def __init__(self):
        _subnet[0] += 1
        s = 100 + (os.getpid() + _subnet[0]) % 150
        self.s = s
        self.pod = Netns(unique("pod"))
        self.remote = Netns(unique("rem"))
        self.procs = []
        self.pod_ip, self.remote_ip = f"10.{s}.0.1", f"10.{s}.0.2"
        self.pod_ip6, self.remote_ip6 = f"fd00:{s}::1", f"fd00:{s}::2"
        veth = unique("v")
        run(["ip", "link", "add", veth, "netns", self.pod.name, "type", "veth", "peer", "name", "eth0",
             "netns", self.remote.name])
        self.pod.ip(f"link set {veth} name eth0")
        for ns, v4, v6 in ((self.pod, self.pod_ip, self.pod_ip6), (self.remote, self.remote_ip, self.remote_ip6)):
            ns.ip(f"addr add {v4}/24 dev eth0")
            ns.ip(f"addr add {v6}/64 dev eth0 nodad")
            ns.ip("link set eth0 up")

    def serve(self, ns, port):
        """Start peer_server.py in ns on port; returns the Popen (stopped at close)."""
        p = ns.popen([PY, os.path.join(LIB, "peer_server.py"), str(port)], stdout=subprocess.PIPE,
                     stderr=subprocess.DEVNULL, text=True)
        assert p.stdout.readline().strip() == "ready"
        self.procs.append(p)
        return p

    def spawn(self, ns, code):
        """Run a python snippet in ns that prints 'ready' once set up; returns the Popen (stopped
        at close)."""
        p = ns.popen([PY, "-c", code], stdout=subprocess.PIPE, text=True)
        self.procs.append(p)
        assert p.stdout.readline().strip() == "ready"
        return p

    def http_server(self, ns, port, directory):
        p = ns.popen([PY, "-m", "http.server", "--bind", "::", "--directory", directory, str(port)],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(p)
        deadline = time.time() + 10
        while time.time() < deadline:
            if str(port) in ns.exec(["ss", "-Htln"]).stdout:
                return p
            time.sleep(0.05)
        raise AssertionError("http.server did not start")

    def wait_v6_ready(self, timeout=20.0):
        """Until duplicate address detection is over on both ends (the link-local address is
        tentative for ~1 s after link up; under ASan on a loaded host CI once saw it take over
        5 s). Before that, neighbour discovery waits and a first IPv6 connection's RTT sample
        (and so its RTO) is near a second: tests of TCP timers need it done."""
        deadline = time.time() + timeout
        while any(ns.ip("-6 addr show tentative").stdout.strip() for ns in (self.pod, self.remote)):
            if time.time() > deadline:
                raise AssertionError("IPv6 addresses still tentative after %.0f s" % timeout)
            time.sleep(0.05)

    def client(self, ns, *args, check=True, timeout=300):
        return ns.exec([PY, os.path.join(LIB, "peer_client.py")] + [str(a) for a in args], check=check,
                       timeout=timeout).stdout.strip()

    def close(self):
        for p in self.procs:
            p.kill()
            p.wait()
        self.pod.close()
        self.remote.close()


@contextlib.contextmanager
def topology():
    t = Topology()
    try:
        yield t
    finally:
        t.close()


# The top of a HAProxy 2.6 test config: TCP mode, a raw log line per connection on stdout.
HAPROXY_DEFAULTS = """global
  log stdout format raw local0
defaults
  mode tcp
  log global
  timeout connect 3s
  timeout client 10s
  timeout server 10s
"""


def read_state(state_dir):
    """The agent's enrolled set as a restarted agent would read it: state.json (the snapshot)
    with state.journal replayed over it when the journal continues that snapshot's generation."""
    with open(os.path.join(state_dir, "state.json")) as f:
        doc = json.load(f)
    pods = doc["pods"]
    try:
        lines = open(os.path.join(state_dir, "state.journal")).read().splitlines()
    except FileNotFoundError:
        lines = []
    if lines and json.loads(lines[0]).get("generation") == doc.get("generation") and doc.get("generation"):
        for line in lines[1:]:
            try:
                op = json.loads(line)
            except ValueError:
                break  # a torn last line
            if "put" in op:
                uid = op["put"]["pod"]["uid"]
                at = [i for i, p in enumerate(pods) if p["pod"]["uid"] == uid]
                if at:
                    pods[at[0]] = op["put"]
                else:
                    pods.append(op["put"])
            else:
                pods = [p for p in pods if p["pod"]["uid"] != op["del"]]
    return {"version": doc["version"], "generation": doc.get("generation"), "pods": pods}


def write_state(state_dir, doc):
    """Replace the agent's state (snapshot and journal) with doc's pods, as a compaction would."""
    gen = (doc.get("generation") or 0) + 1
    with open(os.path.join(state_dir, "state.json"), "w") as f:
        json.dump({"version": 1, "generation": gen, "pods": doc["pods"]}, f)
    with open(os.path.join(state_dir, "state.journal"), "w") as f:
        f.write(json.dumps({"generation": gen}) + "\n")


def bpftool_json(*args):
    return json.loads(run(["bpftool", "-j"] + list(args)).stdout or "null")
