#!/usr/bin/env bash
# clang-tidy over every C++ source that build/ compiles, with the checks in
# .clang-tidy; any finding fails. Needs a configured build/ (its
# compile_commands.json and generated headers): tools/dev/test.sh runs it
# after the build.
#   tools/dev/tidy.sh            all sources
#   tools/dev/tidy.sh server/    only sources under a path
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
if [ ! -f build/compile_commands.json ]; then
  echo "tidy.sh: build/compile_commands.json is missing; build first" >&2
  exit 2
fi
pattern="^${root}/(storage|server|client|tools|tests)/.*\\.cc\$"
if [ -n "${1:-}" ]; then pattern="^${root}/${1%/}/.*\\.cc\$"; fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# run-clang-tidy's exit code does not reflect findings in clang-tidy 14, so
# the findings are counted from its output.
run-clang-tidy -p build -quiet -j "$(nproc)" "$pattern" >"$log" 2>&1 || true
findings=$(grep -cE '(warning|error): ' "$log" || true)
if [ "$findings" != 0 ]; then
  grep -E -A3 '(warning|error): ' "$log" >&2
  echo "tidy.sh: $findings clang-tidy finding(s)" >&2
  exit 1
fi
echo "tidy.sh: clean ($(grep -c '^clang-tidy' "$log" || true) files)"
