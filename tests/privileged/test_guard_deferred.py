"""Issue 17: with tcx, a non-strict pod's tc guard is attached after its enrol answered
(--guard-attach deferred), off the CNI ADD path; a strict pod's guard is attached before the
answer. Whatever the timing: every pod ends with exactly one ingress and one egress guard link on
its interface, none is left after unenrol (even one that raced its deferred attach), and a
takeover or a restart attaches what was still pending."""
import contextlib
import json
import time

import pytest

import nstest
from nstest import agent, topology

APP = 8080


@pytest.fixture(autouse=True)
def _root():
    nstest.require_root()


def guard_progs(a, uid):
    """The kernel ids of the pod's two guard programs (from its pins)."""
    ids = []
    for name in ("prog_guard_ingress", "prog_guard_egress"):
        ids.append(nstest.bpftool_json("prog", "show", "pinned", f"{a.pin_root}/{uid}/{name}")["id"])
    return tuple(ids)


def tcx_links(progs):
    """How many tcx links (BPF_LINK_TYPE_TCX = 11; Debian's bpftool prints the number) run the
    pod's ingress and egress guard programs, from the kernel's list of links."""
    links = nstest.bpftool_json("link", "show") or []
    tcx = [l for l in links if l.get("type") in (11, "tcx")]
    return tuple(sum(1 for l in tcx if l.get("prog_id") == p) for p in progs)


def wait_no_pending(a, timeout=20):
    deadline = time.time() + timeout
    while a.status()["guards_pending"]:
        assert time.time() < deadline, "deferred guards still pending"
        time.sleep(0.02)


def guard_pkts(a, uid):
    st = a.inspect(uid)["capture"]["bpf_stats"]
    return sum(v for k, v in st.items() if k.startswith(("ingress_", "egress_")) and k.endswith("pkts"))


def test_strict_is_attached_before_the_answer_and_nonstrict_soon_after():
    with agent() as a, topology() as t:
        assert a.status()["guard_attach"] == "deferred"
        t.serve(t.pod, APP)
        t.serve(t.remote, 9000)
        # Strict: the guard enforces, so it is there when the enrol returns.
        a.enrol(t.pod, uid="strict", ip=[t.pod_ip, t.pod_ip6], strict=True, wait_guard=False)
        assert a.inspect("strict")["capture"]["guard"] == "attached"
        progs = guard_progs(a, "strict")
        assert tcx_links(progs) == (1, 1)
        a.ctl("unenroll", "--uid", "strict")
        assert tcx_links(progs) == (0, 0)
        # Non-strict: capture holds at once (sk_lookup + routes); the guard follows.
        a.enrol(t.pod, uid="lax", ip=[t.pod_ip, t.pod_ip6], wait_guard=False)
        assert t.client(t.remote, t.pod_ip, APP, "peer").startswith(t.remote_ip)
        assert a.inspect("lax")["relay"]["inbound"]["opened"] == 1
        wait_no_pending(a)
        assert a.inspect("lax")["capture"]["guard"] == "attached"
        assert tcx_links(guard_progs(a, "lax")) == (1, 1)
        lax_maps = [nstest.bpftool_json("map", "show", "pinned", f"{a.pin_root}/lax/map_ns_config")["id"]]
        assert tcx_links_on_maps(lax_maps) == 2  # what the race test below counts, seen here
        before = guard_pkts(a, "lax")
        assert t.client(t.pod, t.remote_ip, 9000, "peer").startswith(t.pod_ip)
        assert guard_pkts(a, "lax") > before, "the deferred guard does not see the pod's packets"


def tcx_links_on_maps(map_ids):
    """tcx links whose program uses one of these maps (a deferred guard's programs are loaded by
    the attacher, so only the pod's maps, pinned at the enrol, identify them beforehand)."""
    links = nstest.bpftool_json("link", "show") or []
    n = 0
    for l in links:
        if l.get("type") in (11, "tcx"):
            prog = nstest.bpftool_json("prog", "show", "id", str(l["prog_id"]))
            n += bool(set(prog.get("map_ids", [])) & set(map_ids))
    return n


