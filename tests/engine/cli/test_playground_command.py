"""`moerules playground`: the command a user starts, as a real process."""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import EXAMPLES, Result


def _script() -> str:
    return shutil.which("moerules", path=str(Path(sys.executable).parent)) or "moerules"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_serves_the_page_on_loopback(tmp_path: Path) -> None:
    bundle = tmp_path / "overlay.yaml"
    shutil.copy(EXAMPLES / "acme-overlay.yaml", bundle)
    port = _free_port()
    process = subprocess.Popen(
        [
            _script(),
            "playground",
            str(bundle),
            "--input",
            str(EXAMPLES / "mparticle-batches.jsonl"),
            "--port",
            str(port),
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("MOENGAGE_")},
    )
    try:
        assert process.stderr is not None
        ready, _, _ = select.select([process.stderr], [], [], 30)
        assert ready, "the playground printed nothing"
        line = process.stderr.readline()
        assert line == (
            f"moerules playground for {bundle}: open http://127.0.0.1:{port}/ (Ctrl+C stops it)\n"
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the playground does not answer"
                time.sleep(0.1)
        assert page.status_code == 200 and "moerules playground" in page.text
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(20)
        if process.stderr is not None:
            process.stderr.close()
    assert process.returncode == 0


def test_usage_errors(
    cli: Callable[..., Result], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no bundle.yaml here
    result = cli("playground")
    assert result.exit_code == 2
    assert "give a BUNDLE file (there is no bundle.yaml here)" in result.stderr
    result = cli("playground", "no-such-bundle")
    assert result.exit_code == 1
    assert "no bundle file or shipped bundle named 'no-such-bundle'" in result.stderr
    result = cli("playground", str(EXAMPLES / "acme-overlay.yaml"), "--input", "nope.jsonl")
    assert result.exit_code == 2
    assert result.stderr == (
        "moerules: error: input nope.jsonl does not exist; --input takes "
        "a JSON Lines file, or - for stdin\n"
    )
