"""Stopping: SIGINT/SIGTERM stop reading, drain, checkpoint, report, exit 4; a rerun ends it."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from moerules.connectors.emulation import Fault

from tests.engine.runtime.conftest import (
    TimedEmulator,
    delivered,
    run_args,
    spawn,
    wait_until,
    write_input,
)

EXIT_INTERRUPTED = 4


def test_sigint_drains_checkpoints_and_a_rerun_completes(
    emulator: tuple[TimedEmulator, str], tmp_path: Path
) -> None:
    emu, url = emulator
    expected = write_input(tmp_path / "in.jsonl", 150)
    args = run_args(
        url,
        tmp_path / "in.jsonl",
        tmp_path / "state",
        "-q",
        "--concurrency",
        "4",
        "--set",
        "destination.max_request_bytes=1024",
        "--set",
        "destination.requests_per_second=40",
    )
    process = spawn(args, tmp_path)
    assert wait_until(lambda: len(emu.received) >= 3, timeout=20)
    process.send_signal(signal.SIGINT)
    stopped = time.monotonic()
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == EXIT_INTERRUPTED, stderr
    assert time.monotonic() - stopped < 5
    assert "stopped by SIGINT" in stderr and "interrupted" in stderr
    assert "Traceback" not in stderr
    partial = delivered(emu)
    assert 0 < len(partial) < len(expected)
    rerun = spawn(args, tmp_path)
    _, stderr = rerun.communicate(timeout=60)
    assert rerun.returncode == 0, stderr
    assert "resumed after line" in stderr
    got = delivered(emu)
    assert set(got) == expected
    assert set(got.values()) == {1}, "a graceful stop sends nothing twice"


def test_sigterm_gives_up_after_the_drain_timeout(
    emulator: tuple[TimedEmulator, str], tmp_path: Path
) -> None:
    emu, url = emulator
    expected = write_input(tmp_path / "in.jsonl", 100)
    args = run_args(
        url,
        tmp_path / "in.jsonl",
        tmp_path / "state",
        "-q",
        "--drain-timeout",
        "0.5",
        "--set",
        "destination.max_request_bytes=1024",
        "--set",
        "destination.requests_per_second=40",
    )
    process = spawn(args, tmp_path)
    assert wait_until(lambda: len(emu.received) >= 3, timeout=20)
    emu.faults.push(Fault("429", retry_after=30))  # whatever is in flight now waits 30 s
    assert wait_until(lambda: emu.faults.pending == 0, timeout=5)
    process.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == EXIT_INTERRUPTED, stderr
    assert time.monotonic() - stopped < 3
    assert "drain timeout" in stderr
    assert "were read but not sent; a rerun of the same command sends them" in stderr
    rerun = spawn(args, tmp_path)
    _, stderr = rerun.communicate(timeout=60)
    assert rerun.returncode == 0, stderr
    got = delivered(emu)
    assert set(got) == expected and set(got.values()) == {1}