def test_unenrol_racing_the_deferred_attach_leaves_nothing():
    with agent() as a, topology() as t:
        maps = []
        for i in range(15):
            a.enrol(t.pod, uid=f"p{i}", ip=[t.pod_ip], wait_guard=False)
            maps.append(nstest.bpftool_json("map", "show", "pinned", f"{a.pin_root}/p{i}/map_ns_config")["id"])
            a.ctl("unenroll", "--uid", f"p{i}")
        wait_no_pending(a)
        time.sleep(0.1)  # past the attacher's quiet period: a leaked attach would show now
        assert tcx_links_on_maps(maps) == 0
        assert not nstest.os.path.exists(a.pin_root) or nstest.os.listdir(a.pin_root) == []


@contextlib.contextmanager
def pods(n, subnet):
    """n pod netns, each with both ends of a veth inside it (so two guarded interfaces) and one
    address, enrolled by the caller."""
    made = []
    try:
        for i in range(n):
            ns = nstest.Netns(nstest.unique("gd"))
            made.append(ns)
            ns.ip(f"link add eth0 type veth peer name g{i}")
            ns.ip(f"addr add 10.{subnet}.0.{i + 1}/32 dev eth0")
            ns.ip("link set eth0 up")
        yield made
    finally:
        for ns in made:
            ns.close()


def assert_one_guard_each(a, nss):
    wait_no_pending(a)
    for ns in nss:
        assert a.inspect(ns.name)["capture"]["guard"] == "attached"
        assert tcx_links(guard_progs(a, ns.name)) == (2, 2), ns.name  # two interfaces each


@pytest.mark.parametrize("pace", ["on", "off"])
@pytest.mark.parametrize("gap_s", [0, 0.03])
def test_burst_then_every_pod_has_exactly_one_guard(pace, gap_s):
    # Pods back to back or at a steady pace, then none: with the pace (GuardPace, unit-tested on
    # made-up time points) or the quiet period alone, every pod ends with exactly one guard per
    # interface.
    with agent(["--guard-pace", pace]) as a, pods(12, 231) as nss:
        for ns in nss:
            a.enrol(ns, wait_guard=False)
            time.sleep(gap_s)
        assert_one_guard_each(a, nss)


def test_enrols_that_meet_an_attach_make_the_attacher_back_off():
    # Pods arriving a little further apart than a short quiet period: an attach (a grace period
    # under rtnl per tcx link) is met by the next enrol, whose rules and routes then wait for rtnl.
    # The attacher stops after the link in progress and doubles its quiet period, so the rest of
    # the burst is not met again; every pod still ends with exactly one guard per interface (a
    # half-made pair is finished, not duplicated or leaked).
    with agent(["--guard-quiet-ms", "2"]) as a, pods(30, 234) as nss:
        enrolled = []
        for ns in nss:
            a.enrol(ns, wait_guard=False)
            enrolled.append(ns)
            time.sleep(0.01)  # past the quiet period, within the next attach (~8 ms a link here)
            if "an enrol met the attach" in a.logs() and len(enrolled) >= 6:
                break
        assert "an enrol met the attach" in a.logs(), "no enrol met an attach in 30 tries"
        assert_one_guard_each(a, enrolled)
        assert "an enrol did not meet the attach" in a.logs(), "the quiet period never came back down"


@pytest.mark.parametrize("how", ["takeover", "restart"])
def test_pending_guards_are_attached_by_the_next_agent(how):
    # A 1.5 s quiet period keeps the guards pending while the next agent comes.
    with agent(["--guard-quiet-ms", "1500"]) as a, pods(6, 232) as nss:
        for ns in nss:
            a.enrol(ns, wait_guard=False)
        assert a.status()["guards_pending"] == 6
        if how == "takeover":
            a.upgrade()
        else:
            a.kill()
            a.restart()
        assert_one_guard_each(a, nss)


def test_a_failed_handover_queues_the_stopped_guards_again():
    """The handover stops this agent's pending guard attaches (the new agent would make them);
    when the handover then fails, this agent carries on and must attach them itself."""
    import socket
    with agent(["--guard-quiet-ms", "1500"]) as a, pods(2, 233) as nss:
        for ns in nss:
            a.enrol(ns, wait_guard=False)
        assert a.status()["guards_pending"] == 2
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.connect(a.socket)
        s.send(json.dumps({"type": "handover", "version": 1}).encode())
        assert json.loads(s.recv(65536))["pods"] == 2
        s.close()  # never sends handover_done
        deadline = time.time() + 15
        while "handover failed, still serving" not in a.logs():
            assert time.time() < deadline
            time.sleep(0.05)
        assert_one_guard_each(a, nss)
        assert a.logs().count("tc guard queued again (the handover failed)") == 2
