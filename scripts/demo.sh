#!/usr/bin/env bash
# netsteer demo on one machine: sets up, builds, then
#   1. creates a "pod" netns and a "remote" netns joined by a veth (addresses only inside them),
#      with an HTTP server in each,
#   2. starts netsteerd and enrols the pod netns over the SCM_RIGHTS hand-off (netsteerctl enroll),
#   3. curls from the pod to the remote and from the remote to the pod, showing the BPF and relay
#      counters move and the app seeing the real client address; a DNS lookup (getent) answered
#      by dnsmasq in the remote through the agent's 15053, UDP both ways on opt-in ports (the
#      pod's app sees the real client), a hand-off of the inbound listener to HAProxy
#      (netsteerctl exec),
#   4. SIGKILLs the agent (inbound fails closed), restarts it (pod steered again, no re-enrol),
#   5. unenrols and shows nothing is left (rules, routes, pins).
# Everything it creates is removed on exit. Run as root.
# NETSTEER_DEMO_PREBUILT=1 skips setup and build (tests/privileged/test_demo.py runs it that way
# against BUILD_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z ${NETSTEER_DEMO_PREBUILT:-} ]]; then
  bash scripts/setup.sh
  bash scripts/build.sh >/dev/null
fi
B=${BUILD_DIR:-build}

POD=netsteer-demo-pod REM=netsteer-demo-remote
RUN=$(mktemp -d /tmp/netsteer-demo.XXXX)
SOCK=$RUN/cni.sock PINS=/sys/fs/bpf/netsteer-demo
AGENT_PID=""
cleanup() {
  set +e
  [[ -n $AGENT_PID ]] && "$B/netsteerctl" --socket "$SOCK" unenroll --uid demo-web >/dev/null 2>&1
  [[ -n $AGENT_PID ]] && kill "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null
  for p in "${SERVERS[@]:-}"; do [[ -n $p ]] && kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
  [[ -s $RUN/dnsmasq.pid ]] && kill "$(cat "$RUN/dnsmasq.pid")" 2>/dev/null
  rm -rf "/etc/netns/$POD"
  ip netns del $POD 2>/dev/null; ip netns del $REM 2>/dev/null
  rm -rf "$PINS" "$RUN"
}
trap cleanup EXIT
SERVERS=()
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
inpod() { nsenter --net=/var/run/netns/$POD "$@"; }
inrem() { nsenter --net=/var/run/netns/$REM "$@"; }

say "topology: pod netns $POD (10.250.0.1, fd00:250::1) <-veth-> remote netns $REM (10.250.0.2, fd00:250::2)"
ip netns del $POD 2>/dev/null || true; ip netns del $REM 2>/dev/null || true
ip netns add $POD; ip netns add $REM
ip link add nsdemo0 netns $POD type veth peer name eth0 netns $REM
ip -n $POD link set nsdemo0 name eth0
for spec in "$POD 10.250.0.1 fd00:250::1" "$REM 10.250.0.2 fd00:250::2"; do
  set -- $spec
  ip -n "$1" link set lo up
  ip -n "$1" addr add "$2/24" dev eth0
  ip -n "$1" addr add "$3/64" dev eth0 nodad
  ip -n "$1" link set eth0 up
done
mkdir -p "$RUN/www" "$RUN/rwww"
echo "hello from the pod's app" >"$RUN/www/pod.txt"; echo "hello from the remote" >"$RUN/rwww/remote.txt"
# nsenter itself, not the inpod/inrem functions: a backgrounded function runs in a subshell, so $!
# would be that subshell and the cleanup would leave python running. nsenter execs python (same pid).
nsenter --net=/var/run/netns/$POD /usr/bin/python3 -m http.server --bind :: --directory "$RUN/www" 8080 \
  >"$RUN/pod-app.log" 2>&1 & SERVERS+=($!)
nsenter --net=/var/run/netns/$REM /usr/bin/python3 -m http.server --bind :: --directory "$RUN/rwww" 8000 \
  >/dev/null 2>&1 & SERVERS+=($!)
