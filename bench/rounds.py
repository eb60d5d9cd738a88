#!/usr/bin/env python3
"""Per-round ratios of netsteer to HAProxy, pooled over saved bench/run results.

A goal on a ratio is judged on one run's median of rounds; rounds spread by ±10 % on this 2-core
host, so one run's median moves by several percent between runs. This reads every given results
JSON (default: bench/results/*.json) that has a data path with both arms and per-round data, and
prints each run's medians and the pooled distribution of the per-round ratios (each ratio is
within one round, so both arms met the same host conditions): conn/s, CPU per connection
(HAProxy / netsteer), bulk at 8 streams and its CPU per GB (HAProxy / netsteer), each direction.
Pooled only: the busy share of the host (netsteer / HAProxy; conn/s ≈ CPU/conn × busy), and
CPU/conn with the relay's user time at 0 (a bound on what netsteer's own code can reach).

    bench/rounds.py [results.json ...]
"""
import glob
import json
import os
import statistics as st
import sys

METRICS = {  # name: (netsteer's or HAProxy's load result, the other's) -> the per-round ratio's terms
    "conn/s": lambda n, h: (n["http"]["conn_per_s"], h["http"]["conn_per_s"]),
    "CPU/conn": lambda n, h: (h["http"].get("cpu_us_per_conn"), n["http"].get("cpu_us_per_conn")),
    "bulk8": lambda n, h: (n["bulk8"]["gbit_s"], h["bulk8"]["gbit_s"]),
    "CPU/GB8": lambda n, h: (h["bulk8"].get("cpu_s_per_gb"), n["bulk8"].get("cpu_s_per_gb")),
    # The bounds below read the per-process CPU split (bench/run since session 18). conn/s is, round
    # by round, close to CPU/conn × busy: the share of the host each arm kept busy, netsteer's over
    # HAProxy's (wrk keeps 32 connections in flight, so a cheaper path leaves the CPUs idle more).
    "busy": lambda n, h: (_busy(n["http"]), _busy(h["http"])),
    "busy8": lambda n, h: (_busy(n["bulk8"]), _busy(h["bulk8"])),
    # CPU/conn with the relay's user time at 0: what no change to netsteer's own code can exceed.
    "CPU/conn-u0": lambda n, h: (h["http"]["cpu_us_per_conn"],
                                 n["http"]["cpu_us_per_conn"] - n["http"]["cpu_split_us_per_conn"]["proxy"]["user"]),
}
LISTED = ("conn/s", "CPU/conn", "bulk8", "CPU/GB8")  # per run; the rest only pooled
GOALS = {"conn/s": 1.2, "CPU/conn": 1.2, "CPU/conn-u0": 1.2, "bulk8": 1.5, "CPU/GB8": 1.5}


def _busy(load):
    """The share of the host's CPU a measurement kept busy (%), from its CPU split."""
    split = load.get("cpu_split_s_per_gb") or load["cpu_split_us_per_conn"]
    return 100.0 - split["idle_pct"]


DIRS = ("outbound", "inbound")


def data_paths(doc):
    """Every bench/run data path in a results JSON: the file's own, or those of the runs an
    experiment's file holds (one level of dicts down)."""
    if not isinstance(doc, dict):
        return []
    if "data_path" in doc:
        return [doc["data_path"]]
    return [v for sub in doc.values() if isinstance(sub, dict) for v in data_paths(sub.get("result"))]


def rounds_of(path):
    try:
        doc = json.load(open(path))
    except (OSError, ValueError):
        return []
    out = []
    for dp in data_paths(doc):
        try:
            n, h = dp["netsteer"]["rounds"], dp["haproxy"]["rounds"]
        except (KeyError, TypeError):
            continue
        out += ratios(n, h)
    return out


def wrk_conns(path):
    """wrk's connections in flight in a results JSON's data path (32 before --wrk-conns existed)."""
    try:
        return json.load(open(path)).get("wrk_conns", 32)
    except (OSError, ValueError, AttributeError):
        return 32


def ratios(n, h):
    """Per round, {(metric, direction): ratio} from netsteer's and HAProxy's rounds of one run
    (a ratio whose terms were not measured is left out). bench.py prints its run's from here."""
    out = []
    for rn, rh in zip(n, h):
        r = {}
        for d in DIRS:
            for m, f in METRICS.items():
                try:
                    a, b = f(rn[d], rh[d])
                except (KeyError, TypeError):
                    continue
                if a and b:
                    r[(m, d)] = a / b
        out.append(r)
    return out


def main(paths):
    here = os.path.dirname(os.path.abspath(__file__))
    paths = paths or sorted(glob.glob(os.path.join(here, "results", "*.json")))
    pooled = {}
    for p in paths:
        rs = rounds_of(p)
        if not rs:
            continue
        # Runs at another wrk load (bench/run --wrk-conns) are listed, not pooled: conn/s depends on it.
        conns = wrk_conns(p)
        cells = []
        for key in [(m, d) for m in METRICS for d in DIRS]:
            v = [r[key] for r in rs if key in r]
            if conns == 32:
                pooled.setdefault(key, []).extend(v)
            cells.append(f"{st.median(v):.2f}" if v else "-")
        print(f"{os.path.basename(p):42s} rounds {len(rs)}  " + "  ".join(
            f"{m} {cells[2 * i]}/{cells[2 * i + 1]}" for i, m in enumerate(METRICS) if m in LISTED) +
            ("" if conns == 32 else f"  (wrk {conns} connections: not pooled)"))
    print("\npooled per-round ratios, netsteer vs HAProxy (outbound, inbound):")
    for (m, d), v in pooled.items():
        if len(v) < 2:
            continue
        v.sort()
        q = st.quantiles(v, n=4)
        goal = GOALS.get(m)
        print(f"  {m:11s} {d:8s} rounds {len(v):3d}  median {st.median(v):.2f}  quartiles {q[0]:.2f}-{q[2]:.2f}"
              f"  range {v[0]:.2f}-{v[-1]:.2f}" +
              (f"  rounds >= {goal}: {sum(x >= goal for x in v) / len(v):.0%}" if goal else ""))


if __name__ == "__main__":
    main(sys.argv[1:])
