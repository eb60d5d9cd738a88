"""Issue 16 part 3: the connection access log (one JSON object per finished relayed connection,
reopened on SIGHUP, never blocking a relay worker) and `netsteerctl conns` (the connections being
relayed now)."""
import datetime
import json
import os
import re
import signal
import time

import pytest

import nstest
from nstest import agent, topology

APP, REMOTE_PORT = 8080, 9000
FIELDS = {"end", "id", "pod_uid", "namespace", "name", "direction", "client", "destination", "sent_to", "bytes_up",
          "bytes_down", "duration_ms", "reason"}


@pytest.fixture(autouse=True)
def _root():
    nstest.require_root()


def records(path, n, timeout=5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path):
            lines = [json.loads(l) for l in open(path).read().splitlines()]
            if len(lines) >= n:
                return lines
        time.sleep(0.05)
    raise AssertionError(f"{path}: fewer than {n} records: {open(path).read() if os.path.exists(path) else 'missing'}")


def test_each_finished_connection_is_logged_with_its_ends_bytes_and_reason(tmp_path):
    log = str(tmp_path / "access.log")
    with agent(["--access-log", log]) as a, topology() as t:
        t.serve(t.pod, APP)
        t.serve(t.remote, REMOTE_PORT)
        a.enrol(t.pod, ip=[t.pod_ip, t.pod_ip6], name="web", namespace="shop")
        started = datetime.datetime.now(datetime.timezone.utc)
        assert t.client(t.pod, t.remote_ip, REMOTE_PORT, "bytes", 100000) == "ok 100000"
        assert t.client(t.remote, t.pod_ip, APP, "peer").startswith(t.remote_ip)
        assert t.client(t.pod, t.remote_ip, 9999, "probe", check=False) in ("reset", "refused")  # nothing there
        recs = records(log, 3)
        out, inb, bad = recs
        assert set(out) == FIELDS, out
        assert (out["pod_uid"], out["namespace"], out["name"], out["direction"]) == (t.pod.name, "shop", "web", "outbound")
        assert out["client"].startswith(t.pod_ip + ":") and out["destination"] == f"{t.remote_ip}:{REMOTE_PORT}"
        assert out["sent_to"] == "direct" and out["reason"] == "closed" and out["bytes_down"] == 100000, out
        assert len(out["id"]) == 16 and out["id"] != inb["id"]
        assert inb["direction"] == "inbound" and inb["destination"] == f"{t.pod_ip}:{APP}"
        assert inb["client"].startswith(t.remote_ip + ":")
        assert bad["reason"] == "connect_failed" and bad["destination"] == f"{t.remote_ip}:9999", bad
        for r in recs:  # "end": UTC, to the millisecond, when the connection ended
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["end"]), r
            end = datetime.datetime.fromisoformat(r["end"].replace("Z", "+00:00"))
            assert started - datetime.timedelta(seconds=1) <= end <= datetime.datetime.now(datetime.timezone.utc), r
        st = json.loads(a.ctl("status", "--json").stdout)["access_log"]
        assert st["written"] == 3 and st["dropped"] == 0, st


def test_sighup_reopens_the_file_for_logrotate(tmp_path):
    log = str(tmp_path / "access.log")
    with agent(["--access-log", log]) as a, topology() as t:
        t.serve(t.remote, REMOTE_PORT)
        a.enrol(t.pod, ip=[t.pod_ip, t.pod_ip6])
        t.client(t.pod, t.remote_ip, REMOTE_PORT, "peer")
        records(log, 1)
        os.rename(log, log + ".1")  # logrotate: move, then signal
        os.kill(a.pid, signal.SIGHUP)
        deadline = time.time() + 5
        while json.loads(a.ctl("status", "--json").stdout)["access_log"]["reopened"] < 1 and time.time() < deadline:
            time.sleep(0.05)
        t.client(t.pod, t.remote_ip, REMOTE_PORT, "peer")
        assert len(records(log, 1)) == 1 and len(records(log + ".1", 1)) == 1
        assert a.alive()  # SIGHUP never ends the agent


def test_conns_lists_live_connections_with_age_and_bytes():
    with agent() as a, topology() as t:
        t.serve(t.remote, REMOTE_PORT)
        a.enrol(t.pod, ip=[t.pod_ip, t.pod_ip6])
        hold = t.spawn(t.pod, f"""
import socket, time
s = socket.create_connection(("{t.remote_ip}", {REMOTE_PORT}))
s.sendall(b"PEER\\n"); s.recv(100)
print("ready", flush=True)
time.sleep(60)
""")
        time.sleep(0.3)
        c = json.loads(a.ctl("conns", "--json").stdout)
        assert len(c) == 1, c
        c = c[0]
        assert c["pod_uid"] == t.pod.name and c["direction"] == "outbound" and c["state"] == "established"
        assert c["destination"] == f"{t.remote_ip}:{REMOTE_PORT}" and c["bytes_up"] == 5 and c["bytes_down"] > 0, c
        assert c["age_s"] >= 0.2
        assert json.loads(a.ctl("conns", "--uid", t.pod.name, "--json").stdout)[0]["id"] == c["id"]
        assert t.pod.name in a.ctl("conns").stdout
        r = a.ctl("conns", "--uid", "nope", check=False)
        assert r.returncode != 0 and "unknown pod" in r.stderr
        hold.kill()
