#!/usr/bin/env bash
# The README's first command: installs what is missing, builds everything the
# docs then use (idem-server, idemctl, the C++ example, the Python stubs, the
# Go client and its programs, the Node.js package, the descriptor set and
# the connect-es example; not the tests, which tools/dev/test.sh builds),
# and starts idem-server on its embedded RocksDB store in ./idem-data,
# listening on 127.0.0.1:50051 (gRPC) and 127.0.0.1:8080 (HTTP/JSON). Flags
# after the script name go to the server, e.g.
#   tools/dev/start.sh --listen=0.0.0.0:50051 --data-dir=/var/lib/idem
set -euo pipefail
cd "$(dirname "$0")/../.."

tools/dev/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target idem-server idemctl \
  create_order_example idem_python_stubs idem_go idem_node \
  idem_descriptor_set idem_connect_es
exec build/server/idem-server "$@"
