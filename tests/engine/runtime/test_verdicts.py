"""Verdicts over real HTTP: a sink written only from the contract (the generic JSON-array
encoder, a batch policy, ``classify``) against the Mixpanel emulator's partial-success
``/import``, with faults injected: partial failures, 429 with Retry-After, 5xx, 413."""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest
from moerules.connectors.emulation import Fault, MixpanelEmulator, serve
from moerules.engine.api import load_bundle
from moerules.engine.compile.compiler import CompiledBundle
from moerules.engine.connector import (
    EVENT,
    BatchPolicy,
    Delivered,
    Fatal,
    Item,
    JsonArrayEncoder,
    Partial,
    Reject,
    Response,
    Retry,
    Sink,
    SinkEncoder,
    Split,
    Verdict,
    WireRequest,
)
from moerules.engine.runtime.delivery import deliver
from moerules.engine.runtime.retry import retry_after_seconds

from tests.conftest import MINIMAL_BUNDLE
from tests.engine.runtime.conftest import FAST, write_input

SECRET = "import-sink-api-secret-0123"


class ImportSink(Sink):
    """Events to an ``/import``-style API: a JSON array, 400 names the failed records."""

    name: ClassVar[str] = "example-import"
    accepts: ClassVar[frozenset[str]] = frozenset({EVENT})
    secret_settings: ClassVar[frozenset[str]] = frozenset({"api_secret"})

    def __init__(self, settings: dict[str, Any]) -> None:
        super().__init__(settings)
        self.batch_policy = BatchPolicy(
            max_items=int(settings.get("max_items", 4)), max_request_bytes=10 << 20, max_age=1.0
        )
        token = base64.b64encode(f"{settings['api_secret']}:".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}

    def encoder(self) -> SinkEncoder:
        return JsonArrayEncoder(self.batch_policy, element=self.element, request=self.request)

    def element(self, item: Item) -> dict[str, Any]:
        line, index = item.ref
        return {
            "event": item.name,
            "properties": {
                "time": 1_700_000_000,
                "distinct_id": item.identity,
                "$insert_id": f"{line}-{index}",
                **item.attributes,
            },
        }

    def request(self, key: object, body: bytes, items: list[Item]) -> WireRequest:
        return WireRequest(
            "POST", f"{self.settings['endpoint']}/import?strict=1", dict(self.headers), body, items
        )

    def classify(self, request: WireRequest, response: Response) -> Verdict:
        status = response.status
        if status == 200:
            return Delivered()
        if status == 400:
            body = response.json()
            failed = body.get("failed_records") if isinstance(body, dict) else None
            if isinstance(failed, list):
                return Partial({r["index"]: r["message"] for r in failed}, reason="HTTP 400")
            return Reject("HTTP 400")
        if status == 413:
            return Split("HTTP 413")
        if status == 401:
            return Fatal("HTTP 401")
        if status == 429 or status >= 500:
            return Retry(
                f"HTTP {status}",
                after=retry_after_seconds(response.header("retry-after")),
                throttled=status == 429,
            )
        return Reject(f"HTTP {status}")


@pytest.fixture
def mixpanel() -> Any:
    emu = MixpanelEmulator(api_secret=SECRET)
    with serve(emu) as url:
        yield emu, url


def bundle(url: str, tmp_path: Path, **settings: Any) -> CompiledBundle:
    path = tmp_path / "bundle.yaml"
    path.write_text(MINIMAL_BUNDLE)
    compiled = load_bundle(path, env={"TEST_KEY": "k" * 12})
    sink = ImportSink({"endpoint": url, "api_secret": SECRET, **settings})
    return dataclasses.replace(compiled, sink=sink, secrets=frozenset({SECRET}))


def accepted(emu: MixpanelEmulator) -> list[str]:
    return [
        r["properties"]["$insert_id"]
        for rec in emu.received
        if rec.status in (200, 400)
        for r in rec.records
    ]


def letters(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(raw) for raw in path.read_bytes().splitlines()] if path.exists() else []


def run(compiled: CompiledBundle, tmp_path: Path, lines: int) -> tuple[Any, Path]:
    write_input(tmp_path / "in.jsonl", lines)
    dead = tmp_path / "dead.jsonl"
    report = deliver(
        compiled,
        str(tmp_path / "in.jsonl"),
        dead_letter=dead,
        state_dir=tmp_path / "state",
        quiet=True,
        options=FAST,
    )
    return report, dead


ALL = [f"{line}-{i}" for line in range(1, 5) for i in range(3)]  # 4 lines of 3 events


def test_a_partial_failure_dead_letters_exactly_the_failed_records(
    mixpanel: Any, tmp_path: Path
) -> None:
    emu, url = mixpanel
    emu.faults.push(Fault("record_400", indices=(1, 3), message="rejected by test"))
    report, dead = run(bundle(url, tmp_path), tmp_path, 4)
    first = emu.received[0]
    refused = [first.body[i]["properties"]["$insert_id"] for i in (1, 3)]
    assert sorted(accepted(emu)) == sorted(set(ALL) - set(refused))  # none sent twice
    got = letters(dead)
    assert [f"{x['line']}-{x['event_index']}" for x in got] == refused
    assert {(x["reason"], x["error"], x["status"]) for x in got} == {
        ("rejected by the destination: HTTP 400", "rejected by test", 400)
    }
    assert SECRET not in dead.read_text()
    assert report.delivered == 10 and report.dead_lettered == {
        "rejected by the destination: HTTP 400": 2
    }
    assert report.balanced() and not report.interrupted


def test_429_with_retry_after_5xx_and_413_reach_every_record_once(
    mixpanel: Any, tmp_path: Path
) -> None:
    emu, url = mixpanel
    emu.faults.push(Fault("429", retry_after=1)).push("503")
    emu.max_events = 2  # the partner takes fewer than the sink packs: 413, split in halves
    report, dead = run(bundle(url, tmp_path), tmp_path, 4)
    assert sorted(accepted(emu)) == sorted(ALL)
    assert letters(dead) == []
    assert report.throttled == 1 and report.statuses["413"] >= 1
    assert report.retries == 2 and report.balanced()
    assert report.elapsed_seconds >= 1.0  # Retry-After: 1 was honoured


def test_a_fatal_verdict_stops_the_run_resumable(mixpanel: Any, tmp_path: Path) -> None:
    emu, url = mixpanel
    compiled = bundle(url, tmp_path)
    compiled.sink = ImportSink({"endpoint": url, "api_secret": "wrong-secret-0123456"})
    report, dead = run(compiled, tmp_path, 4)
    assert report.interrupted and letters(dead) == []
    assert any("the destination refused the request (HTTP 401)" in w for w in report.warnings)
    assert "wrong-secret-0123456" not in " ".join(report.warnings)
    assert report.delivered == 0 and report.balanced() and accepted(emu) == []
    again = deliver(
        bundle(url, tmp_path),
        str(tmp_path / "in.jsonl"),
        dead_letter=dead,
        state_dir=tmp_path / "state",
        quiet=True,
        options=FAST,
    )
    assert sorted(accepted(emu)) == sorted(ALL) and again.delivered == len(ALL)
