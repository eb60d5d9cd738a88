#!/usr/bin/env python3
"""Per-round ratios of netsteer to HAProxy, pooled over saved bench/run results.

A goal on a ratio is judged on one run's median of rounds; rounds spread by ±10 % on this 2-core
host, so one run's median moves by several percent between runs. This reads every given results
JSON (default: bench/results/*.json) that has a data path with both arms and per-round data, and
prints each run's medians and the pooled distribution of the per-round ratios (each ratio is
within one round, so both arms met the same host conditions): conn/s, CPU per connection
(HAProxy / netsteer), bulk at 8 streams and its CPU per GB (HAProxy / netsteer), each direction.

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
}
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
            f"{m} {cells[2 * i]}/{cells[2 * i + 1]}" for i, m in enumerate(METRICS)) +
            ("" if conns == 32 else f"  (wrk {conns} connections: not pooled)"))
    print("\npooled per-round ratios, netsteer vs HAProxy (outbound, inbound):")
    for (m, d), v in pooled.items():
        if len(v) < 2:
            continue
        v.sort()
        q = st.quantiles(v, n=4)
        goal = 1.5 if m in ("bulk8", "CPU/GB8") else 1.2
        print(f"  {m:8s} {d:8s} rounds {len(v):3d}  median {st.median(v):.2f}  quartiles {q[0]:.2f}-{q[2]:.2f}"
              f"  range {v[0]:.2f}-{v[-1]:.2f}  rounds >= {goal}: {sum(x >= goal for x in v) / len(v):.0%}")


if __name__ == "__main__":
    main(sys.argv[1:])
