#!/usr/bin/env bash
# The VM kernel matrix: prepares the kernels (cached) and runs tests/vm in each, one line per
# kernel. Exit 0 only if every kernel passed. Under CI=true anything missing is a failure.
# Usage: matrix.sh [BUILD_DIR]      NETSTEER_VM_KERNELS="5.10 6.1 6.12" to choose.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BUILD=${1:-$HERE/../../build}
KERNELS=${NETSTEER_VM_KERNELS:-5.10 6.1 6.12}
for tool in qemu-system-x86_64 cpio depmod modprobe dpkg-deb; do
  if ! command -v "$tool" >/dev/null; then
    echo "matrix.sh: $tool is missing (scripts/setup.sh installs it)"
    [[ ${CI:-} == true ]] && exit 1 || exit 77
  fi
done
# shellcheck disable=SC2086
bash "$HERE/kernels.sh" $KERNELS || { echo "matrix.sh: could not prepare the kernels"; exit 1; }
fail=0
for k in $KERNELS; do
  bash "$HERE/run.sh" "$k" "$BUILD" || fail=1
done
exit $fail
