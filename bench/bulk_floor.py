#!/usr/bin/env python3
"""Bulk through the cheapest user-space relay, next to netsteer, HAProxy and the direct path.

    sudo /usr/bin/python3 bench/bulk_floor.py [rounds] [secs]

bench/relay_floor.c (built here with gcc into a temporary directory) is a relay with nothing but
the bytes: one blocking thread per direction per connection, socket → pipe → socket with splice
("floor"), or read/write through a 256 KiB buffer ("floor-copy"). It runs in the pod: inbound it
listens on the pod's address and relays to its iperf3 server on 127.0.0.1; outbound it listens
on 127.0.0.1 and relays to the remote's iperf3. No capture, no client address kept.

On bench.py's pod/remote pair, iperf3 -P 8 for `secs` each way, every arm per round, the arms
rotating round by round; the CPU per GB split like bench/run's (the relay under "proxy"). What
any relay must pay for two TCP connections is the floor's CPU per GB: netsteer's over it is what
netsteer's own design costs, and direct's over it is what no relay can recover. Ad hoc, like
bulk_switches.py: not part of bench/run; its reading is in bench/RESULTS.md.
"""
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


def one(arm, direction, t, tmp, binary, secs):
    client, ip = (t.remote, t.pod_ip) if direction == "inbound" else (t.pod, t.remote_ip)
    server = t.servers[(t.pod if direction == "inbound" else t.remote).name].procs[1].pid
    if arm.startswith("floor"):
        fp = floor_running(t, binary, "copy" if arm == "floor-copy" else "splice", direction)
        try:
            dst = t.pod_ip if direction == "inbound" else "127.0.0.1"
            return bench.iperf(client, dst, 8, secs, {"server": [server], "proxy": [fp.pid]}, port=FLOOR_PORT)
        finally:
            fp.kill()
            fp.wait()
    with bench.arm_running(arm, t, tmp) as (a, hp):
        return bench.iperf(client, ip, 8, secs, {"server": [server], "proxy": bench.proxy_pids(a, hp)})


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    secs = int(sys.argv[2]) if len(sys.argv) > 2 else 6
    res = {a: {"inbound": [], "outbound": []} for a in ARMS}
    with tempfile.TemporaryDirectory() as tmp:
        binary = os.path.join(tmp, "relay_floor")
        subprocess.run(["gcc", "-O2", "-pthread", "-o", binary, os.path.join(HERE, "relay_floor.c")], check=True)
        with bench.bench_pair(tmp) as t:
            for r in range(rounds):
                k = r % len(ARMS)
                for arm in ARMS[k:] + ARMS[:k]:
                    for d in ("inbound", "outbound"):
                        x = one(arm, d, t, tmp, binary, secs)
                        res[arm][d].append(x)
                        s = x["cpu_split_s_per_gb"]
                        print(f"round {r} {arm:10} {d:8} {x['gbit_s']:5.1f} Gbit/s {x['cpu_s_per_gb'] or 0:.3f} s/GB "
                              f"(proxy {s['proxy']['user']:.3f} u + {s['proxy']['sys']:.3f} s, idle {s['idle_pct']:.1f} %)",
                              flush=True)
    print("\nmedians | arm | dir | Gbit/s | CPU s/GB | relay s/GB | idle %")
    for arm in ARMS:
        for d in ("inbound", "outbound"):
            xs = res[arm][d]
            med = lambda f: statistics.median(f(x) for x in xs)  # noqa: E731
            print(f"| {arm} | {d} | {med(lambda x: x['gbit_s']):.1f} | {med(lambda x: x['cpu_s_per_gb']):.3f} | "
                  f"{med(lambda x: x['cpu_split_s_per_gb']['proxy']['user'] + x['cpu_split_s_per_gb']['proxy']['sys']):.3f} | "
                  f"{med(lambda x: x['cpu_split_s_per_gb']['idle_pct']):.1f} |")
    for d in ("inbound", "outbound"):
        for num, den in (("netsteer", "floor"), ("netsteer", "direct"), ("floor", "direct"), ("netsteer", "haproxy"),
                         ("floor", "haproxy")):
            rs = [a["gbit_s"] / b["gbit_s"] for a, b in zip(res[num][d], res[den][d])]
            print(f"{d} {num}/{den} Gbit/s per round: median {statistics.median(rs):.2f} ({', '.join(f'{x:.2f}' for x in rs)})")
    if os.environ.get("BULK_FLOOR_JSON"):
        json.dump(res, open(os.environ["BULK_FLOOR_JSON"], "w"), indent=1)


if __name__ == "__main__":
    main()
