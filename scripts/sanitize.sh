#!/usr/bin/env bash
# Sanitizer variants: builds netsteer with ASan+UBSan (address) or TSan (thread) into
# build-<mode>/ and runs the unit tests and the privileged tests against those binaries. Any
# sanitizer report in a test or in an agent's log fails the run (nstest checks agent logs).
# Usage: scripts/sanitize.sh address|thread [extra ctest args]   (root; after scripts/setup.sh)
set -euo pipefail
mode=${1:?usage: sanitize.sh address|thread}
shift
cd "$(dirname "$0")/.."
src=$PWD
dir=${SANITIZE_BUILD_DIR:-$src/build-$mode}
# -O1 -g1: quick to build, line numbers in reports. A unity build (each target's sources compiled
# as a few large files, the heavy headers parsed once per batch): the ASan build took 3 min 46 s
# instead of ~5.5 min on the 2-core CI machine, and this tree is built from scratch every run.
cmake -S "$src" -B "$dir" -DCMAKE_BUILD_TYPE=None -DCMAKE_C_FLAGS="-O1 -g1" -DCMAKE_CXX_FLAGS="-O1 -g1" \
  -DCMAKE_UNITY_BUILD=ON -DNETSTEER_SANITIZE="$mode" >/dev/null
cmake --build "$dir" -j"$(nproc)" >/dev/null
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:halt_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}
cd "$dir"
# The unit tests, and the privileged tests that drive the agent's threads hardest (control
# server, relay workers, netns executor, handover, crash recovery). The fuzz run, deploy checks
# and the VM/e2e tiers exercise the same code and stay on the release build.
# Two at a time: the tests mostly wait (timeouts, peers, netns setup) and each builds its own
# netns, agent, socket, state dir and pins, so they do not meet; this halves the sanitizer tier's
# test time on the 2-core CI machine. (test_demo, which checks the whole machine for leftovers,
# is not in this set.)
ctest --output-on-failure --timeout 900 -j"${SANITIZE_JOBS:-2}" -L 'unit|privileged' \
  -E 'fuzz|deploy|test_soak|test_labels|test_demo' "$@"
