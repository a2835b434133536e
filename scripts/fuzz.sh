#!/usr/bin/env bash
# Runs every fuzz target with libFuzzer under ASan and UBSan, each for SECONDS (default 60), in
# build-fuzz/ (clang). New inputs go to a scratch copy of the corpus, not into the tree; a crash
# stops the run with the input saved as build-fuzz/crash-* (add it to test/fuzz/corpus/TARGET
# once fixed: it then replays in every build's test suite).
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
dir=build-fuzz
if [[ ! -f $dir/build.ninja ]]; then
  CC=clang CXX=clang++ meson setup "$dir" -Dfuzz=true -Dbuildtype=debugoptimized -Db_lto=false \
    -Db_sanitize=address,undefined -Db_lundef=false >/dev/null
fi
ninja -C "$dir" >/dev/null
targets=("$@")
((${#targets[@]})) || targets=(http1_head path policy jwt detect spiffe session http2)
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
for t in "${targets[@]}"; do
  scratch=$(mktemp -d)
  cp -r "test/fuzz/corpus/$t/." "$scratch/"
  echo "fuzz $t for ${seconds}s"
  out=$("$dir/test/fuzz/fuzz_$t" -max_total_time="$seconds" -max_len=65536 -print_final_stats=1 \
          -artifact_prefix="$dir/crash-$t-" "$scratch" 2>&1) || { echo "$out" | tail -40; rm -rf "$scratch"; exit 1; }
  runs=$(echo "$out" | sed -n 's/^stat::number_of_executed_units: *//p')
  echo "  $t: ${runs:-?} runs in ${seconds}s ($(( ${runs:-0} / seconds )) per second), no crash"
  rm -rf "$scratch"
done
echo "fuzz: ${#targets[@]} passed, 0 failed"
