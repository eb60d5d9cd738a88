#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine, builds netsteer and runs the whole test suite
# (CTest labels: unit, privileged). Run as root. Extra arguments go to ctest (e.g. -L unit).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
cd "${BUILD_DIR:-build}"
ctest --output-on-failure --timeout 900 "$@"
