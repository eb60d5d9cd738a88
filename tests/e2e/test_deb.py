"""Issue 18: the Debian package (scripts/deb.sh, packaging/deb/) in a clean Debian 12 minbase chroot.

One pass, in order (each step relies on the one before):
  1. `apt-get install ./netsteer_*.deb` pulls exactly the runtime dependencies: the newly installed
     packages are apt's closure of the Depends line, and the Depends line names exactly the packages
     owning the agent's DT_NEEDED libraries;
  2. `systemd-analyze verify` passes on the installed units (netsteerd, netsteer-bpffs);
  3. netsteerd started as the unit says: the Requires= unit first (netsteer-bpffs mounts bpffs where
     none is), AssertPathIsMountPoint=, the unit's directories, then ExecStart with its capability
     sets and NoNewPrivileges (setpriv), chrooted. It keeps exactly the unit's capabilities,
     ExecReload= signals it, and a netns enrolled with the installed netsteerctl is steered both
     ways. (The mount sandbox, ProtectSystem= and the like, needs systemd as PID 1 and is not
     reproduced here;)
  4. an upgrade to the same package with a higher version, under the running agent, changes no file
     outside the package; the restart that follows takes the pod over;
  5. remove unenrols the pod (prerm), purge leaves no file the install made (compared with the tree
     before the install) and removes /var/lib/netsteer, /run/netsteer and the pin root.

Everything chroot-side runs in a mount namespace of our own (private: /proc, /sys, /dev, a tmpfs
/run, the pod netns, the bpffs the unit mounts) held by one process: killing it removes every mount
at once, even if the test dies. The minbase tree is cached as a tarball under
/var/cache/netsteer-test/ (one per day); a machine without it runs debootstrap (scripts/setup.sh
installs it). Under CI=true a missing tool or no network fails the test.
"""
import ctypes
import datetime
import fcntl
import glob
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

import nstest
from nstest import run

SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CACHE = "/var/cache/netsteer-test"
MIRROR = "http://deb.debian.org/debian"
UNIT = "/lib/systemd/system/netsteerd.service"
APP, REMOTE_APP = 8080, 9000
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Not compared between trees: API/runtime mount points (mounted in our namespace, never written
# in the tree) and the package managers' own bookkeeping and logs.
UNTRACKED = {"proc", "sys", "dev", "run", "tmp", "mnt", "var/lib/dpkg", "var/lib/apt", "var/cache/apt",
             "var/cache/debconf", "var/cache/ldconfig", "var/log"}
CAPS_ALL = {"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3, "CAP_FSETID": 4,
            "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8, "CAP_LINUX_IMMUTABLE": 9,
            "CAP_NET_BIND_SERVICE": 10, "CAP_NET_BROADCAST": 11, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13,
            "CAP_IPC_LOCK": 14, "CAP_IPC_OWNER": 15, "CAP_SYS_MODULE": 16, "CAP_SYS_RAWIO": 17,
            "CAP_SYS_CHROOT": 18, "CAP_SYS_PTRACE": 19, "CAP_SYS_PACCT": 20, "CAP_SYS_ADMIN": 21,
            "CAP_SYS_BOOT": 22, "CAP_SYS_NICE": 23, "CAP_SYS_RESOURCE": 24, "CAP_SYS_TIME": 25,
            "CAP_SYS_TTY_CONFIG": 26, "CAP_MKNOD": 27, "CAP_LEASE": 28, "CAP_AUDIT_WRITE": 29,
            "CAP_AUDIT_CONTROL": 30, "CAP_SETFCAP": 31, "CAP_MAC_OVERRIDE": 32, "CAP_MAC_ADMIN": 33,
            "CAP_SYSLOG": 34, "CAP_WAKE_ALARM": 35, "CAP_BLOCK_SUSPEND": 36, "CAP_AUDIT_READ": 37,
            "CAP_PERFMON": 38, "CAP_BPF": 39, "CAP_CHECKPOINT_RESTORE": 40}


@pytest.fixture(autouse=True)
def _root():
    nstest.require_root()
    for tool in ("debootstrap", "dpkg-deb", "dpkg-shlibdeps", "strip", "systemd-analyze", "unshare", "nsenter",
                 "readelf", "tar"):
        nstest.require_tool(tool)


def _die_with_parent():
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Timer:
    def __init__(self):
        self.t0 = self.last = time.monotonic()
        self.steps = []

    def step(self, name):
        now = time.monotonic()
        self.steps.append((name, now - self.last))
        self.last = now

    def report(self):
        return ", ".join(f"{n} {s:.1f}s" for n, s in self.steps) + f"; total {time.monotonic() - self.t0:.1f}s"


def base_tarball():
    """Today's fresh minbase tree as a tarball: debootstrap once a day, in a mount namespace of its
    own (the /proc, /sys and /dev it mounts in the target go with it, whatever happens)."""
    os.makedirs(CACHE, exist_ok=True)
    tar = os.path.join(CACHE, f"bookworm-minbase-{datetime.date.today():%Y%m%d}.tar")
    with open(os.path.join(CACHE, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(tar):
            return tar
        tmp = tempfile.mkdtemp(prefix="debootstrap-", dir=CACHE)
        try:
            p = run(["unshare", "--mount", "--propagation", "private", "debootstrap", "--variant=minbase",
                     "bookworm", os.path.join(tmp, "root"), MIRROR], check=False, timeout=900)
            if p.returncode != 0:
                pytest.fail(f"debootstrap failed ({p.returncode}); the mirror {MIRROR} must be reachable:\n"
                            f"{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
            for deb in glob.glob(os.path.join(tmp, "root/var/cache/apt/archives/*.deb")):
                os.unlink(deb)
            run(["tar", "-C", os.path.join(tmp, "root"), "-cf", tar + ".part", "."])
            os.rename(tar + ".part", tar)
        finally:
            _rmtree_unmounted(tmp)
        for old in glob.glob(os.path.join(CACHE, "bookworm-minbase-*.tar")):
            if old != tar:
                os.unlink(old)
    return tar


def _mounts_under(path):
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return [l.split()[4] for l in f if l.split()[4] == path or l.split()[4].startswith(path + "/")]


def _rmtree_unmounted(path):
    """rm -rf, but never through a mount (our mounts live in a namespace of their own; this is the
    belt to those braces)."""
    if not os.path.exists(path):
        return
    left = _mounts_under(path)
    assert not left, f"mounts left under {path}: {left}"
    shutil.rmtree(path)


class Chroot:
    """The minbase tree at `root` and a private mount namespace in which it is set up as a host
    would be: proc, sysfs, /dev, a tmpfs /run (+ /run/lock), the host's /run/netns, the .deb dir on
    /mnt. The namespace lives as long as `self.holder`."""

    def __init__(self, root, debs):
        self.root = root
        self.holder = subprocess.Popen(["unshare", "--mount", "--propagation", "slave", "sleep", "infinity"],
                                       preexec_fn=_die_with_parent)
        mine = os.readlink("/proc/self/ns/mnt")
        deadline = time.time() + 10
        while os.readlink(f"/proc/{self.holder.pid}/ns/mnt") == mine:
            assert time.time() < deadline and self.holder.poll() is None, "unshare did not start"
            time.sleep(0.005)
        r = shlex.quote(root)
        self.host_sh(f"mount -t proc proc {r}/proc && mount -t sysfs sysfs {r}/sys && "
                     f"mount --rbind /dev {r}/dev && mount -t tmpfs -o mode=0755 tmpfs {r}/run && "
                     f"mkdir {r}/run/lock {r}/run/netns && mount --rbind /run/netns {r}/run/netns && "
                     f"mount --bind -o ro {shlex.quote(debs)} {r}/mnt")

    def host(self, cmd, **kw):
        """A command of the host's, inside our mount namespace."""
        return run(["nsenter", "-t", str(self.holder.pid), "-m", "--"] + cmd, **kw)

    def host_sh(self, script, **kw):
        return self.host(["sh", "-c", script], **kw)

    def argv(self, cmd):
        return ["nsenter", "-t", str(self.holder.pid), "-m", "--", "chroot", self.root,
                "env", "-i", f"PATH={PATH}", "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive"] + cmd

    def __call__(self, cmd, **kw):
        """A command inside the chroot (list or shell string)."""
        if isinstance(cmd, str):
            cmd = ["sh", "-c", cmd]
        return run(self.argv(cmd), **kw)

    def exists(self, path):
        """Seen from inside (mounts included), unlike os.path.exists(root + path)."""
        return self.host(["test", "-e", self.root + path], check=False).returncode == 0

    def ls(self, path):
        return self.host(["ls", "-A", self.root + path]).stdout.split()

    def installed(self):
        out = self(["dpkg-query", "-W", "-f", "${db:Status-Abbrev} ${Package}\\n"]).stdout
        return {l.split()[1] for l in out.splitlines() if l.startswith("ii")}

    def apt(self, *args, **kw):
        return self(["apt-get", "-q", "-y", "-o", "Dpkg::Use-Pty=0", "--no-install-recommends"] + list(args), **kw)

    def tree(self):
        """Every path in the tree (host view: none of our mounts), minus UNTRACKED."""
        out = set()
        for d, dirs, files in os.walk(self.root):
            rel = os.path.relpath(d, self.root)
            rel = "" if rel == "." else rel
            dirs[:] = [x for x in dirs if os.path.join(rel, x) not in UNTRACKED]
            out.update("/" + os.path.join(rel, n) for n in dirs + files)
        return out

    def canonical(self, path):
        """A package's path as the tree walk sees it (merged /usr: /lib -> /usr/lib)."""
        d = os.path.realpath(os.path.join(self.root, os.path.dirname(path).lstrip("/")))
        return "/" + os.path.relpath(os.path.join(d, os.path.basename(path)), self.root)

    def close(self):
        if self.holder.poll() is None:
            self.holder.kill()
        self.holder.wait()


def unit_file(path):
    """{section: {key: [values]}} of a unit file."""
    res, section = {}, None
    for line in open(path):
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = res.setdefault(line.strip("[]"), {})
        else:
            k, v = line.split("=", 1)
            section.setdefault(k, []).append(v)
    return res


def held_caps():
    with open("/proc/self/status") as f:
        bnd = int(re.search(r"^CapBnd:\s*([0-9a-f]+)", f.read(), re.M).group(1), 16)
    return {n for n, bit in CAPS_ALL.items() if bnd >> bit & 1}


class UnitAgent:
    """netsteerd as systemd would start it from the installed unit, minus systemd and its mount
    sandbox: the Requires= units first (oneshot, their ConditionPathIsMountPoint= honoured: that is
    netsteer-bpffs.service mounting /sys/fs/bpf), AssertPathIsMountPoint=, the unit's directories
    (StateDirectory, RuntimeDirectory with their modes), UMask, then ExecStart under setpriv with
    CapabilityBoundingSet, AmbientCapabilities (as inheritable + ambient) and NoNewPrivileges,
    chrooted."""

    def __init__(self, ch, log_path):
        self.ch, self.log_path = ch, log_path
        self.unit_file = unit_file(ch.root + UNIT)
        u = self.unit = self.unit_file["Service"]
        self.caps = set(u["CapabilityBoundingSet"][0].split())
        assert set(u["AmbientCapabilities"][0].split()) == self.caps, "ambient and bounding sets differ"
        assert u["NoNewPrivileges"] == ["yes"]
        self.umask = int(u.get("UMask", ["0022"])[0], 8)
        self.argv = shlex.split(u["ExecStart"][0])
        assert self.argv[0] == "/usr/sbin/netsteerd", u["ExecStart"]
        self.flags = dict(a[2:].split("=", 1) for a in self.argv[1:] if a.startswith("--") and "=" in a)
        self.proc = None
        self.start()

    def mountpoint(self, path):
        return self.ch(["mountpoint", "-q", path], check=False).returncode == 0

    def conditions_hold(self, unit):
        for cond in unit.get("Unit", {}).get("ConditionPathIsMountPoint", []):
            if self.mountpoint(cond.lstrip("!")) == cond.startswith("!"):
                return False
        return True

    def start(self):
        ch, u = self.ch, self.unit
        for name in " ".join(self.unit_file["Unit"].get("Requires", [])).split():
            dep = unit_file(f"{ch.root}/lib/systemd/system/{name}")
            assert dep["Service"]["Type"] == ["oneshot"], name
            if self.conditions_hold(dep):
                for cmd in dep["Service"]["ExecStart"]:
                    ch(shlex.split(cmd))
        for path in self.unit_file["Unit"].get("AssertPathIsMountPoint", []):
            assert self.mountpoint(path), f"{path} is not a mount point: the unit would not start"
        assert not u.get("ExecStartPre"), "ExecStartPre= is not emulated here"
        for key, base in (("StateDirectory", "/var/lib"), ("RuntimeDirectory", "/run")):
            for name in u.get(key, []):
                mode = u.get(key + "Mode", ["0755"])[0]
                ch(["install", "-d", "-m", mode, f"{base}/{name}"])
        # Capabilities the unit lists but this test process lacks cannot be handed on (capset);
        # the agent then reports them as not held.
        give = sorted(self.caps & held_caps())
        caps = ",".join(["-all"] + ["+" + c[4:].lower() for c in give])
        cmd = ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", f"--ambient-caps={caps}",
               "--no-new-privs", "--"] + self.argv
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen(ch.argv(cmd), stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=lambda: (_die_with_parent(), os.umask(self.umask)))
        deadline = time.time() + 20
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"netsteerd exited ({self.proc.returncode}):\n{self.logs()}")
            if self.ctl("status", check=False).returncode == 0:
                return
            assert time.time() < deadline, "netsteerd did not answer on its socket:\n" + self.logs()
            time.sleep(0.05)

    def ctl(self, *args, check=True):
        return self.ch(["netsteerctl", f"--socket={self.flags['socket']}"] + list(args), check=check)

    def ctl_json(self, *args):
        return json.loads(self.ctl(*args, "--json").stdout)

    def logs(self):
        with open(self.log_path) as f:
            return f.read()

    def stop(self, timeout=15, runtime_dir_cleanup=True):
        """As systemd stops it: SIGTERM, SIGKILL after the timeout, then the RuntimeDirectory goes
        (no RuntimeDirectoryPreserve=). Returns the exit code."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()
            self.log = None
        if runtime_dir_cleanup and self.proc:
            for name in self.unit.get("RuntimeDirectory", []):
                self.ch(["rm", "-rf", f"/run/{name}"])
        return self.proc.returncode if self.proc else None


def steered(agent, t, uid):
    """Inbound and outbound connections of the pod went through the agent (relay and BPF counters
    moved) and kept their addresses."""
    before = agent.ctl_json("inspect", "--uid", uid)
    seen = t.client(t.remote, t.pod_ip, APP, "peer", timeout=60).split()[0]
    assert seen == t.remote_ip, f"the pod's app saw {seen}, not the client {t.remote_ip}"
    seen = t.client(t.pod, t.remote_ip, REMOTE_APP, "peer", timeout=60).split()[0]
    assert seen == t.pod_ip, f"the remote saw {seen}, not the pod {t.pod_ip}"
    after = agent.ctl_json("inspect", "--uid", uid)
    for d in ("inbound", "outbound"):
        assert after["capture"]["bpf_stats"][f"{d}_assigned"] > before["capture"]["bpf_stats"][f"{d}_assigned"], d
        assert after["relay"][d]["opened"] > before["relay"][d]["opened"], d


def deps_closure(ch, deb):
    """(Depends names, what apt would install for exactly them)."""
    depends = run(["dpkg-deb", "-f", deb, "Depends"]).stdout.strip()
    names = []
    for item in depends.split(","):
        assert "|" not in item, f"alternatives in Depends: {depends}"
        names.append(re.match(r"\s*([a-z0-9][a-z0-9+.-]*)", item).group(1))
    sim = ch.apt("install", "--simulate", *names).stdout
    return depends, names, {m.group(1) for m in re.finditer(r"^Inst (\S+)", sim, re.M)}


def needed_packages(ch, binary):
    """The packages of the chroot owning the DT_NEEDED libraries of an installed binary."""
    needed = re.findall(r"\(NEEDED\).*\[(.+)\]", run(["readelf", "-d", ch.root + binary]).stdout)
    assert needed, f"{binary} has no DT_NEEDED entries"
    out = ch(["dpkg", "-S"] + [f"*/{n}" for n in needed]).stdout
    owners = {}
    for line in out.splitlines():
        pkgs, path = line.split(": ", 1)
        owners.setdefault(os.path.basename(path), set()).update(p.split(":")[0] for p in pkgs.split(", "))
    assert set(owners) == set(needed), f"no package owns {set(needed) - set(owners)}"
    return set().union(*owners.values())


def real_package(ch, name):
    """A Depends name as the installed package that is or provides it."""
    out = ch(["dpkg-query", "-W", "-f", "${Package}\\t${Provides}\\n"]).stdout
    for line in out.splitlines():
        pkg, _, provides = line.partition("\t")
        if pkg == name or name in {p.split()[0] for p in provides.split(",") if p.strip()}:
            return pkg
    raise AssertionError(f"nothing installed is or provides {name}")


def pod_listeners(t):
    return set(t.pod.listening_ports())


def test_deb_install_run_upgrade_purge():
    timer = Timer()
    work = tempfile.mkdtemp(prefix="netsteer-deb-", dir="/var/tmp")
    debs = os.path.join(work, "debs")
    os.makedirs(debs)
    root = os.path.join(work, "root")
    ch = agent = t = None
    builds = []
    try:
        # Both packages build while the tree is being made.
        for version in (None, "0.1.0+upgrade1"):
            env = dict(os.environ)
            env.pop("DEB_VERSION", None)
            if version:
                env["DEB_VERSION"] = version
            builds.append(subprocess.Popen(["bash", os.path.join(SRC, "scripts/deb.sh"), nstest.BUILD, debs],
                                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                           preexec_fn=_die_with_parent))
        tar = base_tarball()
        os.makedirs(root)
        run(["tar", "-C", root, "-xf", tar])
        timer.step("chroot")
        paths = []
        for b in builds:
            out, err = b.communicate(timeout=300)
            assert b.returncode == 0, f"scripts/deb.sh failed:\n{err}"
            paths.append(out.strip().splitlines()[-1])
        deb, deb2 = paths
        assert run(["dpkg", "--compare-versions", run(["dpkg-deb", "-f", deb2, "Version"]).stdout.strip(), "gt",
                    run(["dpkg-deb", "-f", deb, "Version"]).stdout.strip()], check=False).returncode == 0
        timer.step("deb.sh x2")

        ch = Chroot(root, debs)
        # The host's apt archive cache for this chroot: reruns download nothing (apt checks hashes).
        os.makedirs(os.path.join(CACHE, "archives", "partial"), exist_ok=True)
        ch.host(["mount", "--bind", os.path.join(CACHE, "archives"), root + "/var/cache/apt/archives"])
        tree0, pkgs0 = ch.tree(), ch.installed()

        # 1. Exactly the runtime dependencies.
        depends, names, closure = deps_closure(ch, deb)
        ch.apt("install", "/mnt/" + os.path.basename(deb), timeout=600)
        pkgs1 = ch.installed()
        assert pkgs1 - pkgs0 == closure | {"netsteer"}, (
            f"apt installed {sorted(pkgs1 - pkgs0)}, the Depends closure is {sorted(closure)} (+ netsteer)")
        assert pkgs0 <= pkgs1
        wanted = needed_packages(ch, "/usr/sbin/netsteerd")
        declared = {real_package(ch, n) for n in names}
        assert declared == wanted, f"Depends {depends} names {sorted(declared)}; the ELF needs {sorted(wanted)}"
        for b in ("/usr/bin/netsteerctl", "/usr/bin/netsteer-cni"):
            assert "(NEEDED)" not in run(["readelf", "-d", root + b]).stdout, f"{b} is not static"
        files = [l for l in ch(["dpkg", "-L", "netsteer"]).stdout.splitlines() if l.startswith("/") and l != "/."]
        tree1 = ch.tree()
        assert {ch.canonical(f) for f in files} <= tree1
        timer.step("install")

        # 2. The installed units, verified by Debian 12's systemd: the host's systemd-analyze, with
        # the chroot's unit directory first in its search path and the chroot's /usr/sbin over the
        # host's (in our namespace only), so that ExecStart= and Requires= resolve to what the
        # package installed.
        units = [root + f for f in files if f.startswith("/lib/systemd/system/")]
        assert root + UNIT in units and len(units) == 2, units
        ch.host(["mount", "--bind", root + "/usr/sbin", "/usr/sbin"])
        v = ch.host(["env", f"SYSTEMD_UNIT_PATH={root}/lib/systemd/system:", "systemd-analyze", "verify",
                     "--man=no"] + units, check=False)
        ch.host(["umount", "/usr/sbin"])
        assert v.returncode == 0 and not v.stderr.strip(), f"systemd-analyze verify:\n{v.stdout}{v.stderr}"
        conf = json.load(open(root + "/etc/netsteer/netconf.json"))
        timer.step("verify")

        # 3. The agent from the unit, a pod enrolled with the installed netsteerctl, steered.
        t = nstest.Topology()
        t.serve(t.pod, APP)
        t.serve(t.remote, REMOTE_APP)
        agent = UnitAgent(ch, os.path.join(work, "netsteerd.log"))
        assert conf["socketPath"] == agent.flags["socket"], "the sample netconf names another socket"
        st = agent.ctl_json("status")
        assert st["pid"] == agent.proc.pid
        m = re.search(r"capabilities kept: ([A-Z_,]+)(?: \(not held: ([A-Z_,]+)\))?;", agent.logs())
        assert m, agent.logs()
        kept, missing = set(m.group(1).split(",")), set((m.group(2) or "").split(",")) - {""}
        assert kept | missing == agent.caps, f"the unit grants {sorted(agent.caps)}, the agent wants " \
                                             f"{sorted(kept | missing)}"
        assert kept == agent.caps & held_caps(), (kept, missing)
        status = open(f"/proc/{agent.proc.pid}/status").read()
        assert re.search(r"^NoNewPrivs:\s*1$", status, re.M)
        mask = sum(1 << CAPS_ALL[c] for c in kept)
        for field in ("CapEff", "CapPrm", "CapBnd"):
            assert int(re.search(rf"^{field}:\s*([0-9a-f]+)", status, re.M).group(1), 16) == mask, field
        # ExecReload= as systemd runs it (MAINPID in the environment): the agent gets SIGHUP, lives on.
        for cmd in agent.unit["ExecReload"]:
            ch(["env", f"MAINPID={agent.proc.pid}"] + shlex.split(cmd))
        assert agent.ctl_json("status")["pid"] == agent.proc.pid
        uid = t.pod.name
        agent.ctl("enroll", "--netns", f"/run/netns/{t.pod.name}", "--uid", uid, "--ip", t.pod_ip, "--ip", t.pod_ip6)
        steered(agent, t, uid)
        assert ch.ls(agent.flags["pin-root"]), "no pins under the pin root"
        assert pod_listeners(t) - {APP}, "no listener of the agent's in the pod"
        # What `systemctl enable` makes, so that purge has to take it away again.
        wants = "/etc/systemd/system/multi-user.target.wants"
        os.makedirs(root + wants, exist_ok=True)
        os.symlink(UNIT, root + wants + "/netsteerd.service")
        timer.step("agent")

        # 4. Upgrade under the running agent, then the restart postinst does where systemd runs.
        tree2 = ch.tree()
        ch.apt("install", "/mnt/" + os.path.basename(deb2), timeout=600)
        assert ch.installed() == pkgs1
        assert ch(["dpkg-query", "-W", "-f", "${Version}", "netsteer"]).stdout == \
            run(["dpkg-deb", "-f", deb2, "Version"]).stdout.strip()
        # deb-systemd-helper records there that the unit was enabled (purge takes it away)
        tree3 = {p for p in ch.tree() if not p.startswith("/var/lib/systemd/deb-systemd-helper-enabled/")}
        tree2 = {p for p in tree2 if not p.startswith("/var/lib/systemd/deb-systemd-helper-enabled/")}
        assert tree3 == tree2, f"the upgrade added {sorted(tree3 - tree2)}, removed {sorted(tree2 - tree3)}"
        assert agent.ctl_json("list")[0]["uid"] == uid
        assert agent.stop() == 0, agent.logs()
        agent.start()
        assert os.stat(f"/proc/{agent.proc.pid}/exe").st_ino == os.stat(root + "/usr/sbin/netsteerd").st_ino
        assert [p["uid"] for p in agent.ctl_json("list")] == [uid], "the restarted agent did not take the pod over"
        steered(agent, t, uid)
        timer.step("upgrade")

        # 5. remove (agent running): prerm unenrols the pod; then stop (systemd's part) and purge.
        # The stop leaves /run/netsteer as an agent run without systemd would: purge must remove it.
        out = ch.apt("remove", "netsteer").stdout
        assert f"unenrolled {uid}" in out, out
        assert ch.ls(agent.flags["pin-root"]) == []
        assert not pod_listeners(t) - {APP}, f"the agent's listeners are still in the pod: {pod_listeners(t)}"
        assert t.client(t.remote, t.pod_ip, APP, "peer", timeout=60).split()[0] == t.remote_ip
        assert agent.stop(runtime_dir_cleanup=False) == 0, agent.logs()
        assert ch.exists("/run/netsteer") and ch.exists("/var/lib/netsteer")
        ch(["dpkg", "--purge", "netsteer"])
        assert "netsteer" not in ch.installed()
        assert ch(["dpkg", "-L", "netsteer"], check=False).returncode != 0
        assert not glob.glob(root + "/var/lib/dpkg/info/netsteer.*")
        for path in ("/var/lib/netsteer", "/run/netsteer", agent.flags["pin-root"], "/etc/netsteer"):
            assert not ch.exists(path), f"{path} is left after purge"
        tree4 = ch.tree()
        deps_files = {ch.canonical(f) for f in ch(["dpkg", "-L"] + sorted(closure)).stdout.splitlines()
                      if f.startswith("/") and f != "/."}
        stray = tree4 - tree0 - deps_files
        assert not stray, f"left after purge, in no package: {sorted(stray)}"
        assert not tree0 - tree4, f"removed by the purge: {sorted(tree0 - tree4)}"
        assert not [p for p in tree4 if "netsteer" in p]
        timer.step("purge")
        print(f"\ntest_deb: Depends: {depends}\ntest_deb: .deb {os.path.getsize(deb)} bytes; "
              f"new packages {sorted(pkgs1 - pkgs0)}\ntest_deb: {timer.report()}")
    finally:
        errors = []
        for b in builds:
            if b.poll() is None:
                b.kill()
                b.wait()
        for step in (lambda: agent and agent.stop(runtime_dir_cleanup=False), lambda: ch and ch.close(), lambda: t and t.close(),
                     lambda: _rmtree_unmounted(work)):
            try:
                step()
            except Exception as e:  # clean up the rest, then report
                errors.append(e)
        if errors:
            raise errors[0]