UDP_TOOL=$(cd "$(dirname "$0")/.." && pwd)/tests/lib/udp_tool.py  # UDP echo servers that say whom they saw
nsenter --net=/var/run/netns/$POD /usr/bin/python3 "$UDP_TOOL" echo 7100 >/dev/null 2>&1 & SERVERS+=($!)
nsenter --net=/var/run/netns/$REM /usr/bin/python3 "$UDP_TOOL" echo 7001 >/dev/null 2>&1 & SERVERS+=($!)

start_agent() {
  "$B/netsteerd" --socket "$SOCK" --pin-root "$PINS" --state-dir "$RUN/state" >>"$RUN/agent.log" 2>&1 &
  AGENT_PID=$!
  for _ in $(seq 200); do "$B/netsteerctl" --socket "$SOCK" status >/dev/null 2>&1 && return; sleep 0.05; done
  echo "netsteerd did not start"; cat "$RUN/agent.log"; exit 1
}
say "start netsteerd (control socket $SOCK)"
start_agent
"$B/netsteerctl" --socket "$SOCK" status | grep -E "kernel|tc_mode|relay_workers"
for _ in $(seq 100); do inpod ss -Htln | grep -q :8080 && inrem ss -Htln | grep -q :8000 && break; sleep 0.05; done

say "enrol the pod: netsteerctl opens /var/run/netns/$POD and sends the fd over SCM_RIGHTS"
"$B/netsteerctl" --socket "$SOCK" enroll --netns /var/run/netns/$POD --uid demo-web --name web \
  --namespace demo --ip 10.250.0.1 --ip fd00:250::1 --udp-outbound-port 7001 --udp-inbound-port 7100
"$B/netsteerctl" --socket "$SOCK" list

counters() {
  "$B/netsteerctl" --socket "$SOCK" inspect --uid demo-web --json | /usr/bin/python3 -c '
import json,sys; p=json.load(sys.stdin); b=p["capture"]["bpf_stats"]; r=p["relay"]
print("  bpf: outbound_assigned=%d inbound_assigned=%d passed_bypass=%d drop_no_listener=%d egress_marked_pkts=%d" % (
  b["outbound_assigned"], b["inbound_assigned"], b["passed_bypass"], b["drop_no_listener"], b["egress_marked_pkts"]))
print("  relay: outbound opened=%d bytes_down=%d | inbound opened=%d bytes_down=%d" % (
  r["outbound"]["opened"], r["outbound"]["bytes_down"], r["inbound"]["opened"], r["inbound"]["bytes_down"]))'
}

say "capture installed in the pod: policy rules, table 133, listeners (and no iptables/nft rules)"
inpod ip rule; inpod ip route show table 133; inpod ip -6 route show table 133
inpod ss -tlnp
echo "iptables rules: $(inpod iptables-save 2>/dev/null | grep -c '^-A' || true)   nft: '$(inpod nft list ruleset)'"
counters

say "outbound: curl from the pod to the remote (http://10.250.0.2:8000 and [fd00:250::2]) goes through 15001"
inpod curl -sS --max-time 5 http://10.250.0.2:8000/remote.txt
inpod curl -sS --max-time 5 "http://[fd00:250::2]:8000/remote.txt"
counters

say "inbound: curl from the remote to the pod's app (:8080) goes through 15006; the app logs the real client"
inrem curl -sS --max-time 5 http://10.250.0.1:8080/pod.txt
inrem curl -sS --max-time 5 "http://[fd00:250::1]:8080/pod.txt"
echo "pod app access log:"; tail -n 2 "$RUN/pod-app.log"
counters

say "tunnel: curl -p -x http://10.250.0.1:15008 (HTTP CONNECT to the pod's app)"
inrem curl -sS --max-time 5 -p -x http://10.250.0.1:15008 http://10.250.0.1:8080/pod.txt

say "DNS: getent (glibc) in the pod asks dnsmasq in the remote; sk_lookup steers it to 15053, the agent answers from 10.250.0.2:53"
nsenter --net=/var/run/netns/$REM dnsmasq --no-resolv --no-hosts --bind-interfaces --listen-address=10.250.0.2 \
  --address=/web.demo/10.250.0.80 --pid-file="$RUN/dnsmasq.pid" --user=root
