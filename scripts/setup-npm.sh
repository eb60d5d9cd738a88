#!/usr/bin/env bash
# Installs the npm packages the deploy/ validation test uses (kubernetes-models: the Kubernetes
# JSON schemas as validators, offline once installed; yaml: a YAML parser) into a fixed prefix
# outside the repo. Idempotent: nothing is fetched when the pinned versions are present.
set -euo pipefail
DIR=${NETSTEER_NPM_DIR:-/var/cache/netsteer/npm}
want=("kubernetes-models@4.5.1" "yaml@2.6.1")
have() {
  local name=${1%@*} ver=${1##*@}
  [[ -f "$DIR/node_modules/$name/package.json" ]] &&
    grep -q "\"version\": \"$ver\"" "$DIR/node_modules/$name/package.json"
}
missing=()
for p in "${want[@]}"; do have "$p" || missing+=("$p"); done
if ((${#missing[@]})); then
  echo "setup-npm.sh: installing ${missing[*]} into $DIR"
  mkdir -p "$DIR"
  npm install --no-audit --no-fund --loglevel=error --prefix "$DIR" "${want[@]}" >/dev/null
else
  echo "setup-npm.sh: npm packages present in $DIR"
fi
