#!/usr/bin/python3
"""netsteer benchmarks, side by side on one machine in one run (see bench/README in RESULTS.md).

Data path, each arm on the same pod<->remote veth topology, outbound (load generator in the pod,
server in the remote netns) and inbound (load generator in the remote, server in the pod):
  direct      no capture
  netsteer    sk_lookup + routing capture, netsteer relay
  redirect    iptables nat REDIRECT to the same netsteer relay (netsteerd --capture none)
  tproxy      iptables mangle TPROXY to the same relay (transparent listeners; outbound marked in
              OUTPUT and routed to lo by a fwmark rule, as Istio's TPROXY mode does)
  haproxy     iptables nat REDIRECT to HAProxy (original destination via SO_ORIGINAL_DST,
              `server 0.0.0.0:0`, option splice-auto, nbthread 2)
Measured: new connections/s and latency p50/p99 (wrk, `Connection: close`, small nginx file),
bulk throughput with iperf3 (1 and 8 streams) and CPU seconds per GB moved (/proc/stat).
Control plane: enrol N pods (own netns + veth each), latency p50/p99 (agent's fd → capture ready),
total time, agent RSS/threads; unenrol all and compare fds/RSS/pins/rules with the baseline.
BPF: sk_lookup and tc guard ns per run (kernel.bpf_stats_enabled).
Idle connections (--idle, issue 17): N connections held idle through netsteer and HAProxy (and
none: direct), half each way, in 1 pod and over 100 pods; the proxy's RSS, fds, pipes and kernel
objects per connection, and the host's slab (bench/idle_peer.py holds the connections).
Traffic goes only to addresses inside the namespaces this script creates.
"""
import argparse
import contextlib
import gc
import json
import os
import re
import resource
import shlex
import signal
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "lib"))
import nstest  # noqa: E402
from nstest import run  # noqa: E402
import rounds  # noqa: E402  (bench/: per-round ratios, shared with bench/rounds.py)

APP = 8080
IPERF = 5201


def cpu_busy():
    """CPU seconds this machine has worked (user, nice, system, irq, softirq; guest is within user).
    Steal is left out: time the hypervisor gave to someone else is no cost of the path measured."""
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / os.sysconf("SC_CLK_TCK")


def cpu_idle():
    """CPU seconds this machine has been idle (idle and iowait)."""
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return (v[3] + v[4]) / os.sysconf("SC_CLK_TCK")


def wait_listening(ns, *ports, timeout=10):
    """Until every TCP port is listening in ns."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = ns.exec(["ss", "-Htln"]).stdout
        if all(f":{p} " in out for p in ports):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {ports} in {ns.name}")


class Servers:
    def __init__(self, ns, tmp):
        self.procs = []
        root = os.path.join(tmp, f"www-{ns.name}")
        os.makedirs(root, exist_ok=True)
        with open(os.path.join(root, "index.html"), "w") as f:
            f.write("x" * 64)
        conf = os.path.join(tmp, f"nginx-{ns.name}.conf")
        with open(conf, "w") as f:
            # master_process off: one process, so killing it leaves no orphaned workers behind.
            f.write(f"""master_process off; daemon off; pid {tmp}/nginx-{ns.name}.pid; error_log stderr crit;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp}; uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  server {{ listen {APP} reuseport backlog=4096; listen [::]:{APP} reuseport backlog=4096; root {root}; }} }}
""")
        self.procs.append(ns.popen(["nginx", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        self.procs.append(ns.popen(["iperf3", "-s", "-p", str(IPERF)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL))
        wait_listening(ns, APP, IPERF)

    def close(self):
        for p in self.procs:
            p.kill()
            p.wait()


def proc_ticks(pids):
    """(user, system) CPU seconds of these processes so far, every thread of each. The kernel's tick
    accounting charges a softirq that runs on a task's tick to that task's system time."""
    u = k = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            u, k = u + int(f[11]), k + int(f[12])
    hz = os.sysconf("SC_CLK_TCK")
    return u / hz, k / hz


class CpuSplit:
    """Who spends the machine's CPU while a load runs: the load generator (its own rusage: it is a
    child that exits), the server and the proxy (long-lived: /proc deltas), and the rest (softirq
    run by the idle task or ksoftirqd, kworkers, this script). Seconds, steal left out."""

    def __init__(self, server=(), proxy=()):
        self.pids = {"server": list(server), "proxy": list(proxy)}
        self.t0 = {k: proc_ticks(v) for k, v in self.pids.items()}
        self.busy0, self.idle0 = cpu_busy(), cpu_idle()

    def run(self, ns, cmd, timeout):
        """cmd in ns (nsenter execs it: the child is the load generator itself); its stdout."""
        # stderr to a file: reading two pipes one after the other can block on the second filling.
        with tempfile.TemporaryFile(mode="w+") as errf:
            p = ns.popen(cmd, stdout=subprocess.PIPE, stderr=errf, text=True)
            timer = threading.Timer(timeout, p.kill)
            timer.start()
            try:
                out = p.stdout.read()
                _, status, ru = os.wait4(p.pid, 0)
            finally:
                timer.cancel()
            p.returncode = os.waitstatus_to_exitcode(status)
            if p.returncode != 0:
                errf.seek(0)
                raise RuntimeError(f"{cmd[0]} failed ({p.returncode}): {errf.read()[-2000:]}")
        self.client = (ru.ru_utime, ru.ru_stime)
        return out

    def done(self):
        """{'client'|'server'|'proxy': {'user', 'sys'}, 'other', 'total'} in CPU seconds."""
        total = cpu_busy() - self.busy0
        split = {"client": {"user": self.client[0], "sys": self.client[1]}}
        for k, pids in self.pids.items():
            t1 = proc_ticks(pids)
            split[k] = {"user": t1[0] - self.t0[k][0], "sys": t1[1] - self.t0[k][1]}
        split["other"] = max(0.0, total - sum(v["user"] + v["sys"] for v in split.values()))
        split["total"] = total
        split["idle"] = cpu_idle() - self.idle0  # not per connection: where the load left the host idle
        return split


def scaled(split, per):
    """A CpuSplit.done() divided by `per` (connections or GB), as µs or s; idle becomes the share of
    the host's CPU time the load left idle (%)."""
    out = {k: ({kk: vv / per for kk, vv in v.items()} if isinstance(v, dict) else v / per)
           for k, v in split.items() if k != "idle"}
    out["idle_pct"] = 100 * split["idle"] / max(1e-9, split["idle"] + split["total"])
    return out


