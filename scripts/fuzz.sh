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
       -I"$ROOT/include" -DSPDLOG_HEADER_ONLY -DSPDLOG_FMT_EXTERNAL -DFMT_HEADER_ONLY -DNETSTEER_VERSION=\"fuzz\")
SRCS=("$ROOT"/src/common/{error,inet,log}.cpp "$ROOT"/src/netns/netns.cpp "$ROOT"/src/protocol/{messages,labels}.cpp
      "$ROOT"/src/cni/netconf.cpp "$ROOT"/src/relay/http_connect.cpp)
objs=()
for s in "${SRCS[@]}"; do
  o="$FUZZ_DIR/obj/$(basename "${s%.cpp}").o"
  if [[ ! -f $o || $s -nt $o ]]; then "$CXX" "${FLAGS[@]}" -fsanitize=fuzzer-no-link -c "$s" -o "$o"; fi
  objs+=("$o")
done
fail=0
for t in protocol netconf http_connect; do
  bin="$FUZZ_DIR/fuzz_$t"
  "$CXX" "${FLAGS[@]}" -fsanitize=fuzzer "$ROOT/tests/fuzz/fuzz_$t.cpp" "${objs[@]}" -lpthread -o "$bin"
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
