"""The shipped Streams bundles behind ``moerules serve``: MoEngage Streams posts its payloads,
the service delivers them to Amplitude, Mixpanel and Segment (their emulators, real HTTP).

These partners de-duplicate (Amplitude ``insert_id``, Mixpanel ``$insert_id``, Segment
``messageId``), so a crash between the partner ingesting a request and the service hearing of
it costs nothing: after the restart the request is sent again and every event is in the
partner's store exactly once. The expected events are what ``moerules run --dry-run`` of the
same payloads would send.
"""

from __future__ import annotations

import signal
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
from moerules.connectors.emulation import (
    AmplitudeEmulator,
    Emulator,
    MixpanelEmulator,
    SegmentEmulator,
    serve,
)
from starlette.types import Message, Receive, Scope, Send

from tests.conftest import EXAMPLES, Result
from tests.engine.service.conftest import JSON, ServiceProcess, wait_until


class _AnswersFirstLate(Emulator):
    """The partner stores its first request at once and answers it only seconds later."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.held = threading.Event()  # the first request is stored; its answer waits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or self.held.is_set()
            or str(scope.get("path", "")).startswith("/_emulator")
        ):
            await super().__call__(scope, receive, send)
            return

        async def answer_late(message: Message) -> None:
            if message["type"] == "http.response.start" and not self.held.is_set():
                self.held.set()  # the handler stored the request before it answers
                await anyio.sleep(30)
            await send(message)

        await super().__call__(scope, receive, answer_late)


class LateAmplitude(_AnswersFirstLate, AmplitudeEmulator):
    pass


class LateMixpanel(_AnswersFirstLate, MixpanelEmulator):
    pass


class LateSegment(_AnswersFirstLate, SegmentEmulator):
    pass


@dataclass(frozen=True)
class Partner:
    emulator: Callable[[], _AnswersFirstLate]
    env: dict[str, str]
    ids_in_request: Callable[[Any], list[str]]  # a dry-run request body -> its event ids
    id_of_record: Callable[[Any], str]  # a record the partner ingested -> its event id


PARTNERS = {
    "moengage-to-amplitude": Partner(
        LateAmplitude,
        {"AMPLITUDE_API_KEY": "test-amplitude-key"},
        lambda body: [e["insert_id"] for e in body["events"]],
        lambda r: r["insert_id"],
    ),
    "moengage-to-mixpanel": Partner(
        LateMixpanel,
        {"MIXPANEL_PROJECT_TOKEN": "test-mixpanel-token"},
        lambda body: [e["properties"]["$insert_id"] for e in body],
        lambda r: r["properties"]["$insert_id"],
    ),
    "moengage-to-segment": Partner(
        LateSegment,
        {"SEGMENT_WRITE_KEY": "test-segment-write-key"},
        lambda body: [m["messageId"] for m in body["batch"]],
        lambda r: r["messageId"],
    ),
}
STREAMS_USER, STREAMS_PASSWORD = "moengage-streams", "streams-ingest-secret"


def streams_payloads(copies: int) -> list[bytes]:
    """The example's Streams payloads, ``copies`` times with fresh event ids (its lines that
    are no payload at all, on purpose, would be refused with a 400)."""
    lines = []
    for line in (EXAMPLES / "streams-events.jsonl").read_bytes().splitlines():
        try:
            payload = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(payload, dict) and isinstance(payload.get("events"), list):
            lines.append(line)
    out = []
    for copy in range(copies):
        for line in lines:
            out.append(
                line.replace(b"-4000-8000-", b"-4000-%04x-" % (0x8000 + copy)).replace(
                    b"-4e5f-9a7b-", b"-4e5f-%04x-" % (0x9A00 + copy)
                )
            )
    return out


@pytest.mark.parametrize("bundle", sorted(PARTNERS))
def test_streams_kill_9_after_the_partner_ingested_delivers_exactly_once(
    bundle: str,
    start_service: Callable[..., ServiceProcess],
    cli: Callable[..., Result],
    tmp_path: Path,
) -> None:
    partner = PARTNERS[bundle]
    payloads = streams_payloads(4)
    sample = tmp_path / "payloads.jsonl"
    sample.write_bytes(b"\n".join(payloads) + b"\n")
    settings = [
        "--set",
        "destination.max_events_per_request=5",
        "--set",
        "destination.max_wait_seconds=0.5",
    ]
    dry = cli(
        "run",
        bundle,
        "--input",
        str(sample),
        "--dry-run",
        "--output",
        str(tmp_path / "requests.jsonl"),
        "--dead-letter",
        str(tmp_path / "dry-dl.jsonl"),
        *settings,
        env=partner.env,
    )
    assert dry.exit_code == 0, dry.stderr
    expected = [
        i
        for line in (tmp_path / "requests.jsonl").read_bytes().splitlines()
        for i in partner.ids_in_request(orjson.loads(line)["body"])
    ]
    assert len(expected) == len(set(expected)) > 10

    emu = partner.emulator()
    name = bundle.upper().replace("-", "_")
    env = {**partner.env, f"MOERULES_AUTH_{name}_BASIC": f"{STREAMS_USER}:{STREAMS_PASSWORD}"}
    with serve(emu) as url:
        args = ("--set", f"destination.endpoint={url}", *settings)
        first = start_service(*args, bundle=bundle, env=env)
        with httpx.Client(
            auth=(STREAMS_USER, STREAMS_PASSWORD), headers=JSON, timeout=30
        ) as client:
            for body in payloads:
                assert client.post(first.route(bundle), content=body).status_code == 202
        # the partner has stored the first request and holds its answer back: the crash
        # comes after the partner ingested it and before the service could hear so
        assert wait_until(lambda: emu.held.is_set(), timeout=20)
        first.kill()
        assert first.process.returncode == -signal.SIGKILL
        assert wait_until(lambda: emu.stats()["requests"] == len(emu.received))
        second = start_service(*args, bundle=bundle, env=env)
        # the payloads whose events were in the held request at least (the others' requests
        # may have been answered before the kill)
        assert 1 <= second.wait_event("spool recovered")["messages"] <= len(payloads)

        def ingested() -> Counter[str]:
            return Counter(partner.id_of_record(r) for r in emu.records())

        assert wait_until(lambda: set(ingested()) == set(expected), timeout=30), second.log_text()[
            -3000:
        ]
        assert wait_until(
            lambda: second.metrics()[f'moerules_spool_depth{{bundle="{bundle}"}}'] == 0
        )
        assert set(ingested().values()) == {1}, "every event exactly once in the partner"
        sent = Counter(i for r in emu.received for i in _ids_sent(partner, r.body))
        assert max(sent.values()) >= 2, "nothing was sent twice: the crash tested nothing"


def _ids_sent(partner: Partner, body: Any) -> list[str]:
    try:
        return partner.ids_in_request(body)
    except (KeyError, TypeError):
        return []
