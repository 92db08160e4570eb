"""Real Redis and NATS servers for the distributed tests, each on a free port of 127.0.0.1.

Under CI (``CI`` set) a missing server binary is a failure, not a skip: .ci/run installs them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

REDIS_SERVER = "/usr/bin/redis-server"
NATS_SERVER = "/usr/sbin/nats-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def need(binary: str) -> str:
    """The server binary's path; skipped outside CI when missing, failed under CI."""
    found = binary if os.access(binary, os.X_OK) else shutil.which(Path(binary).name)
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail(
            f"{binary} is missing: .ci/run installs it (apt-get install -y "
            "nats-server redis-server)"
        )
    pytest.skip(f"{binary} is not installed")


def wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not listen within {timeout} s")


class Server:
    """One server process that a test can kill and start again (same port, same store)."""

    def __init__(self, argv: list[str], port: int) -> None:
        self.argv = argv
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        self.process = subprocess.Popen(
            self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_port(self.port, self.process)
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def redis_server() -> Server:
    """A Redis that keeps nothing on disk: a restart starts it empty."""
    binary = need(REDIS_SERVER)
    port = free_port()
    return Server(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        port,
    )


def nats_server(store: Path) -> Server:
    """A NATS server with JetStream, its store in ``store`` (kept across restarts)."""
    binary = need(NATS_SERVER)
    port = free_port()
    return Server([binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store)], port)
