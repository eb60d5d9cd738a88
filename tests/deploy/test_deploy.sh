#!/usr/bin/env bash
# deploy/ validation: yamllint, Kubernetes schemas + netsteer policy (validate.mjs), a broken copy
# must fail, and the installer (netsteer-cni install/uninstall) against sample node conflists.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BUILD=${NETSTEER_BUILD:-$ROOT/build}
NPM_DIR=${NETSTEER_NPM_DIR:-/var/cache/netsteer/npm}
export NETSTEER_NPM_DIR=$NPM_DIR

need() {
  if ! eval "$2"; then
    if [[ "${CI:-}" == "true" ]]; then echo "FAIL: $1 missing and CI=true" >&2; exit 1; fi
    echo "SKIP: $1 missing (scripts/setup.sh installs it)"; exit 77
  fi
}
need yamllint "command -v yamllint >/dev/null"
need node "command -v node >/dev/null"
need kubernetes-models "[[ -d $NPM_DIR/node_modules/kubernetes-models ]]"
need netsteer-cni "[[ -x $BUILD/netsteer-cni ]]"

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

echo "== yamllint"
yamllint -s -d '{extends: default, rules: {line-length: {max: 140}}}' "$ROOT"/deploy/*.yaml

echo "== schemas and policy"
node "$HERE/validate.mjs" "$ROOT"/deploy/*.yaml

echo "== a broken manifest is refused"
expect_refused() {  # $1: what, $2: sed expression applied to daemonset.yaml
  sed "$2" "$ROOT/deploy/daemonset.yaml" >"$TMP/daemonset.yaml"
  if node "$HERE/validate.mjs" "$TMP/daemonset.yaml" >"$TMP/out" 2>&1; then
    echo "FAIL: validator accepted $1"; cat "$TMP/out"; exit 1
  fi
  echo "refused ($1): $(tail -n1 "$TMP/out")"
}
expect_refused "a numeric image" 's|image: ghcr.io/netsteer/netsteer:0.1.0|image: 42|'
expect_refused "an extra capability" 's|- NET_BIND_SERVICE|- NET_BIND_SERVICE\n                - SYS_PTRACE|'
expect_refused "hostPID" 's|hostPID: false|hostPID: true|'
expect_refused "maxSurge 1 without --takeover" '/- --takeover$/d'
expect_refused "maxSurge 2" 's|maxSurge: 1|maxSurge: 2|'
expect_refused "an automounted token" 's|automountServiceAccountToken: false|automountServiceAccountToken: true|'
expect_refused "the token in the installer" 's|mountPath: /host/etc/cni/net.d|mountPath: /host/etc/cni/net.d\n            - name: kube-api\n              mountPath: /t|'

echo "== Containerfile copies only what the repo has"
grep -E '^COPY ' "$ROOT/deploy/Containerfile" | grep -v -- '--from=' | while read -r _ src _; do
  [[ -e "$ROOT/$src" ]] || { echo "FAIL: Containerfile copies missing $src"; exit 1; }
done

echo "== installer against sample node configs"
CNI="$BUILD/netsteer-cni"
node -e "process.stdout.write(JSON.stringify(JSON.parse(require('$NPM_DIR/node_modules/yaml').parse(require('fs').readFileSync('$ROOT/deploy/configmap.yaml','utf8')).data['netconf.json'])))" >"$TMP/netconf.json"
check() {  # $1: conf file, $2: python expression over `c` (the parsed file) that must hold
  /usr/bin/python3 - "$1" "$2" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
if not eval(sys.argv[2]):
    sys.exit(f"FAIL: {sys.argv[1]}: {sys.argv[2]} does not hold: {json.dumps(c)}")
PY
}
install() { "$CNI" install --cni-bin-dir "$1/bin" --cni-conf-dir "$1/net.d" --plugin-config "$TMP/netconf.json"; }

# bridge conflist: appended last, bridge untouched, binary copied and executable.
D=$TMP/bridge; mkdir -p "$D/bin" "$D/net.d"
cat >"$D/net.d/10-bridge.conflist" <<'JSON'
{"cniVersion":"1.0.0","name":"bridge","plugins":[{"type":"bridge","bridge":"cni0","ipam":{"type":"host-local","subnet":"10.85.0.0/16"}},{"type":"portmap","capabilities":{"portMappings":true}}]}
JSON
install "$D"
check "$D/net.d/10-bridge.conflist" '[p["type"] for p in c["plugins"]] == ["bridge", "portmap", "netsteer-cni"] and c["plugins"][2]["socketPath"] == "/var/run/netsteer/cni.sock"'
[[ -x "$D/bin/netsteer-cni" ]] || { echo "FAIL: binary not installed"; exit 1; }
echo '{"cniVersion":"1.1.0"}' | CNI_COMMAND=VERSION "$D/bin/netsteer-cni" | grep -q supportedVersions

# calico-like single .conf (plus a later conflist): converted into a conflist, the other file untouched.
D=$TMP/calico; mkdir -p "$D/bin" "$D/net.d"
echo '{"cniVersion":"0.4.0","name":"k8s-pod-network","type":"calico","ipam":{"type":"calico-ipam"},"kubernetes":{"kubeconfig":"/etc/cni/net.d/calico-kubeconfig"}}' >"$D/net.d/10-calico.conf"
echo '{"cniVersion":"1.0.0","name":"zz","plugins":[{"type":"ptp"}]}' >"$D/net.d/99-other.conflist"
install "$D"
[[ ! -e "$D/net.d/10-calico.conf" ]] || { echo "FAIL: .conf left beside its conflist"; exit 1; }
check "$D/net.d/10-calico.conflist" '[p["type"] for p in c["plugins"]] == ["calico", "netsteer-cni"] and c["name"] == "k8s-pod-network" and c["plugins"][0]["kubernetes"]["kubeconfig"].endswith("calico-kubeconfig")'
check "$D/net.d/99-other.conflist" '[p["type"] for p in c["plugins"]] == ["ptp"]'

# already installed: a second install changes nothing (byte for byte).
D=$TMP/bridge
cp "$D/net.d/10-bridge.conflist" "$TMP/before"
install "$D"
cmp "$TMP/before" "$D/net.d/10-bridge.conflist" || { echo "FAIL: reinstall changed the conflist"; exit 1; }

# uninstall: our entry and binary go, the rest stays.
"$CNI" uninstall --cni-bin-dir "$D/bin" --cni-conf-dir "$D/net.d"
check "$D/net.d/10-bridge.conflist" '[p["type"] for p in c["plugins"]] == ["bridge", "portmap"]'
[[ ! -e "$D/bin/netsteer-cni" ]] || { echo "FAIL: binary left after uninstall"; exit 1; }

# no config on the node yet: a clear error, non-zero exit.
D=$TMP/empty; mkdir -p "$D/bin" "$D/net.d"
if install "$D" 2>"$TMP/err"; then echo "FAIL: install succeeded without a CNI config"; exit 1; fi
grep -q "no CNI network config" "$TMP/err"

echo "deploy validation: all checks passed"