mkdir -p "/etc/netns/$POD"; echo "nameserver 10.250.0.2" >"/etc/netns/$POD/resolv.conf"
ip netns exec $POD getent hosts web.demo
"$B/netsteerctl" --socket "$SOCK" inspect --uid demo-web --json | /usr/bin/python3 -c '
import json,sys; d=json.load(sys.stdin)["dns"]
print("  dns: queries=%d answers=%d NOERROR=%d (no iptables rule, no conntrack entry)" % (d["queries"], d["answers"], d["rcodes"]["NOERROR"]))'

say "UDP (opt-in ports): pod -> remote:7001 through 15001/udp, remote:5555 -> the pod's app on 7100 through 15006/udp"
echo "pod asks the remote (the echo says whom it saw: the agent's socket in the pod):"
inpod /usr/bin/python3 "$UDP_TOOL" ask 10.250.0.2 7001 3
echo "remote asks the pod's app from port 5555 (the app saw the real client 10.250.0.2 5555):"
inrem /usr/bin/python3 "$UDP_TOOL" ask 10.250.0.1 7100 3 --bind 5555
"$B/netsteerctl" --socket "$SOCK" inspect --uid demo-web --json | /usr/bin/python3 -c '
import json,sys; u=json.load(sys.stdin)["udp"]
print("  udp: outbound_flows=%d inbound_flows=%d datagrams up=%d down=%d" % (u["outbound_flows"], u["inbound_flows"], u["datagrams_up"], u["datagrams_down"]))'

say "hand-off: netsteerctl exec gives the pod's inbound listener to an unmodified HAProxy (bind fd@3); killing it gives it back"
cat >"$RUN/haproxy.cfg" <<CFG
global
  log stdout format raw local0
defaults
  mode tcp
  log global
  timeout connect 3s
  timeout client 10s
  timeout server 10s
frontend inbound
  bind fd@3 namespace $POD
  log-format "haproxy: client=%[src]:%[src_port] original destination=%[dst]:%[dst_port]"
  default_backend orig
backend orig
  server o 0.0.0.0:0 namespace *
CFG
"$B/netsteerctl" --socket "$SOCK" exec --uid demo-web --listeners inbound --exempt-uid 0 -- \
  haproxy -db -f "$RUN/haproxy.cfg" >"$RUN/haproxy.log" 2>&1 & SERVERS+=($!); HAPROXY_PID=$!
for _ in $(seq 100); do grep -q "leased to" "$RUN/agent.log" && break; sleep 0.05; done; sleep 0.3
inrem curl -sS --max-time 5 http://10.250.0.1:8080/pod.txt
kill "$HAPROXY_PID"; wait "$HAPROXY_PID" 2>/dev/null || true
grep "^haproxy:" "$RUN/haproxy.log"
grep -o "lease of listeners ended.*" "$RUN/agent.log" | tail -n 1
inrem curl -sS --max-time 5 http://10.250.0.1:8080/pod.txt
echo "pod app access log (the agent relays again: the real client):"; tail -n 1 "$RUN/pod-app.log"

say "fail closed: SIGKILL netsteerd; inbound to the pod is dropped in BPF, not delivered around the relay"
kill -9 "$AGENT_PID"; wait "$AGENT_PID" 2>/dev/null || true; AGENT_PID=""
inrem curl -sS --max-time 2 http://10.250.0.1:8080/pod.txt && echo "DELIVERED?!" || echo "(timed out, as it should)"
echo "bpftool on the pinned stats map (the agent is down), per-CPU values with BTF field names:"
bpftool -j map dump pinned "$PINS/demo-web/map_ns_stats" | /usr/bin/python3 -c 'import json,sys
vals = json.load(sys.stdin)[0]["formatted"]["values"]
print("  drop_no_listener =", sum(v["value"]["drop_no_listener"] for v in vals))'

say "restart netsteerd with the same state dir: it takes the pod over (no re-enrolment)"
start_agent
inrem curl -sS --max-time 5 http://10.250.0.1:8080/pod.txt
counters

say "unenrol: rules, routes, links and pins are gone"
"$B/netsteerctl" --socket "$SOCK" unenroll --uid demo-web
inpod ip rule; echo "table 133: '$(inpod ip route show table 133)'"; echo "pins left under $PINS: $(find "$PINS" -mindepth 1 2>/dev/null | wc -l)"
say "agent log"
tail -n 6 "$RUN/agent.log"
