#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan) and runs each for a bounded time on its
# seed corpus (tests/fuzz/corpus/<target>). A crash fails the run and leaves the input in
# ${FUZZ_DIR}/crash-*; turn it into a unit test. Long run: FUZZ_SECONDS=3600 scripts/fuzz.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
FUZZ_DIR=${FUZZ_DIR:-$ROOT/build-fuzz}
SECONDS_EACH=${FUZZ_SECONDS:-20}
CXX=${FUZZ_CXX:-clang++}
if ! command -v "$CXX" >/dev/null; then
  echo "fuzz.sh: $CXX missing (scripts/setup.sh installs clang)"; [[ ${CI:-} == true ]] && exit 1 || exit 77
fi
mkdir -p "$FUZZ_DIR/obj"
FLAGS=(-std=c++20 -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
       -I"$ROOT/include" -DSPDLOG_SHARED_LIB -DSPDLOG_COMPILED_LIB -DSPDLOG_FMT_EXTERNAL -DNETSTEER_VERSION=\"fuzz\")
# spdlog and fmt are Debian's shared builds (not instrumented: they are not what is fuzzed, and
# header-only copies would triple the compile time).
# What the parsers under test need: the whole modules they build on (by directory, so a source
# file added there is linked without editing this list) and the parsers' own files.
SRCS=()
for s in "$ROOT"/src/{common,netns,protocol}/*.cpp "$ROOT"/src/cni/netconf.cpp "$ROOT"/src/relay/http_connect.cpp; do
  [[ $s == *_main.cpp ]] || SRCS+=("$s")
done
objs=()
jobs_max=$(nproc)
newest_header=$(ls -t "$ROOT"/include/netsteer/*/*.h | head -n 1)
for s in "${SRCS[@]}"; do
  rel=${s#"$ROOT"/src/}
  o="$FUZZ_DIR/obj/${rel//\//_}"
  o=${o%.cpp}.o
  objs+=("$o")
  [[ -f $o && ! $s -nt $o && ! $newest_header -nt $o ]] && continue
  rm -f "$o"
  while (( $(jobs -rp | wc -l) >= jobs_max )); do wait -n || true; done
  "$CXX" "${FLAGS[@]}" -fsanitize=fuzzer-no-link -c "$s" -o "$o" &
done
wait
for o in "${objs[@]}"; do [[ -f $o ]] || { echo "fuzz.sh: compiling for $o failed"; exit 1; }; done
fail=0
for t in protocol netconf http_connect; do
  bin="$FUZZ_DIR/fuzz_$t"
  "$CXX" "${FLAGS[@]}" -fsanitize=fuzzer "$ROOT/tests/fuzz/fuzz_$t.cpp" "${objs[@]}" -lspdlog -lfmt -lpthread -o "$bin"
  work="$FUZZ_DIR/corpus-$t"
  mkdir -p "$work"
  cp -n "$ROOT/tests/fuzz/corpus/$t/"* "$work/" 2>/dev/null || true
  echo "== fuzz_$t for ${SECONDS_EACH}s"
  if ! (cd "$FUZZ_DIR" && "$bin" -max_total_time="$SECONDS_EACH" -max_len=8192 -rss_limit_mb=1024 -print_final_stats=1 \
        "$work" 2>"$FUZZ_DIR/fuzz_$t.log"); then
    echo "fuzz_$t FOUND A CRASH:"; tail -n 40 "$FUZZ_DIR/fuzz_$t.log"; fail=1
  else
    grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "$FUZZ_DIR/fuzz_$t.log" | tr '\n' ' '; echo
  fi
done
exit $fail