def wrk(ns, ip, secs, watch=None, conns=32):
    """watch: {'server': pids, 'proxy': pids} to split the CPU per connection by process. conns:
    connections kept in flight (32 by default: every saved run used it; --wrk-conns)."""
    cs = CpuSplit(**(watch or {}))
    out = cs.run(ns, ["wrk", "-t2", f"-c{conns}", f"-d{secs}s", "--latency", "-H", "Connection: close",
                      f"http://{ip}:{APP}/"], timeout=secs + 30)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def ms(q):
        m = re.search(rf"\s{q}%\s+([\d.]+)(us|ms|s)", out)
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
    errors = re.search(r"Socket errors: (.*)", out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    total = int(re.search(r"(\d+) requests in", out).group(1))
    split = cs.done()
    cpu = split["total"]
    if total == 0 or (bad and int(bad.group(1)) > total // 100):
        raise RuntimeError(f"wrk to {ip}: the path does not work:\n{out}")
    # CPU per connection, whole machine (wrk, the server and the path between): what conn/s on a
    # CPU-bound host is the inverse of, without the hypervisor's share that moves conn/s between runs.
    return {"conn_per_s": rps, "p50_ms": ms(50), "p99_ms": ms(99), "socket_errors": errors.group(1) if errors else "",
            "cpu_us_per_conn": cpu * 1e6 / total, "cpu_split_us_per_conn": scaled(split, total / 1e6)}


def iperf(ns, ip, streams, secs, watch=None, port=IPERF):
    cs = CpuSplit(**(watch or {}))
    out = cs.run(ns, ["iperf3", "-c", ip, "-p", str(port), "-P", str(streams), "-t", str(secs), "-J"],
                 timeout=secs + 30)
    split = cs.done()
    cpu = split["total"]
    j = json.loads(out)
    bps = j["end"]["sum_received"]["bits_per_second"]
    gb = j["end"]["sum_received"]["bytes"] / 1e9
    return {"gbit_s": bps / 1e9, "cpu_s_per_gb": cpu / gb if gb else None,
            "cpu_split_s_per_gb": scaled(split, gb) if gb else None}


def haproxy(ns, tmp, maxconn=4000, timeout="60s", maxpipes=None):
    """HAProxy in ns behind REDIRECT; `timeout` is its client and server inactivity timeout and
    maxpipes its splice pipes (default maxconn/4; it needs two fds for each, at start)."""
    conf = os.path.join(tmp, "haproxy.cfg")
    pipes = f"\n  maxpipes {maxpipes}" if maxpipes is not None else ""
    with open(conf, "w") as f:
        f.write(f"""global
  nbthread 2
  maxconn {maxconn}{pipes}
  user nobody
defaults
  mode tcp
  timeout connect 5s
  timeout client {timeout}
  timeout server {timeout}
  option splice-auto
# IPv4 sockets: HAProxy reads SO_ORIGINAL_DST only on them (on a dual-stack socket it would take
# the REDIRECT target, 127.0.0.1:15001, and loop). The bench topology is IPv4.
frontend out
  bind 0.0.0.0:15001
  default_backend orig
frontend in
  bind 0.0.0.0:15006
  default_backend orig
backend orig
  server orig 0.0.0.0:0
""")
    log = os.path.join(tmp, "haproxy.log")
    with open(log, "w") as f:
        p = ns.popen(["haproxy", "-W", "-db", "-f", conf], stdout=subprocess.DEVNULL, stderr=f)
    deadline = time.time() + 10
    while ":15006 " not in ns.exec(["ss", "-Htln"]).stdout or ":15001 " not in ns.exec(["ss", "-Htln"]).stdout:
        if time.time() > deadline or p.poll() is not None:
            p.kill()
            p.wait()
            raise RuntimeError("haproxy did not start:\n" + open(log).read()[-2000:])
        time.sleep(0.05)
    return p


# The pod's server ports that the iptables arms capture inbound.
IN_PORTS = (APP, IPERF)


def redirect_rules(t, skip_owner=None, in_ports=IN_PORTS):
    """nat REDIRECT in the pod: outbound to the remote → 15001, inbound to the app → 15006."""
    rules = []
    if skip_owner is not None:
        rules.append(f"-t nat -A OUTPUT -p tcp -m owner --uid-owner {skip_owner} -j RETURN")
    rules.append(f"-t nat -A OUTPUT -p tcp -d {t.remote_ip} -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001")
    rules += [f"-t nat -A PREROUTING -p tcp -d {t.pod_ip} --dport {p} -j REDIRECT --to-ports 15006" for p in in_ports]
    for r in rules:
        t.pod.exec(["iptables"] + r.split())


# A bit outside the agent's mark (0x539/0xfff), so the relay's own packets never match the fwmark rule.
TPROXY_MARK = "0x1000/0x1000"


def tproxy_rules(t, in_ports=IN_PORTS):
    """mangle TPROXY in the pod: outbound (OUTPUT mark → fwmark rule → local route on lo →
    PREROUTING TPROXY to 15001), inbound (PREROUTING TPROXY to 15006). The relay's own sockets carry
    mark 0x539 and are never re-captured; its inbound upstreams come from lo and are left alone."""
    m = TPROXY_MARK
    rules = [f"-t mangle -A OUTPUT -p tcp -d {t.remote_ip} -m mark ! --mark 0x539/0xfff -j MARK --set-xmark {m}",
             f"-t mangle -A PREROUTING -i lo -p tcp -d {t.remote_ip} -m mark --mark {m} "
             f"-j TPROXY --on-port 15001 --tproxy-mark {m}"]
    rules += [f"-t mangle -A PREROUTING ! -i lo -p tcp -d {t.pod_ip} --dport {p} -j TPROXY --on-port 15006 "
              f"--tproxy-mark {m}" for p in in_ports]
    for r in rules:
        t.pod.exec(["iptables"] + r.split())
    t.pod.ip(f"rule add fwmark {m} lookup 100 priority 50")
    t.pod.ip("route add local 0.0.0.0/0 dev lo table 100")


def tproxy_cleanup(t):
    t.pod.exec(["iptables", "-t", "mangle", "-F"], check=False)
    t.pod.ip(f"rule del fwmark {TPROXY_MARK} lookup 100 priority 50", check=False)
    t.pod.ip("route flush table 100", check=False)


@contextlib.contextmanager
def bench_pair(tmp):
    """A pod/remote pair with nginx and iperf3 servers on both sides."""
    t = nstest.Topology()
    servers = []
    try:
        t.wait_v6_ready()
        servers = [Servers(t.remote, tmp), Servers(t.pod, tmp)]
        t.servers = {t.remote.name: servers[0], t.pod.name: servers[1]}
        yield t
    finally:
        for srv in servers:
            srv.close()
        t.close()


@contextlib.contextmanager
def arm_running(arm, t, tmp, in_ports=IN_PORTS, agent_args=(), **haproxy_opts):
    """What carries the pod's traffic in one arm; yields (agent or None, haproxy process or None),
    and undoes it all (unenrol, agent, HAProxy, iptables rules) afterwards. in_ports: the pod's
    server ports the iptables arms capture; haproxy_opts go to haproxy(). An arm "netsteer NAME"
    is a variant (--variant): netsteer with agent_args; its guard is waited for unless the
    variant sets --guard-quiet-ms (an ablation that keeps it off)."""
    a = hp = None
    try:
        if arm == "netsteer" or arm.startswith("netsteer "):
            a = nstest.Agent(agent_args)
            a.enrol(t.pod, ip=[t.pod_ip, t.pod_ip6], wait_guard="--guard-quiet-ms" not in agent_args)
        elif arm in ("redirect", "tproxy"):
            a = nstest.Agent(["--capture", "none"])
            a.enrol(t.pod, ip=[t.pod_ip, t.pod_ip6])
            (redirect_rules if arm == "redirect" else tproxy_rules)(t, in_ports=in_ports)
        elif arm == "haproxy":
            hp = haproxy(t.pod, tmp, **haproxy_opts)
            redirect_rules(t, skip_owner=65534, in_ports=in_ports)
        yield a, hp
    finally:
        if a is not None:
            a.ctl("unenroll", "--uid", t.pod.name, check=False)
            a.close()
        if hp is not None:
            hp.kill()
            hp.wait()
        t.pod.exec(["iptables", "-t", "nat", "-F"], check=False)
        tproxy_cleanup(t)


DIRECTIONS = lambda t: (("outbound", (t.pod, t.remote_ip)), ("inbound", (t.remote, t.pod_ip)))  # noqa: E731


def parse_variants(specs, prog):
    """--variant NAME=FLAGS values: {"netsteer NAME": netsteerd's extra flags} (arm_running's arms)."""
    variants = {}
    for v in specs:
        name, sep, flags = v.partition("=")
        if not sep or not name.strip() or not flags.strip():
            sys.exit(f"{prog}: --variant takes NAME=FLAGS, not {v!r}")
        variants[f"netsteer {name.strip()}"] = shlex.split(flags)
    return variants


def proxy_pids(a, hp):
    """The processes that relay in an arm: netsteerd, or HAProxy's master and worker (-W)."""
    if a is not None:
        return [a.pid]
    if hp is not None:
        with contextlib.suppress(OSError):
            return [hp.pid] + [int(x) for x in open(f"/proc/{hp.pid}/task/{hp.pid}/children").read().split()]
        return [hp.pid]
    return []


def watch(t, client_ns, a, hp, which):
    """CpuSplit's processes for a load from client_ns: the server on the other side (`which` 0:
    nginx, 1: iperf3) and the arm's proxy."""
    server_ns = t.remote if client_ns is t.pod else t.pod
    return {"server": [t.servers[server_ns.name].procs[which].pid], "proxy": proxy_pids(a, hp)}


def median_run(runs):
    """Per metric, the median over rounds (the structure of one round; text fields from the first)."""
    first = runs[0]
    if isinstance(first, dict):
        return {k: median_run([r[k] for r in runs]) for k in first}
    if isinstance(first, (int, float)) and not isinstance(first, bool) and all(v is not None for v in runs):
        return statistics.median(runs)
    return first


def data_path(args, tmp):
    """Every arm in turn, --rounds times over: arms alternate, so a slow spell on this shared
    2-core host hits all of them rather than one. Each round starts one arm further on. Each arm
    runs on a pod/remote pair of its own: wrk closes first against nginx, so the direct arm leaves
    ~14,000 TIME_WAIT sockets on (pod port → remote:8080) for 60 s, and on a shared pair every
    connect to the remote in the arm after it scanned past them (`__inet_hash_connect` and
    `__inet_check_established` 27 % of the relay's CPU; 4,198 conn/s at 469 µs of CPU each,
    against ~10,000 at ~180 µs). Per metric the median over rounds; each round is kept under
    "rounds"."""
    rounds = {arm: [] for arm in args.arms}
    for i in range(args.rounds):
        k = i % len(args.arms)
        for arm in args.arms[k:] + args.arms[:k]:
            with bench_pair(tmp) as t, arm_running(arm, t, tmp, agent_args=args.variants.get(arm, ())) as (a, hp):
                guard = lambda: (a.inspect(t.pod.name).get("capture") or {}).get("guard")  # noqa: E731
                # Before and after the loads: a variant's guard state holds for all of them only
                # if both agree (arm_running waits for it unless the variant keeps it off).
                r = {"guard_before": guard()} if a is not None else {}
                for direction, (ns, ip) in DIRECTIONS(t):
                    r[direction] = {"http": wrk(ns, ip, args.secs, watch(t, ns, a, hp, 0), conns=args.wrk_conns),
                                    "bulk1": iperf(ns, ip, 1, args.secs),
                                    "bulk8": iperf(ns, ip, 8, args.secs, watch(t, ns, a, hp, 1))}
                if a is not None:
                    st = a.inspect(t.pod.name)["relay"]
                    r["relay_opened"] = {d: st[d]["opened"] for d in ("outbound", "inbound")}
                    r["guard"] = guard()
                rounds[arm].append(r)
                print(f"  {arm}: round {i + 1} done", flush=True)
    results = {}
    for arm, runs in rounds.items():
        results[arm] = median_run(runs)
        results[arm]["rounds"] = runs
    return results


def perf_counts(pid, run):
    """System calls and context switches of process `pid` (every thread) while run() runs:
    perf stat with the raw_syscalls:sys_enter tracepoint. Returns (run()'s result, syscalls, switches)."""
    p = subprocess.Popen(["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter,context-switches", "-p", str(pid)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)  # attached
    try:
        out = run()
    finally:
        p.send_signal(signal.SIGINT)
        err = p.communicate(timeout=30)[1]
    counts = {}
    for line in err.splitlines():
        f = line.split(",")
        if len(f) > 2 and f[0].isdigit():
            counts[f[2]] = int(f[0])
    return out, counts.get("raw_syscalls:sys_enter", 0), counts.get("context-switches", 0)


def strace_calls(pid, run):
    """Per-syscall call counts of process `pid` (strace -c -f) while run() runs."""
    fd, path = tempfile.mkstemp(prefix="netsteer-strace-")
    os.close(fd)
    p = subprocess.Popen(["strace", "-c", "-f", "-q", "-o", path, "-p", str(pid)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        out = run()
    finally:
        p.send_signal(signal.SIGINT)
        p.wait(timeout=30)
    calls = {}
    for line in open(path):
        f = line.split()
        # % time, seconds, usecs/call, calls, [errors], syscall
        if len(f) >= 5 and f[3].isdigit() and not line.startswith("100.00"):
            calls[f[-1]] = int(f[3])
    os.unlink(path)
    return out, calls


def requests_done(wrk_out):
    return int(re.search(r"(\d+) requests in", wrk_out).group(1))


def syscall_table(args, tmp):
    """Counting before guessing (issue 17): system calls and context switches per relayed
    connection, netsteer's agent against HAProxy (nbthread 2, splice-auto, behind REDIRECT) over
    the same short connections (wrk, Connection: close, 64-byte responses), each direction. perf
    stat gives the totals at full speed; a second, slower run under strace -c gives the breakdown
    by system call (per connection, so the slowdown does not matter)."""
    results = {}
    with bench_pair(tmp) as t:
        for arm in ("netsteer", "haproxy"):
            with arm_running(arm, t, tmp) as (a, hp):
                if a is not None:
                    pid = a.pid
                else:
                    kids = open(f"/proc/{hp.pid}/task/{hp.pid}/children").read().split()
                    pid = int(kids[0]) if kids else hp.pid  # -W: the worker does the work
                r = {}
                for direction, (ns, ip) in DIRECTIONS(t):
                    def run_wrk():
                        return ns.exec(["wrk", "-t2", "-c32", f"-d{args.secs}s", "-H", "Connection: close",
                                        f"http://{ip}:{APP}/"], timeout=args.secs + 30).stdout
                    out, sys_n, cs_n = perf_counts(pid, run_wrk)
                    n = requests_done(out)
                    out2, calls = strace_calls(pid, run_wrk)
                    n2 = requests_done(out2)
                    top = sorted(calls.items(), key=lambda kv: -kv[1])[:12]
                    r[direction] = {"connections": n, "syscalls_per_conn": sys_n / n, "cswitches_per_conn": cs_n / n,
                                    "by_syscall_per_conn": {k: v / n2 for k, v in top}, "strace_connections": n2}
                results[arm] = r
                print(f"  syscalls {arm}: done", flush=True)
    return results


DNS_ARMS = ("direct", "netsteer", "redirect")


def dnsperf(ns, server, qfile, secs, qps=None):
    """dnsperf from ns: queries/s, lost, and p50/p99 latency from its per-query lines (-v)."""
    cmd = ["dnsperf", "-s", server, "-d", qfile, "-l", str(secs), "-c", "4", "-q", "200", "-t", "2", "-v"]
    if qps:
        cmd += ["-Q", str(qps)]
    out = ns.exec(cmd, timeout=secs + 60).stdout
    # "> NOERROR name A 0.000165" per answered query; a lost one ("> T name A") has no latency.
    lat = sorted(float(l.split()[-1]) for l in out.splitlines()
                 if l.startswith("> ") and re.fullmatch(r"[\d.]+", l.split()[-1]))
    num = lambda pat: float(re.search(pat, out).group(1))  # noqa: E731
    pick = lambda q: lat[min(len(lat) - 1, int(len(lat) * q))] * 1000 if lat else None  # noqa: E731
    return {"qps": num(r"Queries per second:\s+([\d.]+)"), "sent": int(num(r"Queries sent:\s+(\d+)")),
            "lost": int(num(r"Queries lost:\s+(\d+)")), "p50_ms": pick(0.5), "p99_ms": pick(0.99)}


def dns_path(args, tmp):
    """The pod's DNS through each arm to dnsmasq in the remote: direct; netsteer (sk_lookup onto
    the agent's 15053 proxy); iptables REDIRECT of udp/53 to a forwarder on 15053 in the pod
    (Istio's way; the forwarder is dnsmasq with its cache off, running as nobody so its own
    upstream queries skip the rule, forwarding to the same remote dnsmasq). Two loads per arm:
    as fast as dnsperf goes (200 outstanding), and a fixed rate the direct arm answers fully."""
    t = nstest.Topology()
    pids = []
    results = {}
    try:
        t.wait_v6_ready()
        qfile = os.path.join(tmp, "dns-queries")
        with open(qfile, "w") as f:
            f.writelines(f"q{i}.bench.test A\n" for i in range(2000))
        remote_pid = os.path.join(tmp, "dnsmasq-remote.pid")
        t.remote.exec(["dnsmasq", "--no-resolv", "--no-hosts", "--bind-interfaces", f"--listen-address={t.remote_ip}",
                       "--address=/bench.test/10.9.9.9", "--dns-forward-max=10000", f"--pid-file={remote_pid}",
                       "--user=root"])
        pids.append(remote_pid)
        for arm in DNS_ARMS:
            a = None
            try:
                if arm == "netsteer":
                    a = nstest.Agent()
                    a.enrol(t.pod, ip=[t.pod_ip, t.pod_ip6])
                elif arm == "redirect":
                    fwd_pid = os.path.join(tmp, "dnsmasq-fwd.pid")
                    t.pod.exec(["dnsmasq", "--no-resolv", "--no-hosts", "--port=15053", "--listen-address=127.0.0.1",
                                "--bind-interfaces", "--cache-size=0", f"--server={t.remote_ip}",
                                "--dns-forward-max=10000", f"--pid-file={fwd_pid}", "--user=nobody"])
                    pids.append(fwd_pid)
                    for r in ("-t nat -A OUTPUT -p udp --dport 53 -m owner --uid-owner 65534 -j RETURN",
                              "-t nat -A OUTPUT -p udp --dport 53 -j REDIRECT --to-ports 15053"):
                        t.pod.exec(["iptables"] + r.split())
                r = {"max": dnsperf(t.pod, t.remote_ip, qfile, args.secs),
                     "fixed": dnsperf(t.pod, t.remote_ip, qfile, args.secs, qps=args.dns_qps)}
                if a is not None:
                    r["agent"] = a.inspect(t.pod.name)["dns"]
                    r["agent"].pop("upstream_latency", None)
                results[arm] = r
                print(f"  dns {arm}: done", flush=True)
            finally:
                if a is not None:
                    a.ctl("unenroll", "--uid", t.pod.name, check=False)
                    a.close()
                t.pod.exec(["iptables", "-t", "nat", "-F"], check=False)
    finally:
        for pf in pids:
            try:
                os.kill(int(open(pf).read()), signal.SIGTERM)
            except (OSError, ValueError):
                pass
        t.close()
    return results


UDP_LOADS = ("200M", "1G", "0")


def iperf_udp(ns, ip, secs, rate):
    """iperf3 -u from ns to ip (1400-byte datagrams at `rate`, "0" = as fast as it goes; 4 MiB
    socket buffers on both ends, so that the receiver's default buffer is not what is measured):
    what the server received (Gbit/s), datagram loss and the machine's CPU seconds per GB."""
    c0 = cpu_busy()
    out = ns.exec(["iperf3", "-u", "-c", ip, "-p", str(IPERF), "-b", rate, "-l", "1400", "-w", "4M", "-t", str(secs), "-J"],
                  timeout=secs + 30).stdout
    cpu = cpu_busy() - c0
    s = json.loads(out)["end"]["sum"]
    gb = s["bytes"] * (1 - s["lost_percent"] / 100) / 1e9
    return {"gbit_s": s["bits_per_second"] * (1 - s["lost_percent"] / 100) / 1e9, "lost_percent": s["lost_percent"],
            "packets": s["packets"], "cpu_s_per_gb": cpu / gb if gb else None}


def udp_arm(t, arm, sender, dst_ip, args, **ports):
    """One UDP arm: iperf3 -u from sender to dst_ip at every load; through netsteer when the pod's
    UDP ports are given (enrolled with them), direct otherwise."""
    a = None
    try:
        if ports:
            a = nstest.Agent()
            a.enrol(t.pod, ip=[t.pod_ip, t.pod_ip6], **ports)
        r = {load: iperf_udp(sender, dst_ip, args.secs, load) for load in UDP_LOADS}
        if a is not None:
            r["agent"] = a.inspect(t.pod.name)["udp"]
        print(f"  udp {arm}: done", flush=True)
        return r
    finally:
        if a is not None:
            a.ctl("unenroll", "--uid", t.pod.name, check=False)
            a.close()


def udp_path(args, tmp):
    """UDP bulk from the pod to iperf3 in the remote: direct, and through netsteer's UDP proxy
    (the port listed with --udp-outbound-port; iperf3's TCP control connection goes through the
    relay). Loads: 200 Mbit/s (a busy UDP app), 1 Gbit/s, and as fast as iperf3 goes ("0").
    Inbound, the same from the remote to iperf3 in the pod, the port listed with
    --udp-inbound-port: every datagram is read from the pod's 15006/udp socket and delivered with
    the client's address, so each one is looked up by flow."""
    t = nstest.Topology()
    results = {}
    try:
        t.wait_v6_ready()
        srv = Servers(t.remote, tmp)
        try:
            results["direct"] = udp_arm(t, "direct", t.pod, t.remote_ip, args)
            results["netsteer"] = udp_arm(t, "netsteer", t.pod, t.remote_ip, args, udp_outbound_port=IPERF)
        finally:
            srv.close()
        pod_srv = t.pod.popen(["iperf3", "-s", "-p", str(IPERF)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_listening(t.pod, IPERF)
            results["direct inbound"] = udp_arm(t, "direct inbound", t.remote, t.pod_ip, args)
            results["netsteer inbound"] = udp_arm(t, "netsteer inbound", t.remote, t.pod_ip, args,
                                                  udp_inbound_port=IPERF)
        finally:
            pod_srv.kill()
            pod_srv.wait()
    finally:
        t.close()
    return results


def access_log_cost(args, tmp):
    """New connections per second through netsteer (outbound, wrk with Connection: close) with the
    access log off and on (a file), alternating three times in one run; a fresh pod/remote pair each
    time (a run leaves tens of thousands of TIME_WAIT sockets that would starve the next)."""
    out = {"off": [], "on": []}
    logdir = tempfile.mkdtemp(prefix="netsteer-access-")  # not `tmp`: nginx hands that to its worker user
    try:
        for mode in ("off", "on") * 3:  # three pairs: the run-to-run noise here is ~10 %
            t = nstest.Topology()
            try:
                t.wait_v6_ready()
                srv = Servers(t.remote, tmp)
                extra = ["--access-log", os.path.join(logdir, "access.log")] if mode == "on" else []
                a = nstest.Agent(extra)
                try:
                    a.enrol(t.pod, ip=[t.pod_ip, t.pod_ip6])
                    out[mode].append(wrk(t.pod, t.remote_ip, args.secs)["conn_per_s"])
                    if mode == "on":
                        out.setdefault("log", []).append(json.loads(a.ctl("status", "--json").stdout)["access_log"])
                finally:
                    a.ctl("unenroll", "--uid", t.pod.name, check=False)
                    a.close()
                    srv.close()
            finally:
                t.close()
        print("  access log: done", flush=True)
    finally:
        nstest.run(["rm", "-rf", logdir])
    out["ratio_on_off"] = statistics.mean(out["on"]) / statistics.mean(out["off"])
    return out


def bpf_runtime(tmp):
    """ns per run of the sk_lookup and tc guard programs while traffic flows (bpf_stats_enabled)."""
    old = open("/proc/sys/kernel/bpf_stats_enabled").read().strip()
    t = nstest.Topology()
    srv = None
    a = nstest.Agent()
    try:
        run(["sysctl", "-qw", "kernel.bpf_stats_enabled=1"])
        srv = Servers(t.remote, tmp)
        a.enrol(t.pod, ip=[t.pod_ip, t.pod_ip6])
        wrk(t.pod, t.remote_ip, 2)
        pins = os.path.join(a.pin_root, t.pod.name)
        out = {}
        for name in ("prog_steer", "prog_guard_egress", "prog_guard_ingress"):
            p = nstest.bpftool_json("prog", "show", "pinned", os.path.join(pins, name))
            if p.get("run_cnt"):
                out[name] = {"runs": p["run_cnt"], "ns_per_run": p["run_time_ns"] / p["run_cnt"]}
        # The program alone (BPF_PROG_TEST_RUN, warm caches, the real maps and listeners): the
        # figure above adds the cache misses of a SYN arriving on a busy 2-core host.
        cost = os.path.join(os.path.dirname(nstest.NETSTEERD), "netsteer_bpf_cost")
        prog = os.path.join(pins, "prog_steer")
        for what, tup in (("inbound", [t.pod_ip, str(APP), t.remote_ip, "40000"]),
                          ("outbound", [t.remote_ip, str(APP), t.pod_ip, "40000"])):
            r = json.loads(t.pod.exec([cost, prog] + tup + ["2000000"]).stdout)
            if r["retval"] != 1:
                raise RuntimeError(f"sk_lookup test run {what}: program returned {r['retval']}")
            out[f"prog_steer_test_run_{what}"] = {"runs": r["repeat"], "ns_per_run": r["ns_per_run"]}
        return out
    finally:
        run(["sysctl", "-qw", f"kernel.bpf_stats_enabled={old}"])
        a.ctl("unenroll", "--uid", t.pod.name, check=False)
        a.close()
        if srv:
            srv.close()
        t.close()


def proc_status(pid):
    s = open(f"/proc/{pid}/status").read()
    return {"rss_mb": int(re.search(r"VmRSS:\s+(\d+)", s).group(1)) / 1024,
            "threads": int(re.search(r"Threads:\s+(\d+)", s).group(1)),
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


# ---- idle connections (issue 17) ----------------------------------------------------------------

IDLE_PEER = os.path.join(HERE, "idle_peer.py")
IDLE_PORTS = tuple(range(7101, 7109))  # 8 server ports a side: the clients never run short of source ports
IDLE_ARMS = {1: ("direct", "netsteer", "haproxy"), 100: ("direct", "netsteer")}  # HAProxy is per pod: 1 only
IDLE_HAPROXY_MAXCONN = 25000


def idle_haproxy_limits(nofile):
    """HAProxy's maxconn and maxpipes for the idle arms: 25000 and its default maxconn/4 where the
    fd limit allows (it takes 2 fds per connection and per pipe, and refuses to start without
    them), else as many connections as fit beside 512 pipes (an idle connection holds none)."""
    maxconn = min(IDLE_HAPROXY_MAXCONN, (nofile - 64 - 2 * 512) // 2)
    return maxconn, min(maxconn // 4, (nofile - 64 - 2 * maxconn) // 2)


def spread(total, k):
    """total split into k near-equal parts."""
    return [total // k + (i < total % k) for i in range(k)]


@contextlib.contextmanager
def nofile_limit(want):
    """RLIMIT_NOFILE of this process (and so of the agents, HAProxy and peers it starts) raised to
    `want` where it may (CAP_SYS_RESOURCE), else to its hard limit; yields the limit in force and
    restores the old one after."""
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(want, old[1])
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (old[1], old[1]))
    try:
        yield resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, old)


@contextlib.contextmanager
def extra_pods(t, n):
    """n more pod netns beside t.pod, each with a veth to t.remote and its address routed there
    (10.S.i.1/32, as a routed CNI does); yields [(netns, ip)] and deletes them after."""
    made = []
    try:
        for i in range(1, n + 1):
            ns, ip = nstest.Netns(nstest.unique("ipod")), f"10.{t.s}.{i}.1"
            made.append((ns, ip))
            t.remote.ip(f"link add rp{i} type veth peer name eth0 netns {ns.name}")
            ns.ip(f"addr add {ip}/32 dev eth0")
            ns.ip("link set eth0 up")
            ns.ip(f"route add {t.remote_ip}/32 dev eth0")
            t.remote.ip(f"link set rp{i} up")
            t.remote.ip(f"route add {ip}/32 dev rp{i}")
        yield made
    finally:
        for ns, _ in made:
            ns.close()


@contextlib.contextmanager
def idle_peer(*args):
    """bench/idle_peer.py (it enters the namespaces named in its arguments itself); yields the
    process and its first line of output; after, closes its stdin (it resets every connection it
    holds and exits) and kills it if it has not."""
    p = subprocess.Popen([nstest.PY, IDLE_PEER] + list(args), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        first = p.stdout.readline()
        if not first:
            raise RuntimeError(f"idle_peer.py {args[0]} exited with {p.wait()}")
        yield p, first
    finally:
        with contextlib.suppress(OSError):
            p.stdin.close()
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def proc_tree(pid):
    """pid and its descendants (HAProxy -W: the master and its worker)."""
    pids, i = [pid], 0
    while i < len(pids):
        for task in os.listdir(f"/proc/{pids[i]}/task"):
            pids += [int(x) for x in open(f"/proc/{pids[i]}/task/{task}/children").read().split()]
        i += 1
    return pids


def proc_memory(pids):
    """Summed over pids: RSS (KiB), open fds, pipe fds, socket fds (and their inodes), and the fds
    watched by their epoll instances."""
    out = {"rss_kib": 0, "fds": 0, "pipes": 0, "sockets": 0, "epoll_items": 0, "socket_inodes": []}
    for pid in pids:
        out["rss_kib"] += round(proc_status(pid)["rss_mb"] * 1024)
        for fd in os.listdir(f"/proc/{pid}/fd"):
            out["fds"] += 1
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target == "anon_inode:[eventpoll]":
                    out["epoll_items"] += sum(line.startswith("tfd:") for line in open(f"/proc/{pid}/fdinfo/{fd}"))
            except OSError:
                continue
            out["pipes"] += target.startswith("pipe:")
            if target.startswith("socket:["):
                out["sockets"] += 1
                out["socket_inodes"].append(int(target[8:-1]))
    return out


SS_LINE = re.compile(r"ino:(\d+).*?skmem:\(r(\d+),rb\d+,t(\d+),tb\d+,f(\d+),w(\d+),o(\d+),bl(\d+)")


def netns_sockets(ns):
    """The TCP sockets in ns (ss): {inode: (family, bytes charged to its buffers: skmem r + t + f +
    w + o + bl, i.e. queues, forward allocation, options, backlog)}, how many in TIME_WAIT, and the
    netns's conntrack entries."""
    out = ns.exec(["sh", "-c", "cat /proc/sys/net/netfilter/nf_conntrack_count 2>/dev/null || echo 0; "
                               "ss -HtanmeO -f inet; echo inet6; ss -HtanmeO -f inet6"]).stdout
    lines = out.splitlines()
    res = {"sockets": {}, "time_wait": 0, "conntrack": int(lines[0])}
    family = 4
    for line in lines[1:]:
        if line == "inet6":
            family = 6
        elif line.startswith("TIME-WAIT"):
            res["time_wait"] += 1
        elif m := SS_LINE.search(line):
            res["sockets"][int(m.group(1))] = (family, sum(map(int, m.groups()[1:])))
    return res


def slab_flush():
    """Every slab cache's per-CPU objects back to its lists and its empty slabs freed
    (/sys/kernel/slab/*/shrink), so that /proc/slabinfo's active objects are the ones in use."""
    for name in os.listdir("/sys/kernel/slab"):
        path = os.path.join("/sys/kernel/slab", name)
        if not os.path.islink(path):  # an alias of a merged cache
            with contextlib.suppress(OSError), open(os.path.join(path, "shrink"), "w") as f:
                f.write("1")


def slab_kib():
    """The host's slab (/proc/meminfo Slab), per-CPU caches flushed."""
    slab_flush()
    return int(re.search(r"^Slab:\s+(\d+)", open("/proc/meminfo").read(), re.M).group(1))


def slab_settled(timeout=20, window=1.0, tolerance_kib=1024):
    """Until the host's slab moves less than tolerance_kib over a window (the namespaces of the
    previous arm free their sockets from a work queue, after RCU grace periods). Returns seconds."""
    t0, last = time.time(), slab_kib()
    while time.time() - t0 < timeout:
        time.sleep(window)
        now = slab_kib()
        if abs(now - last) < tolerance_kib:
            break
        last = now
    return round(time.time() - t0, 1)


def slab_size(cache):
    """Bytes an object of `cache` takes in its slab (merged caches too, by their alias)."""
    return int(open(f"/sys/kernel/slab/{cache}/slab_size").read())


# The kernel objects of an idle relayed connection that the proxy holds, counted, and each one's
# slab cache: its TCP socks (TCP or TCPv6: a dual-stack socket is TCPv6), per socket fd an inode
# (sock_inode_cache), a dentry and an LSM inode blob, per fd a file and an LSM file blob, per epoll
# registration an item and a wait queue entry, and per NAT-redirected connection a conntrack entry.
PROXY_OBJECTS = (("TCP", "tcp4"), ("TCPv6", "tcp6"), ("sock_inode_cache", "sockets"), ("dentry", "sockets"),
                 ("lsm_inode_cache", "sockets"), ("filp", "fds"), ("lsm_file_cache", "fds"),
                 ("eventpoll_epi", "epoll_items"), ("eventpoll_pwq", "epoll_items"), ("nf_conntrack", "conntrack"))


def idle_sample(pids, namespaces):
    """The host's slab (meminfo, and per cache: active objects × object size, after slab_flush()),
    the TCP sockets and conntrack entries in the bench's namespaces, and the proxy's processes with
    the kernel objects they hold; in that order, so that listing the proxy's fds under /proc (an
    inode and a dentry each) is not counted in the slab."""
    slab_flush()
    mi = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in open("/proc/meminfo"))}
    caches = {}
    for line in open("/proc/slabinfo").readlines()[2:]:
        f = line.split()
        caches[f[0]] = int(f[1]) * int(f[3])
    out = {"slab_kib": mi["Slab"], "sunreclaim_kib": mi["SUnreclaim"], "sreclaimable_kib": mi["SReclaimable"],
           "caches": caches, "time_wait": 0, "conntrack": 0}
    socks = {}
    for ns in namespaces:
        x = netns_sockets(ns)
        socks.update(x["sockets"])
        out["time_wait"] += x["time_wait"]
        out["conntrack"] += x["conntrack"]
    out["sockets"] = len(socks)
    out["buffer_bytes"] = sum(b for _, b in socks.values())
    out["proc"] = proc = proc_memory(pids) if pids else None
    if proc:
        mine = [socks[i] for i in proc.pop("socket_inodes") if i in socks]
        proc.update(tcp4=sum(f == 4 for f, _ in mine), tcp6=sum(f == 6 for f, _ in mine),
                    buffer_bytes=sum(b for _, b in mine))
    return out


def relay_counters(a, pods):
    """The agent's own view: relay workers (connections, pipes) and the pods' relay counters."""
    workers = a.status()["relay"]
    out = {k: sum(w[k] for w in workers) for k in ("connections", "pipes_in_use", "pipes_idle", "accept_shed")}
    for ns, _ in pods:
        relay = a.inspect(ns.name)["relay"]
        for d in ("outbound", "inbound"):
            for k in ("active", "opened", "failed"):
                out[f"{d}_{k}"] = out.get(f"{d}_{k}", 0) + relay[d][k]
    return out


def idle_per_conn(before, after, n):
    """(after - before) / n. Measured on the host: its slab KiB (all; the caches of PROXY_OBJECTS
    found in /proc/slabinfo; each cache that moved), and in the bench's namespaces: TCP sockets,
    their buffers' KiB, conntrack entries. The proxy's: RSS KiB, fds, pipe fds, sockets, epoll
    items, and its kernel KiB: the objects it holds (PROXY_OBJECTS, counted) × their slab size,
    plus its sockets' buffers."""
    delta = lambda k: after[k] - before[k]  # noqa: E731
    caches = {k: (after["caches"].get(k, 0) - before["caches"].get(k, 0)) / 1024 / n
              for k in set(after["caches"]) | set(before["caches"])}
    out = {"slab_kib": delta("slab_kib") / n, "sunreclaim_kib": delta("sunreclaim_kib") / n,
           "sreclaimable_kib": delta("sreclaimable_kib") / n,
           "object_caches_kib": sum(caches.get(c, 0) for c in {c for c, _ in PROXY_OBJECTS}),
           "buffers_kib": delta("buffer_bytes") / 1024 / n, "ns_tcp_sockets": delta("sockets") / n,
           "conntrack": delta("conntrack") / n,
           "slab_caches_kib": {k: round(v, 3) for k, v in sorted(caches.items(), key=lambda kv: -abs(kv[1]))
                               if abs(v) >= 0.01}}
    if after["proc"]:
        b, a = dict(before["proc"], conntrack=before["conntrack"]), dict(after["proc"], conntrack=after["conntrack"])
        out.update({k: (a[k] - b[k]) / n for k in ("rss_kib", "fds", "pipes", "sockets", "tcp4", "tcp6", "epoll_items")})
        out["proxy_objects_kib"] = {cache: (a[k] - b[k]) * slab_size(cache) / 1024 / n for cache, k in PROXY_OBJECTS}
        out["proxy_buffers_kib"] = (a["buffer_bytes"] - b["buffer_bytes"]) / 1024 / n
        out["proxy_kernel_kib"] = sum(out["proxy_objects_kib"].values()) + out["proxy_buffers_kib"]
        out["proxy_total_kib"] = out["rss_kib"] + out["proxy_kernel_kib"]
    return out


def idle_arm(arm, npods, args, tmp, **haproxy_opts):
    """One arm: N connections held idle through it, half outbound (pods → remote), half inbound
    (remote → pods), spread over npods pods and IDLE_PORTS; samples before and after. HAProxy's
    inactivity timeout is netsteer's idle timeout (1 h): nothing expires during the run."""
    n = args.idle_conns
    with bench_pair(tmp) as t, extra_pods(t, npods - 1) as extra, \
            arm_running(arm, t, tmp, in_ports=IDLE_PORTS, timeout="1h", **haproxy_opts) as (a, hp):
        pods = [(t.pod, t.pod_ip)] + extra
        try:
            if a is not None:
                for ns, ip in extra:
                    a.enrol(ns, ip=[ip])
                a.wait_settled()
            specs = []
            for (ns, ip), n_out, n_in in zip(pods, spread(n // 2, npods), spread(n - n // 2, npods)):
                for port, c_out, c_in in zip(IDLE_PORTS, spread(n_out, len(IDLE_PORTS)), spread(n_in, len(IDLE_PORTS))):
                    specs += [f"{ns.path},{t.remote_ip},{port},{c_out}"] * bool(c_out)
                    specs += [f"{t.remote.path},{ip},{port},{c_in}"] * bool(c_in)
            listen = [f"{ns.path},{ip},{p}" for ns, ip in [(t.remote, t.remote_ip)] + pods for p in IDLE_PORTS]
            namespaces = [t.remote] + [ns for ns, _ in pods]
            proxy = a.pid if a is not None else hp.pid if hp is not None else None
            with idle_peer("serve", *listen):
                row = {"pods": npods, "settle_s": slab_settled()}
                before = idle_sample(proc_tree(proxy) if proxy else [], namespaces)
                with idle_peer("connect", "--rate", str(args.idle_rate), *specs) as (client, line):
                    row["opened"] = json.loads(line)
                    if row["opened"]["open"] != n:
                        raise RuntimeError(f"idle {arm}, {npods} pods: {row['opened']} of {n} connections")
                    time.sleep(2)
                    pids = proc_tree(proxy) if proxy else []
                    after = idle_sample(pids, namespaces)
                    time.sleep(2)
                    row["slab_drift_kib_2s"] = slab_kib() - after["slab_kib"]
                    client.stdin.write("check\n")
                    client.stdin.flush()
                    row["check"] = json.loads(client.stdout.readline())
                    if a is not None:
                        row["agent"] = relay_counters(a, pods)
            if row["check"]["closed"]:
                raise RuntimeError(f"idle {arm}, {npods} pods: connections ended while idle: {row['check']}")
            if proxy and after["proc"]["sockets"] - before["proc"]["sockets"] < 2 * n:
                raise RuntimeError(f"idle {arm}, {npods} pods: the proxy does not hold both legs of every connection "
                                   f"({before['proc']} → {after['proc']})")
            row["before"], row["after"] = ({k: v for k, v in x.items() if k != "caches"} for x in (before, after))
            row["per_conn"] = idle_per_conn(before, after, n)
            return row
        finally:
            if a is not None:
                for ns, _ in extra:
                    a.ctl("unenroll", "--uid", ns.name, check=False)


def idle_connections(args, tmp):
    """Issue 17: N idle relayed connections (both directions mixed; one pod, then spread over 100
    pods), each having moved a few bytes once. Per connection: the proxy's RSS, fds and pipes, and
    its kernel memory, twice: the objects it holds counted × their slab size (exact for those
    objects, blind to what else runs), and the host's slab measured, an arm's minus a direct arm's
    (no proxy, the same clients and servers: their own sockets). Goals: <= 2 KiB of user memory per
    idle connection, no pipe held by one, and a total no higher than HAProxy's."""
    n = args.idle_conns
    out = {"connections": n, "rate_per_s": args.idle_rate, "layouts": {}}
    with nofile_limit(65536) as limit:
        maxconn, maxpipes = idle_haproxy_limits(limit)
        out.update({"nofile_limit": limit, "haproxy_maxconn": maxconn, "haproxy_maxpipes": maxpipes})
        for npods in args.idle_pods:
            # The agent: 2 fds a connection, ~15 a pod, ~60 of its own and at most 256 for idle pipes.
            need = 2 * n + 16 * npods + 400
            if need > limit:
                sys.exit(f"bench: idle: {n} connections over {npods} pod(s) need ~{need} fds in the agent, the limit "
                         f"here is {limit} (and cannot be raised: no CAP_SYS_RESOURCE): pass a smaller --idle-conns")
            if "haproxy" in IDLE_ARMS[npods] and n > maxconn:
                sys.exit(f"bench: idle: {n} connections are more than HAProxy's maxconn {maxconn} under the fd limit "
                         f"{limit}: pass a smaller --idle-conns")
        for npods in args.idle_pods:
            arms = {}
            for arm in IDLE_ARMS[npods]:
                arms[arm] = idle_arm(arm, npods, args, tmp, maxconn=maxconn, maxpipes=maxpipes)
                print(f"  idle {npods} pod(s), {arm}: {arms[arm]['opened']}", flush=True)
            direct = arms["direct"]["per_conn"]
            for arm, r in arms.items():
                pc = r["per_conn"]
                if arm != "direct":  # measured: the host's slab beyond the clients' and servers' own
                    pc["object_caches_vs_direct_kib"] = pc["object_caches_kib"] - direct["object_caches_kib"]
                    pc["slab_vs_direct_kib"] = pc["slab_kib"] - direct["slab_kib"]
            out["layouts"][str(npods)] = arms
    return out


def cni_add(conf_path, env):
    """One `netsteer-cni ADD` as the runtime runs it (netconf on stdin, result on stdout): ms from
    spawn to exit, its exit status, its major page faults (pages of the binary read from disk: the
    page cache had dropped them), and the CLOCK_MONOTONIC ns of the spawn and of the reap (the
    plugin's own marks, NETSTEER_CNI_TRACE, fall between them)."""
    t0 = time.monotonic_ns()
    pid = os.posix_spawn(nstest.NETSTEER_CNI, [nstest.NETSTEER_CNI], env,
                         file_actions=[(os.POSIX_SPAWN_OPEN, 0, conf_path, os.O_RDONLY, 0),
                                       (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
                                       (os.POSIX_SPAWN_OPEN, 2, "/dev/null", os.O_WRONLY, 0)])
    _, status, usage = os.wait4(pid, 0)
    t1 = time.monotonic_ns()
    return (t1 - t0) / 1e6, os.waitstatus_to_exitcode(status), usage.ru_majflt, t0, t1


# An ADD's phases, from the plugin's trace marks (src/cni/trace.cpp) and the bench's spawn and reap.
ADD_PHASES = (("start", "spawn", "main"),      # exec, the kernel's and libc's start-up of the static binary
              ("prepare", "main", "connect"),  # stdin, the netconf, opening the pod's netns
              ("agent", "connect", "reply"),   # connect, the request with the fd, the agent's enrol, the reply
              ("answer", "reply", "end"),      # the CNI result on stdout
              ("exit", "end", "reap"))         # the trace line, exit, and this process woken by wait4


def add_phases(trace_path, spans):
    """{container id: {phase: ms}} for the ADDs of one burst: `spans` {id: (spawn ns, reap ns)},
    the plugin's marks read from trace_path (then removed)."""
    out = {}
    with contextlib.suppress(FileNotFoundError):
        with open(trace_path) as f:
            for line in f:
                m = json.loads(line)
                if m["id"] in spans and all(m[k] for k in ("main", "connect", "reply", "end")):
                    m["spawn"], m["reap"] = spans[m["id"]]
                    out[m["id"]] = {name: (m[b] - m[a]) / 1e6 for name, a, b in ADD_PHASES}
        os.unlink(trace_path)
    return out


def cli_startup(runs):
    """What the kubelet and an operator wait for per call: exec to exit of `netsteerctl --help` and
    `netsteer-cni` VERSION, and of /bin/true (the exec floor of this host) in the same run
    (hyperfine, no shell, `runs` runs each after 100 warm-ups). ms. Also what the start-up trace
    (NETSTEER_CNI_TRACE, which the control-plane bench sets for every ADD) adds to a run: VERSION
    through env(1) with and without it (env's own exec in both)."""
    with tempfile.TemporaryDirectory() as d:
        trace = os.path.join(d, "trace.jsonl")
        cmds = {"netsteerctl --help": [nstest.NETSTEERCTL, "--help"], "netsteer-cni VERSION": [nstest.NETSTEER_CNI],
                "/bin/true": ["/bin/true"],
                "env netsteer-cni VERSION": ["env", nstest.NETSTEER_CNI],
                "env NETSTEER_CNI_TRACE=… netsteer-cni VERSION": ["env", f"NETSTEER_CNI_TRACE={trace}",
                                                                  nstest.NETSTEER_CNI]}
        out = os.path.join(d, "hyperfine.json")
        subprocess.run(["hyperfine", "-N", "--style", "none", "--warmup", "100", "--runs", str(runs),
                        "--export-json", out] + [shlex.join(c) for c in cmds.values()],
                       env=dict(os.environ, CNI_COMMAND="VERSION"), check=True, capture_output=True)
        results = json.load(open(out))["results"]
        with open(trace) as f:
            if sum(1 for _ in f) < runs:
                raise RuntimeError("netsteer-cni VERSION with NETSTEER_CNI_TRACE wrote fewer trace lines than runs")
    return {name: {"mean_ms": r["mean"] * 1000, "median_ms": r["median"] * 1000, "stddev_ms": r["stddev"] * 1000,
                   "user_ms": r["user"] * 1000, "system_ms": r["system"] * 1000, "runs": len(r["times"])}
            for name, r in zip(cmds, results)}


def pct(lat, q):
    return lat[min(len(lat) - 1, int(len(lat) * q))]


def bench_pods(a, tmp, n, strict, first=0):
    """n pod netns, each with a veth and an address, and the netconf and CNI environment of its ADD."""
    pods, adds = [], []
    try:
        for i in range(first, first + n):
            ns = nstest.Netns(nstest.unique("bp"))
            pods.append(ns)
            ip = f"10.{200 + i // 60000}.{(i // 250) % 240}.{i % 250 + 1}"
            ns.ip(f"link add eth0 type veth peer name p{i % 1000}")
            ns.ip(f"addr add {ip}/32 dev eth0")
            ns.ip("link set eth0 up")
            conf = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "netsteer-cni",
                    "socketPath": a.socket, "timeoutMs": 10000, "strict": strict,
                    "prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": ns.path}],
                                   "ips": [{"address": f"{ip}/32", "interface": 0}]}}
            path = os.path.join(tmp, f"{i}.json")
            with open(path, "w") as f:
                json.dump(conf, f)
            adds.append((path, {"PATH": os.environ["PATH"], "CNI_COMMAND": "ADD", "CNI_CONTAINERID": f"c{i}",
                                "CNI_NETNS": ns.path, "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni",
                                "CNI_ARGS": f"K8S_POD_NAMESPACE=bench;K8S_POD_NAME=p{i};K8S_POD_UID={ns.name}"}))
    except BaseException:
        for ns in pods:
            ns.close()
        raise
    return pods, adds


def checked_add(path, env, i, cold, spans):
    """ms of the ADD; appends it to `cold` too when the ADD read pages of the binary from disk, and
    its spawn and reap times to spans[container id]."""
    ms, rc, majflt, t0, t1 = cni_add(path, env)
    if rc != 0:
        raise RuntimeError(f"netsteer-cni ADD of pod {i} exited {rc}")
    if majflt:
        cold.append(ms)
    spans[env["CNI_CONTAINERID"]] = (t0, t1)
    return ms


def wait_guards(a, deadline):
    """Deferred guards: until the last one is attached (or the deadline)."""
    while a.status().get("guards_pending", 0) and time.time() < deadline:
        time.sleep(0.05)


def cpu_ticks():
    """The host's CPU time from /proc/stat (all CPUs, in USER_HZ): (total, steal). The fields after
    steal (guest, guest_nice) are already counted in user and nice."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return sum(v), v[7]


def steal_pct(t0, t1):
    """% of the host's CPU time between two cpu_ticks() that its hypervisor ran something else."""
    return 100.0 * (t1[1] - t0[1]) / max(1, t1[0] - t0[0])


def pod_burst(a, tmp, n, strict, every_s, cold, first=0):
    """n pods enrolled by their ADDs (back to back, or one every every_s s), then unenrolled: the
    ADDs' ms, the agent's enrol ms, s for all ADDs, s until the last deferred guard was attached,
    the agent's /proc status with the pods enrolled, and the % of CPU time stolen from this VM
    during the ADDs."""
    pods, adds = bench_pods(a, tmp, n, strict, first)
    trace = os.path.join(tmp, "add-trace.jsonl")
    for _, env in adds:
        env["NETSTEER_CNI_TRACE"] = trace
    spans = {}
    try:
        lat = []
        # This process's garbage collector stays off while the ADDs are timed: a full collection
        # over a thousand pods' objects is milliseconds the kubelet does not spend (it showed in
        # the p99 of 1000-pod bursts).
        gc.collect()
        gc.disable()
        try:
            t0, ticks0 = time.time(), cpu_ticks()
            for i, (path, env) in enumerate(adds):
                if every_s:
                    time.sleep(max(0.0, t0 + i * every_s - time.time()))
                lat.append(checked_add(path, env, first + i, cold, spans))
            total, steal = time.time() - t0, steal_pct(ticks0, cpu_ticks())
        finally:
            gc.enable()
        traced = add_phases(trace, spans)
        missing = [env["CNI_CONTAINERID"] for _, env in adds if env["CNI_CONTAINERID"] not in traced]
        if missing:
            raise RuntimeError(f"netsteer-cni wrote no trace for {len(missing)} ADDs ({missing[:3]}...)")
        phases = [traced[env["CNI_CONTAINERID"]] for _, env in adds]
        wait_guards(a, t0 + total + 120)
        guards_done = time.time() - t0
        lst = json.loads(a.ctl("list", "--json").stdout)
        st = proc_status(a.pid)
        for ns in pods:
            a.ctl("unenroll", "--uid", ns.name)
    finally:
        for ns in pods:
            ns.close()
    return lat, [p.get("enrol_ms", 0) for p in lst], total, guards_done, st, steal, phases


ADD_P99_GOAL_MS = 6.0


def add_profile(lat, phases):
    """Where the ADDs' time went (issue 17's start-up profile): per phase the p50 and p99 ms; the
    ADD at the p50 and the ADDs at or above the p99, phase by phase; and for the ADDs over the p99
    goal, the phase that took the most of each."""
    by = {name: sorted(p[name] for p in phases) for name, _, _ in ADD_PHASES}
    order = sorted(range(len(lat)), key=lambda i: lat[i])
    row = lambda i: {"ms": round(lat[i], 3), **{k: round(v, 3) for k, v in phases[i].items()}}  # noqa: E731
    over = [i for i in order if lat[i] > ADD_P99_GOAL_MS]
    worst = {}
    for i in over:
        name = max(phases[i], key=phases[i].get)
        worst[name] = worst.get(name, 0) + 1
    return {"p50_ms": {k: statistics.median(v) for k, v in by.items()},
            "p99_ms": {k: pct(v, 0.99) for k, v in by.items()},
            "median_add": row(order[len(order) // 2]),
            "slowest": [row(i) for i in order[min(len(order) - 1, int(len(order) * 0.99)):][-10:]],
            "over_goal": len(over), "over_goal_by_largest_phase": worst}


def control_plane(sizes, tc_mode, agent_args=(), strict=False, every_s=0.0, single_rounds=20, bursts=1,
                  large_bursts=1):
    """Pod start-up as the kubelet sees it: N pods enrolled back to back, each by a `netsteer-cni
    ADD` process (what the runtime waits for), timed from spawn to exit; then unenrolled. With
    tcx the guards of non-strict pods attach after the ADDs (--guard-attach deferred): also how
    long until the last one is attached. every_s > 0: one ADD starts every every_s seconds
    instead (pods spread out as a kubelet starts them, which meets the deferred attaches).
    1 pod: `single_rounds` rounds of one pod alone on the node (ADD, its guard attached, DEL,
    0.1 s apart); the first is also reported apart (the agent's first enrol: cold code and
    page cache). Up to 100 pods: `bursts` bursts one after another, their ADDs pooled (p50/p99
    over all of them, each burst's slowest ADD listed); total and guards attached per burst. More
    than 100 pods: `large_bursts` bursts, pooled the same way, each burst's p99 and the % of CPU
    the hypervisor stole during it listed, and the p99 over the bursts it stole < 1 % from."""
    out = {}
    a = nstest.Agent(["--tc-mode", tc_mode] + list(agent_args))
    tmp = tempfile.mkdtemp(prefix="netsteer-cni-bench-")
    try:
        a.wait_settled()  # the first spare BPF load holds a pod's fds while it runs
        base = proc_status(a.pid)
        # The agent's hold on the kernel's sk_lookup/tc static keys (README, "Inspecting a pod"):
        # without it a lone pod's ADD also pays the kernel text patch of switching them on.
        static_keys = a.status().get("static_keys")
        for n in sizes:
            if n == 1 and single_rounds > 1:
                lat, agent_lat, total, guards_done, cold, phases = [], [], 0.0, 0.0, [], []
                for r in range(single_rounds):
                    bl, ba, bt, bg, st, _, bp = pod_burst(a, tmp, 1, strict, 0.0, cold, first=r)
                    lat += bl
                    phases += bp
                    agent_lat += ba
                    total += bt
                    guards_done += bg
                    time.sleep(0.1)
                first_ms, first_enrol_ms = lat[0], agent_lat[0]
                total /= single_rounds
                guards_done /= single_rounds
            else:
                # `bursts` bursts of n pods, the ADDs pooled: a p99 over 100 ADDs is their slowest one.
                nb = bursts if n <= 100 else large_bursts
                lat, agent_lat, cold, burst_max, total, guards_done, steal = [], [], [], [], 0.0, 0.0, []
                burst_p99, unstolen, phases = [], [], []
                for b in range(nb):
                    bl, ba, bt, bg, st, bs, bp = pod_burst(a, tmp, n, strict, every_s, cold)
                    steal.append(bs)
                    lat += bl
                    phases += bp
                    agent_lat += ba
                    burst_max.append(max(bl))
                    burst_p99.append(pct(sorted(bl), 0.99))
                    if bs < 1:
                        unstolen += bl
                    total += bt / nb
                    guards_done += bg / nb
                    if b + 1 < nb:
                        a.wait_settled()
            prof = add_profile(lat, phases)
            lat.sort()
            agent_lat.sort()
            row = {"pods": n, "cni_add_p50_ms": statistics.median(lat), "cni_add_p99_ms": pct(lat, 0.99),
                   "add_phases": prof,
                   "cni_add_max_ms": lat[-1], "enrol_p50_ms": statistics.median(agent_lat),
                   "enrol_p99_ms": pct(agent_lat, 0.99), "total_s": total, "guards_attached_s": guards_done,
                   "rss_mb": st["rss_mb"], "threads": st["threads"],
                   "adds_reading_disk": sorted(round(x, 2) for x in cold), "static_keys_held": bool(static_keys)}
            if n == 1 and single_rounds > 1:
                row.update(rounds=single_rounds, first_add_ms=first_ms, first_enrol_ms=first_enrol_ms)
            else:
                row["steal_pct"] = steal
                if len(burst_max) > 1:
                    row.update(bursts=len(burst_max), burst_max_ms=burst_max)
                    if n > 100:
                        row.update(burst_p99_ms=burst_p99, cni_add_p99_unstolen_ms=pct(sorted(unstolen), 0.99)
                                   if unstolen else None)
            a.wait_settled()
            after = proc_status(a.pid)
            row["after_unenrol"] = {"fds_delta": after["fds"] - base["fds"],
                                    "rss_mb_delta": after["rss_mb"] - base["rss_mb"],
                                    "pins_left": len(os.listdir(a.pin_root)) if os.path.exists(a.pin_root) else 0}
            out[str(n)] = row
            print(f"  control plane {n} pods, tc guard as {tc_mode}{' (strict)' if strict else ''}: done", flush=True)
    finally:
        a.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def idle_table(idle):
    n = idle["connections"]
    fmt = lambda v, p=2: "–" if v is None else f"{v:.{p}f}"  # noqa: E731
    lines = ["", f"{n} idle connections, half outbound (pod → remote) and half inbound (remote → pod), each after one "
             f"4-byte request and echo; per connection = (after − before) / {n}. Proxy kernel: the objects the proxy "
             "holds, counted (TCP socks, socket inodes, dentries, files, epoll items, LSM blobs, conntrack entries) × "
             "their slab size, plus its sockets' buffers. Measured slab: the host's, after flushing the per-CPU caches; "
             "an arm's minus the direct arm's (the clients' and servers' own sockets; the direct row shows its own). "
             "Drift: the host's slab moving in 2 s with the connections idle (anything else running on the host).", "",
             "| pods | arm | proxy RSS KiB/conn | proxy fds/conn | proxy pipe fds Δ | proxy kernel KiB/conn | "
             "proxy total KiB/conn | measured slab of those caches KiB/conn | measured slab, all KiB/conn | "
             "TCP sockets/conn | slab drift MiB/2 s |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for npods, arms in idle["layouts"].items():
        for arm, r in arms.items():
            pc, proc = r["per_conn"], r["after"]["proc"]
            pipes = proc["pipes"] - r["before"]["proc"]["pipes"] if proc else "–"
            caches, slab = (pc["object_caches_kib"], pc["slab_kib"]) if arm == "direct" else \
                (pc["object_caches_vs_direct_kib"], pc["slab_vs_direct_kib"])
            lines.append(f"| {npods} | {arm} | {fmt(pc.get('rss_kib'))} | {fmt(pc.get('fds'))} | {pipes} | "
                         f"{fmt(pc.get('proxy_kernel_kib'))} | {fmt(pc.get('proxy_total_kib'))} | {fmt(caches)} | "
                         f"{fmt(slab)} | {fmt(pc['ns_tcp_sockets'])} | {r['slab_drift_kib_2s'] / 1024:.1f} |")
        if "haproxy" not in arms:
            lines.append(f"| {npods} | haproxy | not run: one HAProxy per pod (a sidecar) | | | | | | | | |")
    lines.append("")
    for npods, arms in idle["layouts"].items():
        ns = arms.get("netsteer")
        if not ns:
            continue
        rss, ag = ns["per_conn"]["rss_kib"], ns["agent"]
        lines.append(f"- {npods} pod(s): netsteer user memory {rss:.2f} KiB per idle connection (target <= 2): "
                     f"{'met' if rss <= 2 else 'NOT met'}")
        lines.append(f"- {npods} pod(s): pipes held by idle connections (target 0): netsteer pipes_in_use "
                     f"{ag['pipes_in_use']} (its idle pool: {ag['pipes_idle']})"
                     + (f"; HAProxy: {hp['after']['proc']['pipes'] - hp['before']['proc']['pipes']} pipe fds more than "
                        f"before the connections" if (hp := arms.get("haproxy")) else ""))
        if "haproxy" in arms:
            a, h = ns["per_conn"]["proxy_total_kib"], arms["haproxy"]["per_conn"]["proxy_total_kib"]
            lines.append(f"- {npods} pod(s): netsteer/HAProxy total per connection (target <= 1): {a:.2f} / {h:.2f} KiB "
                         f"= {a / h:.2f}")
    lines.append(f"- fd limit {idle['nofile_limit']}; HAProxy maxconn {idle['haproxy_maxconn']}, "
                 f"maxpipes {idle['haproxy_maxpipes']}")
    return lines


def cpu_split_lines(dp):
    """Where each arm's CPU goes (CpuSplit), and what it bounds: the goals of issue 17 that a
    relay's own code can and cannot reach on this CPU-bound host."""
    have = [a for a in dp if dp[a]["outbound"]["http"].get("cpu_split_us_per_conn")]
    if not have:
        return []
    lines = ["", "| arm | dir | load gen. user/kernel | server user/kernel | proxy user/kernel | other | total | host idle % |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for load, key, unit, fmt in (("http", "cpu_split_us_per_conn", "µs/conn", "{:.1f}"),
                                 ("bulk8", "cpu_split_s_per_gb", "s/GB", "{:.3f}")):
        for arm in have:
            for d in ("outbound", "inbound"):
                sp = dp[arm][d][load].get(key)
                if not sp:
                    continue
                uk = lambda v: f"{fmt.format(v['user'])} / {fmt.format(v['sys'])}"  # noqa: E731
                lines.append(f"| {arm} ({unit}) | {d} | {uk(sp['client'])} | {uk(sp['server'])} | {uk(sp['proxy'])} | "
                             f"{fmt.format(sp['other'])} | {fmt.format(sp['total'])} | {sp.get('idle_pct', 0):.1f} |")
    res = {}
    for d in ("outbound", "inbound"):
        sp = lambda arm, load, key: dp[arm][d][load].get(key) if arm in have else None  # noqa: E731
        n, h, x = (sp(a, "http", "cpu_split_us_per_conn") for a in ("netsteer", "haproxy", "direct"))
        if n and h:
            # The best netsteer could do against HAProxy if the relay's own code cost nothing:
            # everything but the kernel's work for the relayed connections stays.
            res[f"{d}: netsteer/haproxy conn/s ceiling with the relay's user time at 0 (target 1.2)"] = \
                h["total"] / (n["total"] - n["proxy"]["user"])
            res[f"{d}: relay kernel µs/conn, netsteer / haproxy"] = n["proxy"]["sys"] / h["proxy"]["sys"]
            # conn/s = busy CPU / CPU per connection: the CPU ratio times the busy ratio.
            res[f"{d}: busy share of the host, netsteer / haproxy (conn/s = CPU ratio x this)"] = \
                (100 - n.get("idle_pct", 0)) / (100 - h.get("idle_pct", 0))
        if n and x:
            # The relay terminates a second TCP connection: its kernel work against the kernel work of
            # one whole direct connection (both ends, nginx's file I/O included).
            res[f"{d}: relay kernel µs/conn / one direct connection's kernel µs"] = \
                n["proxy"]["sys"] / (x["client"]["sys"] + x["server"]["sys"] + x["other"])
        t = sp("tproxy", "http", "cpu_split_us_per_conn")
        if n and t:
            # Same relay, other capture: on a saturated host the latency of a fixed number of
            # connections in flight follows the CPU each one takes.
            res[f"{d}: netsteer/tproxy CPU per connection (the p99 ratio it allows; target 0.9)"] = \
                n["total"] / t["total"]
        # No bound for bulk from the split: the receive work of the relay's socket is charged to
        # whichever task its softirq interrupted (often the sender), and direct bulk leaves the host
        # idle (it is not CPU-bound), so CPU per GB does not bound its throughput ratio.
    lines.append("")
    lines += [f"- {k}: {v:.2f}" for k, v in res.items()]
    return lines


def table(res):
    dp = res.get("data_path", {})
    lines = ["| arm | dir | conn/s | CPU µs/conn | p50 ms | p99 ms | Gbit/s 1 | Gbit/s 8 | CPU s/GB (8) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for arm, r in dp.items():
        for d in ("outbound", "inbound"):
            x = r[d]
            cpu = x["http"].get("cpu_us_per_conn")  # absent from results before 2026-12-03c
            lines.append(f"| {arm} | {d} | {x['http']['conn_per_s']:.0f} | {f'{cpu:.0f}' if cpu else 'n/a'} | "
                         f"{x['http']['p50_ms']:.2f} | "
                         f"{x['http']['p99_ms']:.2f} | {x['bulk1']['gbit_s']:.2f} | {x['bulk8']['gbit_s']:.2f} | "
                         f"{(x['bulk8']['cpu_s_per_gb'] or 0):.2f} |")
    ratios = {}

    def ratio(a, b, d, key, sub):
        if a in dp and b in dp and dp[a][d][sub].get(key) and dp[b][d][sub].get(key):
            return dp[a][d][sub][key] / dp[b][d][sub][key]
    for d in ("outbound", "inbound"):
        ratios[d] = {
            "netsteer/redirect conn/s (target >= 1.1)": ratio("netsteer", "redirect", d, "conn_per_s", "http"),
            "netsteer/tproxy conn/s": ratio("netsteer", "tproxy", d, "conn_per_s", "http"),
            "netsteer/tproxy p99 (target <= 0.9)": ratio("netsteer", "tproxy", d, "p99_ms", "http"),
            "netsteer/redirect p99": ratio("netsteer", "redirect", d, "p99_ms", "http"),
            "netsteer/haproxy conn/s (target >= 1.2)": ratio("netsteer", "haproxy", d, "conn_per_s", "http"),
            "haproxy/netsteer CPU per connection": ratio("haproxy", "netsteer", d, "cpu_us_per_conn", "http"),
            "netsteer/haproxy bulk8 (target >= 1.5)": ratio("netsteer", "haproxy", d, "gbit_s", "bulk8"),
            "netsteer/direct bulk8 (target >= 0.45; inbound >= 0.6, issue 17)": ratio("netsteer", "direct", d, "gbit_s", "bulk8"),
            "netsteer/direct conn/s": ratio("netsteer", "direct", d, "conn_per_s", "http"),
        }
        for v in (a for a in dp if a.startswith("netsteer ")):  # --variant: against netsteer as shipped
            ratios[d].update({f"{v}/netsteer conn/s": ratio(v, "netsteer", d, "conn_per_s", "http"),
                              f"{v}/netsteer bulk8": ratio(v, "netsteer", d, "gbit_s", "bulk8"),
                              f"{v}/netsteer CPU per GB (8)": ratio(v, "netsteer", d, "cpu_s_per_gb", "bulk8"),
                              f"{v}/haproxy bulk8": ratio(v, "haproxy", d, "gbit_s", "bulk8")})
    res["ratios"] = ratios
    lines += cpu_split_lines(dp)
    lines.append("")
    for d, rs in ratios.items():
        for k, v in rs.items():
            lines.append(f"- {d}: {k}: {v:.2f}" if v is not None else f"- {d}: {k}: n/a")
    if "netsteer" in dp and "haproxy" in dp and len(dp["netsteer"].get("rounds", [])) > 1:
        per_round = rounds.ratios(dp["netsteer"]["rounds"], dp["haproxy"]["rounds"])
        for d in ("outbound", "inbound"):
            per = [r[("conn/s", d)] for r in per_round if ("conn/s", d) in r]
            lines.append(f"- {d}: netsteer/haproxy conn/s per round: " + ", ".join(f"{x:.2f}" for x in per))
            cpu = [r[("CPU/conn", d)] for r in per_round if ("CPU/conn", d) in r]
            if cpu:
                lines.append(f"- {d}: haproxy/netsteer CPU per connection per round: " + ", ".join(f"{x:.2f}" for x in cpu))
    dn = res.get("dns_path")
    if dn:
        lines += ["", "| DNS arm | load | queries/s | p50 ms | p99 ms | lost of sent |", "|---|---|---:|---:|---:|---:|"]
        for arm, r in dn.items():
            for load in ("max", "fixed"):
                x = r[load]
                fmt = lambda v: f"{v:.3f}" if v is not None else "n/a"  # noqa: E731
                lines.append(f"| {arm} | {load} | {x['qps']:.0f} | {fmt(x['p50_ms'])} | {fmt(x['p99_ms'])} | "
                             f"{x['lost']} of {x['sent']} |")
        if "netsteer" in dn and "redirect" in dn:
            n, rd = dn["netsteer"], dn["redirect"]
            lines.append(f"- netsteer/redirect queries/s at max load (target >= 1.2): {n['max']['qps'] / rd['max']['qps']:.2f}")
            if n["fixed"]["p99_ms"] and rd["fixed"]["p99_ms"]:
                lines.append(f"- netsteer/redirect p99 at the fixed load (target <= 1): "
                             f"{n['fixed']['p99_ms'] / rd['fixed']['p99_ms']:.2f}")
    up = res.get("udp_path")
    if up:
        lines += ["", "| UDP arm (pod → remote; inbound: remote → pod; iperf3 -u, 1400 B) | load | received Gbit/s | lost % | CPU s/GB |",
                  "|---|---|---:|---:|---:|"]
        for arm, r in up.items():
            for load in UDP_LOADS:
                x = r[load]
                lines.append(f"| {arm} | {load if load != '0' else 'max'} | {x['gbit_s']:.3f} | {x['lost_percent']:.2f} | {(x['cpu_s_per_gb'] or 0):.1f} |")
        for ns_arm, d_arm in (("netsteer", "direct"), ("netsteer inbound", "direct inbound")):
            if ns_arm in up and d_arm in up:
                for load in UDP_LOADS:
                    d = up[d_arm][load]["gbit_s"]
                    if d:
                        lines.append(f"- UDP {ns_arm}/{d_arm} received at {load}: {up[ns_arm][load]['gbit_s'] / d:.2f}")
    sc = res.get("syscalls")
    if sc:
        lines += ["", "| per relayed connection | dir | syscalls | context switches | top system calls (strace -c) |",
                  "|---|---|---:|---:|---|"]
        for arm, r in sc.items():
            for d, x in r.items():
                top = ", ".join(f"{k} {v:.1f}" for k, v in x["by_syscall_per_conn"].items())
                lines.append(f"| {arm} | {d} | {x['syscalls_per_conn']:.1f} | {x['cswitches_per_conn']:.2f} | {top} |")
    al = res.get("access_log")
    if al:
        lines += ["", f"- access log: conn/s off {', '.join(f'{x:.0f}' for x in al['off'])}, on "
                  f"{', '.join(f'{x:.0f}' for x in al['on'])}: on/off {al['ratio_on_off']:.2f} (target >= 0.9)"]
    idle = res.get("idle")
    if idle:
        lines += idle_table(idle)
    if res.get("bpf"):
        lines.append("")
        for k, v in res["bpf"].items():
            target = " (target sk_lookup < 100 ns)" if k.startswith("prog_steer") else ""
            lines.append(f"- BPF {k}: {v['ns_per_run']:.0f} ns per run over {v['runs']} runs{target}")
    if res.get("cli_startup"):
        lines += ["", "| start-up, exec to exit (hyperfine) | mean ms | median ms | user ms | system ms | runs |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name, r in res["cli_startup"].items():
            lines.append(f"| {name} | {r['mean_ms']:.2f} | {r['median_ms']:.2f} | {r['user_ms']:.2f} | "
                         f"{r['system_ms']:.2f} | {r['runs']} |")
        lines.append("- target: netsteerctl --help and netsteer-cni VERSION < 1 ms (issue 17); /bin/true is the floor")
        cs = res["cli_startup"]
        on, off = cs.get("env NETSTEER_CNI_TRACE=… netsteer-cni VERSION"), cs.get("env netsteer-cni VERSION")
        if on and off:
            lines.append(f"- the start-up trace's line (NETSTEER_CNI_TRACE set, as the control-plane bench does for "
                         f"every ADD) adds {on['median_ms'] - off['median_ms']:+.3f} ms to a run by the medians "
                         f"({on['mean_ms'] - off['mean_ms']:+.3f} by the means)")
    if res.get("control_plane"):
        lines += ["", f"/sys/kernel/rcu_expedited = {res.get('rcu_expedited', '?')} during the run (tcx link creation "
                  "waits for an RCU grace period; the default is 0)",
                  "", "| tc guard | pods | CNI ADD p50 ms | p99 ms | max ms | agent enrol p50 / p99 ms | total s | "
                  "guards attached s | RSS MB | threads | fds Δ after | RSS Δ MB after | pins left | ADDs that read "
                  "the binary from disk: ms | CPU stolen by the hypervisor during the ADDs, % |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
        for mode, rows in res["control_plane"].items():
            for n, r in rows.items():
                aft = r["after_unenrol"]
                pods = f"1 (×{r['rounds']}; first ADD {r['first_add_ms']:.1f} ms)" if "rounds" in r else n
                if "bursts" in r:
                    pods = f"{n} (×{r['bursts']}; slowest per burst {', '.join(f'{x:.1f}' for x in r['burst_max_ms'])}"
                    if "burst_p99_ms" in r:
                        q = r["cni_add_p99_unstolen_ms"]
                        pods += (f"; p99 per burst {', '.join(f'{x:.1f}' for x in r['burst_p99_ms'])}; p99 over "
                                 f"the bursts with < 1 % stolen: {'–' if q is None else f'{q:.1f}'}")
                    pods += ")"
                lines.append(f"| {mode} | {pods} | {r['cni_add_p50_ms']:.1f} | {r['cni_add_p99_ms']:.1f} | {r['cni_add_max_ms']:.1f} | "
                             f"{r['enrol_p50_ms']:.2f} / {r['enrol_p99_ms']:.2f} | {r['total_s']:.2f} | {r['guards_attached_s']:.2f} | "
                             f"{r['rss_mb']:.1f} | {r['threads']} | {aft['fds_delta']} | {aft['rss_mb_delta']:.1f} | {aft['pins_left']} | "
                             f"{', '.join(f'{x:.1f}' for x in r.get('adds_reading_disk', [])) or '–'} | "
                             f"{', '.join(f'{x:.1f}' for x in r.get('steal_pct', [])) or '–'} |")
        for mode, rows in res["control_plane"].items():
            off = res["control_plane"].get(f"{mode}, one pod alone, static keys not held (--static-keys off)", {}).get("1")
            held = rows.get("1")
            if off and held:
                lines.append(f"- {mode}, one pod alone, static keys held vs not (same run): agent enrol p50 "
                             f"{held['enrol_p50_ms']:.2f} vs {off['enrol_p50_ms']:.2f} ms, CNI ADD p50 "
                             f"{held['cni_add_p50_ms']:.2f} vs {off['cni_add_p50_ms']:.2f} ms")
        lines += add_profile_lines(res["control_plane"])
    return "\n".join(lines)


def add_profile_lines(cp):
    """The start-up profile: each ADD's phases (ADD_PHASES), p50 and p99, and the slowest ADDs."""
    names = [name for name, _, _ in ADD_PHASES]
    lines = ["", "Where an ADD's time goes (ms; " + "; ".join(f"{n}: {a} → {b}" for n, a, b in ADD_PHASES) + "):", "",
             "| tc guard | pods | " + " | ".join(f"{n} p50 / p99" for n in names) + " | ADDs over "
             f"{ADD_P99_GOAL_MS:.0f} ms: count (largest phase) | slowest ADD: ms = " + " + ".join(names) + " |",
             "|---|---:|" + "---:|" * len(names) + "---|---|"]
    for mode, rows in cp.items():
        for n, r in rows.items():
            pr = r.get("add_phases")
            if not pr:
                continue
            worst = ", ".join(f"{k} {v}" for k, v in sorted(pr["over_goal_by_largest_phase"].items(), key=lambda kv: -kv[1]))
            w = pr["slowest"][-1]
            lines.append(f"| {mode} | {n} | " + " | ".join(f"{pr['p50_ms'][k]:.2f} / {pr['p99_ms'][k]:.2f}" for k in names) +
                         f" | {pr['over_goal']}{f' ({worst})' if worst else ''} | {w['ms']:.2f} = " +
                         " + ".join(f"{w[k]:.2f}" for k in names) + " |")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="10 s per measurement, 1/100/1000 pods")
    ap.add_argument("--secs", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=1, help="data path: every arm this many times, alternating; "
                    "the medians are reported")
    ap.add_argument("--arms", default="direct,netsteer,redirect,tproxy,haproxy")
    ap.add_argument("--wrk-conns", type=int, default=32, help="data path: wrk's connections in flight (32: what "
                    "every saved run used; more keeps the host busy, see bench/RESULTS.md)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=FLAGS",
                    help="also the arm 'netsteer NAME': netsteerd with these flags, in the same alternation, with "
                         "its ratios to netsteer as shipped (an ablation; repeatable), e.g. 'w1=--relay-workers 1'")
    ap.add_argument("--pods", default=None, help="comma list of control-plane sizes")
    ap.add_argument("--json", default="bench/result.json")
    ap.add_argument("--tc-modes", default="tcx,clsact", help="tc guard attach modes measured in the control plane")
    ap.add_argument("--dns", action="store_true", help="also the DNS path (dnsperf; direct, netsteer, REDIRECT)")
    ap.add_argument("--dns-qps", type=int, default=5000, help="the fixed DNS load (queries/s)")
    ap.add_argument("--udp", action="store_true", help="also UDP bulk (iperf3 -u; direct, netsteer)")
    ap.add_argument("--access-log", action="store_true", help="also conn/s with the access log off and on")
    ap.add_argument("--syscalls", action="store_true", help="also system calls and context switches per relayed "
                    "connection, netsteer vs HAProxy (perf stat, strace -c)")
    ap.add_argument("--idle", action="store_true", help="also idle connections: memory, fds and pipes per idle "
                    "relayed connection, netsteer vs HAProxy, 1 and 100 pods (issue 17)")
    ap.add_argument("--idle-conns", type=int, default=10000, help="idle connections held per arm")
    ap.add_argument("--idle-rate", type=int, default=2000, help="idle connections opened per second")
    ap.add_argument("--idle-pods", default="1,100", help=f"pod counts the idle connections are spread over "
                    f"(of {', '.join(map(str, IDLE_ARMS))})")
    ap.add_argument("--pod-bursts", type=int, default=5, help="control plane: bursts of up to 100 pods, one after "
                    "another, their ADDs pooled (a p99 over one burst of 100 is its slowest ADD)")
    ap.add_argument("--large-bursts", type=int, default=3, help="control plane: bursts of each size above 100 "
                    "pods, pooled as --pod-bursts (each burst's p99 and stolen CPU listed)")
    ap.add_argument("--cli-runs", type=int, default=1000, help="start-up of netsteerctl --help and netsteer-cni "
                    "VERSION against /bin/true: hyperfine runs each (0: not measured)")
    ap.add_argument("--rcu-expedited", default="0", help="/sys/kernel/rcu_expedited for the control-plane runs "
                    "(0 = the kernel default; restored after)")
    ap.add_argument("--agent-args", default="", help="extra netsteerd flags for the control-plane agents "
                    "(A/B runs, e.g. --max-inbound-connections 4096)")
    args = ap.parse_args()
    args.secs = args.secs or (10 if args.full else 3)
    args.arms = [a for a in args.arms.split(",") if a]
    args.variants = parse_variants(args.variant, "bench")
    args.arms += list(args.variants)
    sizes = [int(x) for x in (args.pods or ("1,100,1000" if args.full else "1,100")).split(",") if x]
    args.idle_pods = [int(x) for x in args.idle_pods.split(",") if x]
    if any(p not in IDLE_ARMS for p in args.idle_pods):
        sys.exit(f"bench: --idle-pods takes {', '.join(map(str, IDLE_ARMS))}")
    if os.geteuid() != 0:
        sys.exit("bench: run as root (network namespaces)")
    for tool in ("wrk", "iperf3", "nginx", "haproxy", "iptables", "bpftool"):
        if subprocess.run(["which", tool], capture_output=True).returncode:
            sys.exit(f"bench: {tool} missing (scripts/setup.sh installs it)")
    res = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "kernel": os.uname().release,
           "cpus": os.cpu_count(), "secs_per_measurement": args.secs, "wrk_conns": args.wrk_conns}
    def save():  # after every phase: a failure later never loses what was measured
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    with tempfile.TemporaryDirectory(prefix="netsteer-bench-") as tmp:
        if args.arms:
            print("data path ...", flush=True)
            res["data_path"] = data_path(args, tmp)
            save()
        if args.dns:
            print("dns path ...", flush=True)
            res["dns_path"] = dns_path(args, tmp)
            save()
        if args.udp:
            print("udp path ...", flush=True)
            res["udp_path"] = udp_path(args, tmp)
            save()
        if args.syscalls:
            print("system calls per connection ...", flush=True)
            res["syscalls"] = syscall_table(args, tmp)
            save()
        if args.access_log:
            print("access log cost ...", flush=True)
            res["access_log"] = access_log_cost(args, tmp)
            save()
        if args.idle:
            print("idle connections ...", flush=True)
            res["idle"] = idle_connections(args, tmp)
            save()
        print("bpf run time ...", flush=True)
        res["bpf"] = bpf_runtime(tmp)
        save()
    if args.cli_runs:
        print("command-line start-up ...", flush=True)
        res["cli_startup"] = cli_startup(args.cli_runs)
        save()
    print("control plane ...", flush=True)
    # Per tc guard attachment: tcx links (the default; a pod cannot remove them) and clsact
    # filters (netlink). Each tcx link creation waits for an RCU grace period in the kernel.
    # Measured on the kernel's default, rcu_expedited=0 (what nodes boot with), restored after.
    rcu = "/sys/kernel/rcu_expedited"
    rcu_before = open(rcu).read().strip() if os.path.exists(rcu) else None
    res["agent_args"] = args.agent_args
    try:
        if rcu_before is not None:
            with open(rcu, "w") as f:
                f.write(args.rcu_expedited)
            res["rcu_expedited"] = open(rcu).read().strip()
        cp = {}
        for m in (x for x in args.tc_modes.split(",") if x):
            cp[m] = control_plane(sizes, m, shlex.split(args.agent_args), bursts=args.pod_bursts,
                                 large_bursts=args.large_bursts)
            if m == "tcx" and sizes:  # strict pods keep a synchronous attach: measured apart
                cp["tcx strict"] = control_plane([min(sizes[-1], 100)], m, shlex.split(args.agent_args), strict=True,
                                                 bursts=args.pod_bursts)
            if sizes and sizes[0] == 1:
                # Baseline in the same run for the agent's hold on the static keys: without it a lone
                # pod's enrol switches them on (a kernel text patch on every CPU) and its removal off.
                cp[f"{m}, one pod alone, static keys not held (--static-keys off)"] = control_plane(
                    [1], m, shlex.split(args.agent_args) + ["--static-keys", "off"])
            if m == "tcx" and sizes and sizes[-1] >= 100:
                # Baseline in the same run for the fd table sized at start-up: one grown on demand
                # (64 is the kernel's first size), whose doublings each wait a grace period.
                cp["tcx, fd table grown on demand (--fd-table 64)"] = control_plane(
                    [100], m, shlex.split(args.agent_args) + ["--fd-table", "64"], bursts=args.pod_bursts)
            if sizes:  # pods spread out: each ADD can meet the previous pods' deferred attach
                cp[f"{m}, one ADD every 50 ms"] = control_plane([min(sizes[-1], 100)], m, shlex.split(args.agent_args),
                                                               every_s=0.05, bursts=args.pod_bursts)
                if m == "tcx":  # the same without the attacher's pace (the quiet period alone): the baseline
                    cp[f"{m}, one ADD every 50 ms, no pace (--guard-pace off)"] = control_plane(
                        [min(sizes[-1], 100)], m, shlex.split(args.agent_args) + ["--guard-pace", "off"], every_s=0.05,
                        bursts=args.pod_bursts)
        res["control_plane"] = cp
    finally:
        if rcu_before is not None:
            with open(rcu, "w") as f:
                f.write(rcu_before)
    save()
    text = table(res)  # adds the ratios
    print(text)
    save()
    print(f"\nJSON: {args.json}")


if __name__ == "__main__":
    main()
