#!/usr/bin/env python3
"""Bulk through the cheapest user-space relay, next to netsteer, HAProxy and the direct path.

    sudo /usr/bin/python3 bench/bulk_floor.py [rounds] [secs] [--json F] [--arms A,B,...] [--dirs inbound]
                                              [--variant NAME=FLAGS ...]
    /usr/bin/python3 bench/bulk_floor.py --pool F [F ...]   (the summary over saved runs' rounds)

--arms picks some of the arms (default all five), --dirs one direction, and --variant adds the arm
"netsteer NAME": netsteerd with FLAGS, as bench/run's --variant (e.g. 'noguard=--guard-quiet-ms
60000'), read against netsteer as shipped in the summary.

bench/relay_floor.c (built here with gcc into a temporary directory) is a relay with nothing but
the bytes: one blocking thread per direction per connection, socket → pipe → socket with splice
("floor", the flags netsteer's relay uses), or read/write through a 256 KiB buffer ("floor-copy").
Its "splice-more" mode adds SPLICE_F_MORE to the sending splice: that corks the last segment of
each chunk, and the first two runs of session 28 used it by mistake (bench/RESULTS.md). It runs in the pod: inbound it
listens on the pod's address and relays to its iperf3 server on 127.0.0.1; outbound it listens
on 127.0.0.1 and relays to the remote's iperf3. No capture, no client address kept.

On bench.py's pod/remote pair, iperf3 -P 8 for `secs` each way, every arm per round, the arms
rotating round by round; the CPU per GB split like bench/run's (the relay under "proxy"). What
any relay must pay for two TCP connections is the floor's CPU per GB: netsteer's over it is what
netsteer's own design costs, and direct's over it is what no relay can recover. Ad hoc, like
bulk_switches.py: not part of bench/run; its reading is in bench/RESULTS.md.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests", "lib"))
os.environ.setdefault("NETSTEER_BUILD", os.path.join(HERE, "..", "build"))
import bench  # noqa: E402

FLOOR_PORT = 5203
ARMS = ("direct", "floor", "floor-copy", "netsteer", "haproxy")


def floor_running(t, binary, mode, direction):
    if direction == "inbound":
        ns, listen, upstream = t.pod, t.pod_ip, "127.0.0.1"
    else:
        ns, listen, upstream = t.pod, "127.0.0.1", t.remote_ip
    p = ns.popen([binary, listen, str(FLOOR_PORT), upstream, str(bench.IPERF), mode],
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bench.wait_listening(ns, FLOOR_PORT)
    return p


def ends(t, d):
    """(client netns, the address it dials without a relay, the iperf3 server's pid) for direction d."""
    if d == "inbound":
        return t.remote, t.pod_ip, t.servers[t.pod.name].procs[1].pid
    return t.pod, t.remote_ip, t.servers[t.remote.name].procs[1].pid


def one(arm, t, tmp, binary, secs, dirs=("inbound", "outbound"), agent_args=()):
    """One arm, in each of dirs: {direction: bench.iperf's result}."""
    out = {}
    if arm.startswith("floor"):
        for d in dirs:
            client, _, server = ends(t, d)
            # Its listening address differs by direction, so it is started for each.
            fp = floor_running(t, binary, "copy" if arm == "floor-copy" else "splice", d)
            try:
                dst = t.pod_ip if d == "inbound" else "127.0.0.1"
                out[d] = bench.iperf(client, dst, 8, secs, {"server": [server], "proxy": [fp.pid]}, port=FLOOR_PORT)
            finally:
                fp.kill()
                fp.wait()
        return out
    with bench.arm_running(arm, t, tmp, agent_args=agent_args) as (a, hp):
        for d in dirs:
            client, ip, server = ends(t, d)
            out[d] = bench.iperf(client, ip, 8, secs, {"server": [server], "proxy": bench.proxy_pids(a, hp)})
    return out


def relay_s(x):
    s = x["cpu_split_s_per_gb"]
    return s["proxy"]["user"] + s["proxy"]["sys"]


def summary(runs):
    """Medians over every round of `runs` (results as main() saves them), and per-round ratios."""
    arms = [a for a in runs[0] if all(a in r for r in runs)]
    dirs = [d for d in ("inbound", "outbound") if all(r[a][d] for r in runs for a in arms)]
    pooled = {a: {d: [x for r in runs for x in r[a][d]] for d in dirs} for a in arms}
    print("| arm | dir | Gbit/s | CPU s/GB | relay s/GB | host idle % |")
    for a in arms:
        for d in dirs:
            xs = pooled[a][d]
            med = lambda f: statistics.median(f(x) for x in xs)  # noqa: E731
            print(f"| {a} | {d} | {med(lambda x: x['gbit_s']):.1f} | {med(lambda x: x['cpu_s_per_gb']):.3f} | "
                  f"{med(relay_s):.3f} | {med(lambda x: x['cpu_split_s_per_gb']['idle_pct']):.1f} |")
    # Each pair's rounds are matched round by round (the same round of the same run).
    goal = {"direct": 0.6, "haproxy": 1.5}
    variants = [a for a in arms if a.startswith("netsteer ")]
    for num in ["netsteer", "floor", "floor-copy"] + variants:
        for den in ["floor", "floor-copy", "direct", "haproxy"] + (["netsteer"] if num in variants else []):
            if num == den or num not in arms or den not in arms or (num in ("floor", "floor-copy") and den.startswith("floor")):
                continue
            cells = []
            for d in dirs:
                g = [x["gbit_s"] / y["gbit_s"] for x, y in zip(pooled[num][d], pooled[den][d])]
                c = [y["cpu_s_per_gb"] / x["cpu_s_per_gb"] for x, y in zip(pooled[num][d], pooled[den][d])]
                hit = sum(v >= goal.get(den, 1.0) for v in g)
                cells.append(f"{d} {statistics.median(g):.2f} ({min(g):.2f}-{max(g):.2f}; "
                             f"{hit} of {len(g)} {'reach ' + str(goal[den]) if den in goal else '> 1'}), "
                             f"CPU per GB {den}/{num} {statistics.median(c):.2f}")
            print(f"{num}/{den} Gbit/s per round: " + "; ".join(cells))


def main():
    ap = argparse.ArgumentParser(description="bulk through the floor relay, netsteer, HAProxy and direct")
    ap.add_argument("rounds", nargs="?", type=int, default=3)
    ap.add_argument("secs", nargs="?", type=int, default=6)
    ap.add_argument("--json", help="save the rounds here")
    ap.add_argument("--pool", nargs="+", metavar="F", help="print the summary over saved runs and exit")
    ap.add_argument("--arms", default=",".join(ARMS), help="comma list of " + ", ".join(ARMS))
    ap.add_argument("--dirs", default="inbound,outbound", help="inbound, outbound or both")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=FLAGS",
                    help="also the arm 'netsteer NAME': netsteerd with FLAGS (as bench/run's --variant)")
    args = ap.parse_args()
    if args.pool:
        summary([json.load(open(f)) for f in args.pool])
        return
    variants = bench.parse_variants(args.variant, "bulk_floor")
    arms = [a for a in args.arms.split(",") if a] + list(variants)
    dirs = tuple(d for d in args.dirs.split(",") if d)
    if any(a not in ARMS and a not in variants for a in arms) or any(d not in ("inbound", "outbound") for d in dirs):
        ap.error(f"arms are {', '.join(ARMS)} (and --variant's); directions inbound, outbound")
    rounds, secs, out = args.rounds, args.secs, args.json
    res = {a: {"inbound": [], "outbound": []} for a in arms}
    with tempfile.TemporaryDirectory() as tmp:
        binary = os.path.join(tmp, "relay_floor")
        subprocess.run(["gcc", "-O2", "-pthread", "-o", binary, os.path.join(HERE, "relay_floor.c")], check=True)
        with bench.bench_pair(tmp) as t:
            for r in range(rounds):
                k = r % len(arms)
                for arm in arms[k:] + arms[:k]:
                    for d, x in one(arm, t, tmp, binary, secs, dirs, variants.get(arm, ())).items():
                        res[arm][d].append(x)
                        print(f"round {r} {arm:10} {d:8} {x['gbit_s']:5.1f} Gbit/s {x['cpu_s_per_gb'] or 0:.3f} s/GB "
                              f"(relay {relay_s(x):.3f}, idle {x['cpu_split_s_per_gb']['idle_pct']:.1f} %)", flush=True)
    if out:
        with open(out, "w") as f:
            json.dump(res, f, indent=1)
    print()
    summary([res])


if __name__ == "__main__":
    main()
