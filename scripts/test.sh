#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds, runs unit and integration tests.
#   scripts/test.sh              release build in build/
#   scripts/test.sh --sanitize   the same suite in an ASan+UBSan build in build-asan/
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh test

if [[ "${1:-}" == "--sanitize" ]]; then
  dir=build-asan
  scripts/build.sh "$dir" -Dbuildtype=debug -Db_sanitize=address,undefined -Db_lundef=false -Db_lto=false
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  # Integration tests time a few things; sanitizers make everything slower.
  export PILOTFISH_TEST_SLOW=1
else
  dir=build
  scripts/build.sh "$dir"
fi
meson test -C "$dir" --print-errorlogs --num-processes 1
