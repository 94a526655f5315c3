"""Scenarios across languages against one server: a key begun in Python is
completed in Go and replays in C++; a key begun in Node.js is completed in
Python and replays in Go and C++; the four fingerprint helpers agree."""

import json
import os
import subprocess
import uuid

import idem


def go_interop():
    path = os.environ.get("IDEM_GO_INTEROP")
    assert path and os.path.exists(path), "IDEM_GO_INTEROP (ctest sets it)"
    return path


def idemctl():
    path = os.environ.get("IDEMCTL_BINARY")
    assert path and os.path.exists(path), "IDEMCTL_BINARY (ctest sets it)"
    return path


def node_interop():
    path = os.environ.get("IDEM_NODE_INTEROP")
    assert path and os.path.exists(path), "IDEM_NODE_INTEROP (ctest sets it)"
    return ["node", path]


def test_begun_in_python_completed_in_go_replays_in_cpp(server, client):
    key = "interop-" + uuid.uuid4().hex
    fp = idem.fingerprint_parts("POST", "/v1/orders", b'{"item":"book"}')
    begun = client.begin("interop", key, fingerprint=fp, lease=30)
    assert begun.outcome == idem.ACQUIRED

    subprocess.run([go_interop(), "-server=" + server, "-op=complete",
                    "-ns=interop", "-key=" + key, "-token=%d" % begun.token,
                    "-code=201", "-body=made in Go"], check=True)

    replay = subprocess.run(
        [idemctl(), "--server=" + server, "--json", "begin", "interop", key,
         "--fingerprint=" + fp.hex()], capture_output=True, text=True)
    assert replay.returncode == 10, replay.stderr  # COMPLETED
    reply = json.loads(replay.stdout)
    assert reply["outcome"] == "OUTCOME_COMPLETED"
    assert reply["result"]["code"] == 201
    assert "made in Go" in json.dumps(reply["result"])

    # And Python sees what Go stored.
    assert client.lookup("interop", key).result.body == b"made in Go"


def test_begun_in_node_completed_in_python_replays_in_go_and_cpp(server, client):
    key = "interop-node-" + uuid.uuid4().hex
    fp = idem.fingerprint_parts("POST", "/v1/orders", b'{"item":"pen"}')
    begun = subprocess.run(
        [*node_interop(), "begin", server, "interop", key, fp.hex()],
        capture_output=True, text=True, check=True)
    reply = json.loads(begun.stdout)
    assert reply["outcome"] == "ACQUIRED"

    client.complete("interop", key, int(reply["token"]),
                    idem.Result(code=201, body=b"made in Python"))

    go = subprocess.run([go_interop(), "-server=" + server, "-op=begin",
                         "-ns=interop", "-key=" + key, "-fingerprint=" + fp.hex()],
                        capture_output=True, text=True, check=True)
    assert go.stdout.split("\n")[:2] == ["COMPLETED", "201 made in Python"]
    cpp = subprocess.run(
        [idemctl(), "--server=" + server, "--json", "begin", "interop", key,
         "--fingerprint=" + fp.hex()], capture_output=True, text=True)
    assert cpp.returncode == 10, cpp.stderr  # COMPLETED
    assert json.loads(cpp.stdout)["result"]["code"] == 201
    # Node sees it as the replay too.
    again = subprocess.run(
        [*node_interop(), "begin", server, "interop", key, fp.hex()],
        capture_output=True, text=True, check=True)
    assert json.loads(again.stdout)["outcome"] == "COMPLETED"


def test_fingerprints_are_the_same_bytes_in_four_languages():
    parts = ["POST", "/v1/orders?x=1", '{"item":"b\u00f6ok"}', ""]
    python = idem.fingerprint_parts(*parts).hex()
    go = subprocess.run([go_interop(), "-op=fingerprint", *parts],
                        capture_output=True, text=True, check=True).stdout.strip()
    cpp = subprocess.run([idemctl(), "fingerprint", *parts],
                         capture_output=True, text=True, check=True).stdout.strip()
    node = subprocess.run([*node_interop(), "fingerprint", *parts],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert python == go == cpp == node
