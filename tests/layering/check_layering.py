#!/usr/bin/env python3
"""Checks the layering of the C++ sources by their #include lines.

  check_layering.py ROOT         exit 1 naming every file that breaks a rule
  check_layering.py --self-test  plants each kind of violation in a scratch
                                 tree and checks that it is named

The rules (docs/design.md#layers):
  * the storage core (storage/*.h|cc, storage/testing/) includes no backend
    (storage/<backend>/) and no database client (rocksdb/, hiredis/);
  * a backend (storage/<backend>/) includes no other backend;
  * in server/, only open_store.cc (the store factory) names a backend;
  * the server's rooms stack up: ops/ includes no other room, auth/ only
    ops/, rpc/ and http/ only auth/ and ops/; only the root (server/*.cc)
    sees all;
  * client/ and tools/ include nothing from server/ or storage/<backend>/.
The build checks the same for link dependencies (storage/CMakeLists.txt).
"""
import pathlib
import re
import sys
import tempfile

BACKENDS = ("rocksdb", "redis", "postgres")
# Each room of server/ and the rooms it may include (besides itself).
ROOMS = {"ops": (), "auth": ("ops",), "rpc": ("ops", "auth"),
         "http": ("ops", "auth")}
INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', re.M)


def backend_of(path):
    parts = path.parts
    if len(parts) >= 3 and parts[0] == "storage" and parts[1] in BACKENDS:
        return parts[1]
    return None


def violations(root):
    root = pathlib.Path(root)
    found = []
    for top in ("storage", "server", "client", "tools"):
        for path in sorted((root / top).rglob("*")):
            if path.suffix not in (".h", ".cc") or not path.is_file():
                continue
            rel = path.relative_to(root)
            for included in INCLUDE.findall(path.read_text(errors="replace")):
                inc = pathlib.PurePosixPath(included)
                inc_backend = (inc.parts[1] if len(inc.parts) >= 3 and
                               inc.parts[0] == "storage" and
                               inc.parts[1] in BACKENDS else None)
                client_lib = (inc.parts[0] in ("rocksdb", "hiredis") or
                              included in ("libpq-fe.h", "libpq-int.h"))
                own = backend_of(rel)
                if top == "storage" and own is None and (inc_backend or
                                                         client_lib):
                    found.append(f"{rel}: the storage core includes "
                                 f"{included}; backends live in "
                                 "storage/<backend>/")
                elif own is not None and inc_backend not in (None, own):
                    found.append(f"{rel}: backend {own} includes another "
                                 f"backend's {included}")
                elif (top == "server" and inc_backend and
                      rel.as_posix() != "server/open_store.cc"):
                    found.append(f"{rel}: includes {included}; only "
                                 "server/open_store.cc names a backend")
                elif (top == "server" and len(rel.parts) >= 3 and
                      rel.parts[1] in ROOMS and inc.parts[0] == "server" and
                      (len(inc.parts) < 3 or inc.parts[1] not in
                       ROOMS[rel.parts[1]] + (rel.parts[1],))):
                    found.append(f"{rel}: includes {included}; room "
                                 f"server/{rel.parts[1]}/ may include only "
                                 f"{ROOMS[rel.parts[1]] or 'itself'}")
                elif top in ("client", "tools") and (
                        inc_backend or inc.parts[0] == "server"):
                    found.append(f"{rel}: includes {included}; clients and "
                                 "tools speak the API only")
    return found


def self_test():
    cases = {
        "storage/store.cc": '#include "storage/rocksdb/rocksdb_store.h"\n',
        "storage/clock.cc": "#include <hiredis/hiredis.h>\n",
        "storage/redis/x.cc": '#include "storage/rocksdb/rocksdb_store.h"\n',
        "server/rpc/admin_service.cc":
            '#include "storage/redis/redis_cluster_store.h"\n',
        "server/ops/log.cc": '#include "server/rpc/rpc_observer.h"\n',
        "server/auth/tls.cc": '#include "server/server.h"\n',
        "server/rpc/wait_queue.cc": '#include "server/config.h"\n',
        "tools/idemctl/main.cc": '#include "server/config.h"\n',
    }
    allowed = {
        "server/open_store.cc": '#include "storage/redis/redis_cluster.h"\n',
        "server/server.cc": '#include "server/rpc/admin_service.h"\n',
        "server/rpc/unary_call.h": '#include "server/auth/authorizer.h"\n',
        "server/auth/authorizer.h": '#include "server/ops/metrics.h"\n',
        "storage/rocksdb/rocksdb_store.cc": '#include "rocksdb/db.h"\n',
        "storage/redis/redis_cluster.cc": "#include <hiredis/hiredis.h>\n",
    }
    with tempfile.TemporaryDirectory() as scratch:
        for rel, text in {**cases, **allowed}.items():
            path = pathlib.Path(scratch) / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        named = {line.split(":")[0] for line in violations(scratch)}
    missed = set(cases) - named
    wrong = named - set(cases)
    if missed or wrong:
        print(f"self-test failed: missed {sorted(missed)}, "
              f"wrongly named {sorted(wrong)}")
        return 1
    print(f"ok: self-test, {len(cases)} planted violations named, "
          f"{len(allowed)} allowed includes passed")
    return 0


def main(argv):
    if argv[1:] == ["--self-test"]:
        return self_test()
    if len(argv) != 2:
        print(__doc__)
        return 2
    found = violations(argv[1])
    for line in found:
        print(line)
    if found:
        return 1
    print("ok: layering of #include lines")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
