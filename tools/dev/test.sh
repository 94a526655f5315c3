#!/usr/bin/env bash
# The README's second command (and what CI runs): installs what is missing,
# builds everything with warnings as errors, checks formatting, and runs every
# test (unit, storage conformance, integration against the real server).
set -euo pipefail
cd "$(dirname "$0")/../.."

# clang-format checks formatting, clang-tidy the checks in .clang-tidy;
# clang and its runtimes build the sanitizer
# and libFuzzer pass below; the Redis Cluster tests start Debian's
# redis-server (its package also installs, on a systemd host, a default
# Redis service on 127.0.0.1:6379 that the tests do not use), and the
# PostgreSQL tests initialise Debian's PostgreSQL 15 in temp dirs (its
# package's default cluster is not used either).
tools/dev/deps.sh clang-format clang-tidy python3-yaml clang libclang-rt-14-dev \
  redis-server redis-tools postgresql-15

sources=$(git ls-files '*.cc' '*.h' 2>/dev/null || true)
if [ -n "$sources" ]; then
  # shellcheck disable=SC2086
  clang-format --dry-run -Werror $sources
fi

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DIDEM_WERROR=ON >/dev/null
cmake --build build -j"$(nproc)"
# Static checks over every source the build compiles (about 5 minutes on 2
# cores). IDEM_SKIP_TIDY=1 skips it for a quick local run.
if [ "${IDEM_SKIP_TIDY:-0}" != 1 ]; then
  tools/dev/tidy.sh
fi
(cd build && ctest --output-on-failure -j"$(nproc)" --timeout 300)

# The same tests under AddressSanitizer and UndefinedBehaviorSanitizer, built
# by clang so that the libFuzzer targets (tests/fuzz) build and run in the
# same pass (30 s each); the integration tests then run a sanitized
# idem-server too. IDEM_SKIP_SANITIZERS=1 skips it for a quick local run.
if [ "${IDEM_SKIP_SANITIZERS:-0}" != 1 ]; then
  sanitize="-fsanitize=address,undefined,fuzzer-no-link -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
  CC=clang CXX=clang++ cmake -S . -B build-sanitize -DCMAKE_BUILD_TYPE=Debug \
    -DIDEM_WERROR=ON -DIDEM_FUZZ=ON -DIDEM_JEMALLOC=OFF -DIDEM_FUZZ_SECONDS="${IDEM_FUZZ_SECONDS:-30}" \
    -DCMAKE_CXX_FLAGS="$sanitize" \
    -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" >/dev/null
  cmake --build build-sanitize -j"$(nproc)"
  (cd build-sanitize && ctest --output-on-failure -j"$(nproc)" --timeout 300)
fi
