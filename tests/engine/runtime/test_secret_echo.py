"""A partner that echoes the request, Authorization header included, in its error answers:
the key reaches none of the run's outputs, in any form."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import httpx
import orjson
from moerules.connectors.emulation import Fault, FaultPlan

from tests.conftest import Result
from tests.engine.runtime.conftest import ENV, KEY, WS, TimedEmulator, write_input

TOKEN = base64.b64encode(f"{WS}:{KEY}".encode()).decode()
LEAKS = {
    "key": KEY,
    "basic token": TOKEN,
    "url-encoded key": quote(KEY, safe=""),
    "token without padding": TOKEN.rstrip("="),
    "token's middle": TOKEN[8:-8],
}


def test_the_echo_fault_echoes_the_key(emulator: tuple[TimedEmulator, str]) -> None:
    """The fault the test below relies on does put the key in its answer."""
    emu, url = emulator
    emu.faults.push(Fault("echo", echo_status=400))
    answer = httpx.post(
        f"{url}/v1/transition/{WS}", content=b"{}", headers={"Authorization": f"Basic {TOKEN}"}
    )
    assert answer.status_code == 400
    assert answer.json()["request"]["headers"]["authorization"] == f"Basic {TOKEN}"


def test_echoed_key_reaches_no_output(
    emulator: tuple[TimedEmulator, str], tmp_path: Path, cli: Callable[..., Result]
) -> None:
    emu, url = emulator
    write_input(tmp_path / "in.jsonl", 6)
    # one request per line: a 400 (rejected), a 500 twice (retries exhausted), then a 401
    # (the run stops, its reason quoting the answer)
    emu.faults.push(Fault("echo", echo_status=400))
    emu.faults.push(Fault("echo", echo_status=500), count=2)
    emu.faults.push(Fault("echo", echo_status=401))
    report, dead = tmp_path / "report.json", tmp_path / "dead.jsonl"
    result = cli(
        "run",
        "mparticle-to-moengage",
        "--input",
        str(tmp_path / "in.jsonl"),
        "--set",
        f"destination.endpoint={url}",
        "--set",
        "destination.max_request_bytes=1024",
        "--state-dir",
        str(tmp_path / "state"),
        "--dead-letter",
        str(dead),
        "--report",
        str(report),
        "--concurrency",
        "1",
        "--max-attempts",
        "2",
        "--backoff-base",
        "0.01",
        "-q",
        env=ENV,
    )
    assert result.exit_code == 4, result.stderr  # stopped by the 401
    letters = [orjson.loads(x) for x in dead.read_bytes().splitlines()]
    statuses = sorted({letter["status"] for letter in letters})
    assert statuses == [400, 500]
    # the echo did reach the outputs, with the credentials scrubbed out of it
    assert all('"authorization":"Basic ***"' in letter["response"] for letter in letters)
    assert "the destination refused the request (HTTP 401)" in result.stderr
    outputs = {
        "stdout": result.stdout,
        "stderr": result.stderr,
        "report": report.read_text(),
        "dead letters": dead.read_text(),
    }
    for where, text in outputs.items():
        for form, leak in LEAKS.items():
            assert leak not in text, f"{form} in {where}"


def test_the_echo_fault_configured_as_json() -> None:
    plan = FaultPlan()
    plan.configure({"script": [{"kind": "echo", "status": 503}]})
    assert plan.to_config()["script"] == [
        {"kind": "echo", "retry_after": 1, "delay": 0.0, "path": "", "status": 503, "count": 1}
    ]
    for bad in (200, 600, "x"):
        try:
            plan.configure({"script": [{"kind": "echo", "status": bad}]})
        except ValueError as exc:
            assert str(exc).startswith("status must be")
        else:
            raise AssertionError(f"status {bad!r} accepted")
