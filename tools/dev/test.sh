#!/usr/bin/env bash
# The README's second command (and what CI runs): installs what is missing,
# builds everything with warnings as errors, checks formatting, and runs every
# test (unit, storage conformance, integration against the real server).
set -euo pipefail
cd "$(dirname "$0")/../.."

tools/dev/deps.sh clang-format

sources=$(git ls-files '*.cc' '*.h' 2>/dev/null || true)
if [ -n "$sources" ]; then
  # shellcheck disable=SC2086
  clang-format --dry-run -Werror $sources
fi

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DIDEM_WERROR=ON >/dev/null
cmake --build build -j"$(nproc)"
cd build
ctest --output-on-failure -j"$(nproc)" --timeout 300
