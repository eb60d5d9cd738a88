"""Issue 4/6: Prometheus metrics (parsed with prometheus_client), health endpoints, and
netsteerctl inspect agreeing with bpftool's view of the pins."""
import json
import os
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

import nstest
from nstest import agent, topology, run

APP = 8080


@pytest.fixture(autouse=True)
def _root():
    nstest.require_root()


def base_url(a):
    return "http://" + json.loads(a.ctl("status", "--json").stdout)["metrics"]


def scrape(a):
    """{(name, frozenset(labels)): value} from /metrics, via the reference parser."""
    with urllib.request.urlopen(base_url(a) + "/metrics", timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def val(m, name, **labels):
    return m.get((name, frozenset(labels.items())), 0.0)


def test_health_endpoints():
    with agent() as a:
        url = base_url(a)
        for path, code in (("/healthz", 200), ("/readyz", 200)):
            with urllib.request.urlopen(url + path, timeout=5) as r:
                assert r.status == code
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url + "/nope", timeout=5)
        assert e.value.code == 404
        m = scrape(a)
        assert val(m, "netsteer_pods_enrolled") == 0
        assert any(k[0] == "netsteer_build_info" for k in m)


def test_metrics_follow_traffic_and_survive_unenrol_and_restart():
    with agent() as a, topology() as t:
        t.serve(t.pod, APP)
        t.serve(t.remote, 9000)
        m0 = scrape(a)
        uid = t.pod.name
        a.enrol(t.pod, ip=[t.pod_ip, t.pod_ip6])
        m1 = scrape(a)
        assert val(m1, "netsteer_pods_enrolled") == 1
        assert val(m1, "netsteer_enrolments_total", result="enrolled") == val(m0, "netsteer_enrolments_total", result="enrolled") + 1
        assert val(m1, "netsteer_enrol_duration_seconds_count") == val(m0, "netsteer_enrol_duration_seconds_count") + 1
        assert t.client(t.remote, t.pod_ip, APP, "bytes", 100000) == "ok 100000"
        assert t.client(t.pod, t.remote_ip, 9000, "peer").startswith(t.pod_ip)
        m2 = scrape(a)
        assert val(m2, "netsteer_relay_connections_total", direction="inbound") == val(m1, "netsteer_relay_connections_total", direction="inbound") + 1
        assert val(m2, "netsteer_relay_connections_total", direction="outbound") == val(m1, "netsteer_relay_connections_total", direction="outbound") + 1
        assert val(m2, "netsteer_relay_bytes_total", direction="inbound", way="down") >= 100000
        assert val(m2, "netsteer_bpf_sk_lookup_total", outcome="inbound_assigned") >= 1
        assert val(m2, "netsteer_bpf_guard_packets_total", hook="egress", marked="true") > 0
        # A bad enrolment is counted by reason.
        r = a.ctl("enroll", "--netns", t.pod.path, "--uid", "other-uid", check=False)
        assert r.returncode != 0
        assert val(scrape(a), "netsteer_enrol_failures_total", reason="EEXIST") == 1
        # Fail closed while the agent is down; the restarted agent reports the drops from the pins.
        a.kill()
        assert nstest.tcp_connect(t.remote, t.pod_ip, APP, timeout=1) == "timeout"
        a.restart()
        m3 = scrape(a)
        assert val(m3, "netsteer_bpf_drops_total", reason="no_listener") >= 1
        assert val(m3, "netsteer_enrolments_total", result="adopted") == 1
        # Unenrol: the pod's counters stay in the node totals (counters never go down).
        before = val(m3, "netsteer_bpf_sk_lookup_total", outcome="all")
        a.ctl("unenroll", "--uid", uid)
        m4 = scrape(a)
        assert val(m4, "netsteer_pods_enrolled") == 0
        assert val(m4, "netsteer_bpf_sk_lookup_total", outcome="all") >= before


def test_inspect_matches_bpftool():
    with agent() as a, topology() as t:
        t.serve(t.pod, APP)
        uid = t.pod.name
        a.enrol(t.pod, ip=[t.pod_ip, t.pod_ip6])
        assert t.client(t.remote, t.pod_ip, APP, "peer").startswith(t.remote_ip)
        pod = a.inspect(uid)
        pins = os.path.join(a.pin_root, uid)
        bpf = pod["capture"]["bpf"]
        prog = nstest.bpftool_json("prog", "show", "pinned", os.path.join(pins, "prog_steer"))
        assert prog["name"] == "netsteer_steer" and prog["type"] == "sk_lookup"
        link = nstest.bpftool_json("link", "show", "pinned", os.path.join(pins, "link_steer"))
        assert bpf["steer_link_id"] == link["id"] and link["prog_id"] == prog["id"]
        assert link["netns_ino"] == os.stat(t.pod.path).st_ino
        dump = nstest.bpftool_json("map", "dump", "pinned", os.path.join(pins, "map_ns_stats"))
        per_cpu = dump[0]["formatted"]["values"]
        for field in ("lookups", "inbound_assigned", "passed_bypass"):
            assert sum(v["value"][field] for v in per_cpu) == pod["capture"]["bpf_stats"][field], field
        assert pod["capture"]["bpf_stats"]["inbound_assigned"] == 1
