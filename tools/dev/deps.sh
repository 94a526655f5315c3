#!/usr/bin/env bash
# Installs the Debian 12 packages Idem builds with, if any is missing.
# Usage: tools/dev/deps.sh [extra-package ...]   (needs root, or sudo)
set -euo pipefail

packages=(
  g++ cmake make pkg-config
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  grpc-proto librocksdb-dev libabsl-dev libssl-dev libcpp-httplib-dev
  libgtest-dev libgmock-dev libbenchmark-dev libyaml-cpp-dev openssl
  # The HTTP/JSON examples in README.md and docs/http.md.
  curl
  # hiredis: the Redis Cluster store (--store=redis-cluster://).
  libhiredis-dev
  # libpq: the PostgreSQL store (--store=postgresql://).
  libpq-dev
  # idem-server's allocator.
  libjemalloc-dev
  # The Python client (Debian's interpreter /usr/bin/python3) and its tests.
  python3-grpcio python3-protobuf python3-fastapi python3-httpx python3-pytest
  python3-uvicorn
  # The Go client, in GOPATH mode over Debian's Go packages.
  golang-go golang-google-grpc-dev golang-google-protobuf-dev
  golang-github-golang-protobuf-1-5-dev protoc-gen-go protoc-gen-go-grpc
  "$@"
)
# The Node.js client: Debian's nodejs (18) and npm, unless a Node.js is
# there already (NodeSource's 20 carries its own npm, which Debian's npm
# package would conflict with).
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  packages+=(nodejs npm)
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
echo "Installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
