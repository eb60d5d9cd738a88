#!/usr/bin/env python3
"""Who sleeps during inbound bulk: context switches per GB of each party, for one arm.

    sudo /usr/bin/python3 bench/bulk_switches.py ARM[,ARM...] [rounds]   (e.g. netsteer,haproxy 2)

The arms alternate, round by round, on one pod/remote pair: each is read against the others
measured in the same run.

On bench.py's pod/remote pair, iperf3 -P 8 from the remote to the pod for 8 s; over 4 s in its
middle, the voluntary (slept: waited for something) and involuntary (preempted: wanted to run)
context switches of the arm's proxy (all threads), the sending iperf3 and the receiving iperf3
server, per GB moved, and the host's idle share (/proc/stat). Ad hoc, like socket_reuse.c: not
part of bench/run; session 27's reading is in bench/RESULTS.md.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests", "lib"))
os.environ.setdefault("NETSTEER_BUILD", os.path.join(HERE, "..", "build"))
import bench  # noqa: E402


def switches(pid):
    """(voluntary, involuntary) context switches of all of pid's threads."""
    v = n = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            for line in open(f"/proc/{pid}/task/{tid}/status"):
                if line.startswith("voluntary_ctxt_switches"):
                    v += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches"):
                    n += int(line.split()[1])
        except FileNotFoundError:
            pass
    return v, n


def idle_ticks():
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return f[3] + f[4], sum(f)


def one(arm, t, tmp):
    with bench.arm_running(arm, t, tmp) as (a, hp):
        time.sleep(1)
        cl = t.remote.popen(["iperf3", "-c", t.pod_ip, "-p", str(bench.IPERF), "-P", "8", "-t", "8", "-J"],
                            stdout=subprocess.PIPE, text=True)
        time.sleep(2)
        server = t.servers[t.pod.name].procs[-1].pid
        watch = {"proxy": bench.proxy_pids(a, hp), "sender": [cl.pid], "server": [server]}

        def sample():
            return {k: [switches(p) for p in v] for k, v in watch.items()}, idle_ticks(), time.time()
        s0, i0, t0 = sample()
        time.sleep(4)
        s1, i1, t1 = sample()
        out, _ = cl.communicate()
        gbit = json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9
        gb = gbit / 8 * (t1 - t0)
        parts = []
        for k in watch:
            vol = sum(x[0] for x in s1[k]) - sum(x[0] for x in s0[k])
            inv = sum(x[1] for x in s1[k]) - sum(x[1] for x in s0[k])
            parts.append(f"{k} slept {vol / gb:.0f} / preempted {inv / gb:.0f}")
        print(f"{arm}: {gbit:.1f} Gbit/s, host idle {100 * (i1[0] - i0[0]) / (i1[1] - i0[1]):.1f} %; per GB: "
              + ", ".join(parts), flush=True)


def main():
    arms, rounds = sys.argv[1].split(","), int(sys.argv[2]) if len(sys.argv) > 2 else 1
    with tempfile.TemporaryDirectory() as tmp, bench.bench_pair(tmp) as t:
        for _ in range(rounds):
            for arm in arms:
                one(arm, t, tmp)


if __name__ == "__main__":
    main()
