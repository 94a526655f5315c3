"""Fixtures: the real idem-server on a free loopback port, per test module."""

import os
import shutil
import subprocess
import tempfile
import time

import pytest

import idem


class ServerProcess:
    """The real idem-server on a loopback port; restarts keep the port."""

    def __init__(self):
        self.binary = os.environ.get("IDEM_SERVER_BINARY")
        if not self.binary:
            pytest.fail("IDEM_SERVER_BINARY must name the idem-server binary "
                        "(ctest sets it)")
        self.workdir = tempfile.mkdtemp(prefix="idem-py-")
        self.port = 0
        self.process = None

    def start(self):
        port_file = os.path.join(self.workdir, "port")
        if os.path.exists(port_file):
            os.remove(port_file)
        log = open(os.path.join(self.workdir, "server.log"), "ab")
        self.process = subprocess.Popen(
            [self.binary, "--listen=127.0.0.1:%d" % self.port,
             "--data-dir=" + self.workdir + "/data",
             "--port-file=" + port_file, "--metrics-listen=", "--http-listen="],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail("idem-server exited at start-up")
            try:
                with open(port_file) as f:
                    port = f.readline().strip()
                if port:
                    self.port = int(port)
                    return "127.0.0.1:%d" % self.port
            except FileNotFoundError:
                pass
            time.sleep(0.02)
        pytest.fail("idem-server did not start in 30 s")

    def kill(self):
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def cleanup(self):
        self.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def server():
    process = ServerProcess()
    try:
        yield process.start()
    finally:
        process.cleanup()


@pytest.fixture
def own_server():
    """A server of the test's own, which it may kill and restart."""
    process = ServerProcess()
    try:
        process.start()
        yield process
    finally:
        process.cleanup()


@pytest.fixture(params=[True, False], ids=["session", "unary"])
def client(server, request):
    """A client over the Session stream (the default), then over unary
    RPCs: each test using it runs twice."""
    with idem.IdemClient(server, session=request.param) as c:
        yield c
