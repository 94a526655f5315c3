"""Fixtures: the real idem-server on a free loopback port, per test module."""

import os
import shutil
import subprocess
import tempfile
import time

import pytest

import idem


@pytest.fixture(scope="module")
def server():
    binary = os.environ.get("IDEM_SERVER_BINARY")
    if not binary:
        pytest.fail("IDEM_SERVER_BINARY must name the idem-server binary "
                    "(ctest sets it)")
    workdir = tempfile.mkdtemp(prefix="idem-py-")
    port_file = os.path.join(workdir, "port")
    log = open(os.path.join(workdir, "server.log"), "wb")
    process = subprocess.Popen(
        [binary, "--listen=127.0.0.1:0", "--data-dir=" + workdir + "/data",
         "--port-file=" + port_file, "--metrics-listen="],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        address = None
        while time.monotonic() < deadline and address is None:
            if process.poll() is not None:
                pytest.fail("idem-server exited at start-up")
            try:
                with open(port_file) as f:
                    port = f.readline().strip()
                if port:
                    address = "127.0.0.1:" + port
            except FileNotFoundError:
                time.sleep(0.02)
        assert address, "idem-server did not start in 30 s"
        yield address
    finally:
        process.kill()
        process.wait()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def client(server):
    with idem.IdemClient(server) as c:
        yield c
