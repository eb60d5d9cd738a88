#!/usr/bin/env bash
# netsteer demo on one machine: sets up, builds, then
#   1. creates a "pod" netns and a "remote" netns joined by a veth (addresses only inside them),
#   2. starts netsteerd and enrols the pod netns over the SCM_RIGHTS hand-off (netsteerctl enroll),
#   3. shows the proxy listeners owned by netsteerd inside the pod netns (ss),
#   4. connects to 15006 from inside the pod, shows the state file, unenrols.
# (Steering the pod's traffic onto those listeners — capture and relay — is issue 2/6, in progress.)
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
mkdir -p "$RUN/www"; echo "hello from the pod's app" >"$RUN/www/pod.txt"
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

say "inside the pod, 127.0.0.1:15006 reaches netsteerd; the host netns has no such listener"
inpod /usr/bin/python3 -c 'import socket; socket.create_connection(("127.0.0.1",15006),2); print("pod netns: connected to 15006 (netsteerd)")'
ss -Htlnp | grep -q "pid=$AGENT_PID," && echo "host netns: netsteerd listens here too?!" || echo "host netns: no netsteerd listener"
say "the pod's iptables and nft rulesets stay empty"
echo "iptables rules: $(inpod iptables-save 2>/dev/null | grep -c '^-A' || true)   nft: '$(inpod nft list ruleset)'"
say "state file kept for restarts ($RUN/state/state.json)"
cat "$RUN/state/state.json"; echo
say "unenrol: the listeners close"
"$B/netsteerctl" --socket "$SOCK" unenroll --uid demo-web
inpod ss -tlnp
say "agent log"
tail -n 8 "$RUN/agent.log"
