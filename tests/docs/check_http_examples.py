#!/usr/bin/python3
"""The curl examples in the docs run as printed.

Usage: check_http_examples.py REPO IDEM_SERVER [--print]

For README.md and docs/http.md, each against a fresh idem-server (its own
data directory, the HTTP port on a free loopback port): every `$ curl ...`
line of a fenced block (with its `\\` continuation lines) is run by bash,
with http://127.0.0.1:8080 pointed at that server, and its output must be
the lines printed after it, except for timestamps and the two estimates of
Admin Stats (estimatedKeys, diskBytes). --print shows what the commands
print instead, to update the docs from.
"""
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

FILES = ("README.md", "docs/http.md")
DOCUMENTED = "http://127.0.0.1:8080"
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
ESTIMATE = re.compile(r'"(estimatedKeys|diskBytes)":"\d+"')


def normalize(text):
    text = TIME.sub("<time>", text)
    return ESTIMATE.sub(r'"\1":"<n>"', text).rstrip("\n")


def examples(markdown):
    """(command, expected output) for each `$ curl` line in fenced blocks."""
    found = []
    in_block = False
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            in_block = not in_block
            i += 1
            continue
        if in_block and line.startswith("$ curl"):
            command = line[2:]
            while command.endswith("\\") and i + 1 < len(lines):
                i += 1
                command = command[:-1] + " " + lines[i].strip()
            output = []
            while (i + 1 < len(lines) and not lines[i + 1].startswith("$ ")
                   and not lines[i + 1].startswith("```")):
                i += 1
                output.append(lines[i])
            found.append((command, "\n".join(output)))
        i += 1
    return found


def start_server(binary, directory):
    port_file = os.path.join(directory, "port")
    server = subprocess.Popen(
        [binary, "--listen=127.0.0.1:0", "--metrics-listen=",
         "--http-listen=127.0.0.1:0", "--data-dir=" + directory + "/data",
         "--port-file=" + port_file],
        stdout=subprocess.DEVNULL, stderr=open(directory + "/log", "w"))
    deadline = time.time() + 30
    while time.time() < deadline:
        if server.poll() is not None:
            sys.exit("idem-server exited: " + open(directory + "/log").read())
        if os.path.exists(port_file):
            for line in open(port_file).read().split():
                if line.startswith("http="):
                    return server, int(line[5:])
        time.sleep(0.05)
    server.kill()
    sys.exit("idem-server did not start in 30 s")


def main():
    repo, binary = pathlib.Path(sys.argv[1]), sys.argv[2]
    show = "--print" in sys.argv[3:]
    failures = 0
    count = 0
    for name in FILES:
        found = examples((repo / name).read_text())
        if not found:
            print(f"FAIL: {name}: no curl example found")
            failures += 1
            continue
        with tempfile.TemporaryDirectory() as directory:
            server, port = start_server(binary, directory)
            try:
                for command, expected in found:
                    count += 1
                    run = command.replace(DOCUMENTED,
                                          f"http://127.0.0.1:{port}")
                    result = subprocess.run(["bash", "-c", run],
                                            capture_output=True, text=True,
                                            timeout=60)
                    if show:
                        print(f"$ {command}\n{result.stdout}", end="")
                        continue
                    if normalize(result.stdout) != normalize(expected):
                        failures += 1
                        print(f"FAIL: {name}: $ {command}\n"
                              f"  printed in the docs:\n{expected}\n"
                              f"  printed by the server:\n{result.stdout}"
                              f"{result.stderr}")
            finally:
                server.terminate()
                server.wait(timeout=30)
    if failures:
        print(f"{failures} example(s) of {count} differ from the docs")
        return 1
    if not show:
        print(f"ok: {count} curl examples in {', '.join(FILES)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
