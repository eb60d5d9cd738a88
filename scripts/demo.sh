#!/usr/bin/env bash
# netsteer demo on one machine: sets up, builds, then
#   1. creates a "pod" netns and a "remote" netns joined by a veth (addresses only inside them),
#   2. starts netsteerd and enrols the pod netns over the SCM_RIGHTS hand-off (netsteerctl enroll),
#   3. shows the proxy listeners owned by netsteerd inside the pod netns (ss),
#   4. when capture is available: curls from the pod and to the pod and prints the counters that
#      prove both went through netsteerd (sk_lookup → 15001/15006 → relay).
# Everything it creates is removed on exit. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh >/dev/null
B=${BUILD_DIR:-build}

POD=netsteer-demo-pod REM=netsteer-demo-remote
RUN=$(mktemp -d /tmp/netsteer-demo.XXXX)
SOCK=$RUN/cni.sock PINS=/sys/fs/bpf/netsteer-demo
AGENT_PID=""
cleanup() {
  set +e
  [[ -n $AGENT_PID ]] && "$B/netsteerctl" --socket "$SOCK" unenroll --uid demo-web >/dev/null 2>&1
  [[ -n $AGENT_PID ]] && kill "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null
  for p in "${SERVERS[@]:-}"; do [[ -n $p ]] && kill "$p" 2>/dev/null; done
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
mkdir -p "$RUN/www"; echo "hello from the remote server" >"$RUN/www/remote.txt"
echo "hello from the pod's app" >"$RUN/www/pod.txt"
inrem /usr/bin/python3 -m http.server --bind :: --directory "$RUN/www" 8000 >/dev/null 2>&1 & SERVERS+=($!)
inpod /usr/bin/python3 -m http.server --bind :: --directory "$RUN/www" 8080 >/dev/null 2>&1 & SERVERS+=($!)

say "start netsteerd (control socket $SOCK)"
"$B/netsteerd" --socket "$SOCK" --pin-root "$PINS" --state-dir "$RUN/state" >"$RUN/agent.log" 2>&1 &
AGENT_PID=$!
for _ in $(seq 100); do [[ -S $SOCK ]] && break; sleep 0.05; done
"$B/netsteerctl" --socket "$SOCK" status

say "enrol the pod: netsteerctl opens /var/run/netns/$POD and sends the fd over SCM_RIGHTS"
"$B/netsteerctl" --socket "$SOCK" enroll --netns /var/run/netns/$POD --uid demo-web --name web \
  --namespace demo --ip 10.250.0.1 --ip fd00:250::1
"$B/netsteerctl" --socket "$SOCK" list

say "listeners inside the pod netns, owned by netsteerd (ss -tlnp in $POD)"
inpod ss -tlnp

sleep 0.3
say "curl from the pod to the remote (outbound capture → 15001 → relay)"
inpod curl -sS --max-time 5 http://10.250.0.2:8000/remote.txt
inpod curl -sS --max-time 5 "http://[fd00:250::2]:8000/remote.txt"
say "curl from the remote to the pod (inbound capture → 15006 → relay → app)"
inrem curl -sS --max-time 5 http://10.250.0.1:8080/pod.txt
say "the pod's iptables and nft rulesets stay empty"
echo "iptables rules: $(inpod iptables-save 2>/dev/null | grep -c '^-A' || true)   nft: '$(inpod nft list ruleset)'"
say "counters (netsteerctl inspect): sk_lookup assignments and relayed connections"
"$B/netsteerctl" --socket "$SOCK" inspect --uid demo-web --json |
  /usr/bin/python3 -c 'import json,sys; p=json.load(sys.stdin); c=p.get("capture",{}); print(json.dumps({"bpf_stats":c.get("bpf_stats"),"relay":p.get("relay"),"tc_mode":c.get("bpf",{}).get("tc_mode")},indent=1))'
say "the same with bpftool: the pod's programs, links and maps pinned under $PINS/demo-web"
ls "$PINS/demo-web" 2>/dev/null || true
bpftool map dump pinned "$PINS/demo-web/map_ns_stats" 2>/dev/null | head -30 || true
say "agent log"
tail -n 8 "$RUN/agent.log"
