#!/usr/bin/env bash
# The README's second command (and what CI runs): installs what is missing,
# builds everything with warnings as errors, checks formatting, and runs every
# test (unit, storage conformance, integration against the real server).
set -euo pipefail
cd "$(dirname "$0")/../.."

tools/dev/deps.sh clang-format python3-yaml

sources=$(git ls-files '*.cc' '*.h' 2>/dev/null || true)
if [ -n "$sources" ]; then
  # shellcheck disable=SC2086
  clang-format --dry-run -Werror $sources
fi

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DIDEM_WERROR=ON >/dev/null
cmake --build build -j"$(nproc)"
(cd build && ctest --output-on-failure -j"$(nproc)" --timeout 300)

# The same tests under AddressSanitizer and UndefinedBehaviorSanitizer (the
# integration tests then run a sanitized idem-server too). About two more
# minutes on 2 cores; IDEM_SKIP_SANITIZERS=1 skips it for a quick local run.
if [ "${IDEM_SKIP_SANITIZERS:-0}" != 1 ]; then
  sanitize="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DIDEM_WERROR=ON \
    -DCMAKE_CXX_FLAGS="$sanitize" -DCMAKE_EXE_LINKER_FLAGS="$sanitize" >/dev/null
  cmake --build build-asan -j"$(nproc)"
  (cd build-asan && ctest --output-on-failure -j"$(nproc)" --timeout 300)
fi
