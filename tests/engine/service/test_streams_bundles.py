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
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from moerules.connectors.emulation import (
    AmplitudeEmulator,
    Emulator,
    Fault,
    MixpanelEmulator,
    SegmentEmulator,
    serve,
)

from tests.conftest import EXAMPLES, Result
from tests.engine.service.conftest import JSON, ServiceProcess, wait_until


@dataclass(frozen=True)
class Partner:
    emulator: Callable[[], Emulator]
    env: dict[str, str]
    ids_in_request: Callable[[Any], list[str]]  # a dry-run request body -> its event ids
    id_of_record: Callable[[Any], str]  # a record the partner ingested -> its event id


PARTNERS = {
    "moengage-to-amplitude": Partner(
        AmplitudeEmulator, {"AMPLITUDE_API_KEY": "test-amplitude-key"},
        lambda body: [e["insert_id"] for e in body["events"]], lambda r: r["insert_id"]),
    "moengage-to-mixpanel": Partner(
        MixpanelEmulator, {"MIXPANEL_PROJECT_TOKEN": "test-mixpanel-token"},
        lambda body: [e["properties"]["$insert_id"] for e in body],
        lambda r: r["properties"]["$insert_id"]),
    "moengage-to-segment": Partner(
        SegmentEmulator, {"SEGMENT_WRITE_KEY": "test-segment-write-key"},
        lambda body: [m["messageId"] for m in body["batch"]], lambda r: r["messageId"]),
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
            out.append(line.replace(b"-4000-8000-", b"-4000-%04x-" % (0x8000 + copy))
                       .replace(b"-4e5f-9a7b-", b"-4e5f-%04x-" % (0x9a00 + copy)))
    return out


@pytest.mark.parametrize("bundle", sorted(PARTNERS))
def test_streams_kill_9_after_the_partner_ingested_delivers_exactly_once(
        bundle: str, start_service: Callable[..., ServiceProcess],
        cli: Callable[..., Result], tmp_path: Path) -> None:
    partner = PARTNERS[bundle]
    payloads = streams_payloads(4)
    sample = tmp_path / "payloads.jsonl"
    sample.write_bytes(b"\n".join(payloads) + b"\n")
    settings = ["--set", "destination.max_events_per_request=5",
                "--set", "destination.max_wait_seconds=0.5"]
    dry = cli("run", bundle, "--input", str(sample), "--dry-run", "--output",
              str(tmp_path / "requests.jsonl"), "--dead-letter", str(tmp_path / "dry-dl.jsonl"),
              *settings, env=partner.env)
    assert dry.exit_code == 0, dry.stderr
    expected = [i for line in (tmp_path / "requests.jsonl").read_bytes().splitlines()
                for i in partner.ids_in_request(orjson.loads(line)["body"])]
    assert len(expected) == len(set(expected)) > 10

    emu = partner.emulator()
    # the first request is ingested 3 s after it arrives: the service is killed meanwhile
    emu.faults.push(Fault("slow", delay=3.0), count=1)
    name = bundle.upper().replace("-", "_")
    env = {**partner.env, f"MOERULES_AUTH_{name}_BASIC": f"{STREAMS_USER}:{STREAMS_PASSWORD}"}
    with serve(emu) as url:
        args = ("--set", f"destination.endpoint={url}", *settings)
        first = start_service(*args, bundle=bundle, env=env)
        with httpx.Client(auth=(STREAMS_USER, STREAMS_PASSWORD), headers=JSON,
                          timeout=30) as client:
            for body in payloads:
                assert client.post(first.route(bundle), content=body).status_code == 202
        assert wait_until(lambda: emu.stats()["requests"] >= 1, timeout=20)
        time.sleep(0.5)  # the body has arrived (a client gone mid-body is never ingested)
        first.kill()
        assert first.process.returncode == -signal.SIGKILL
        # the partner ingests the request its client no longer waits for: every request that
        # arrived (the slow one included) is stored before the restart
        assert wait_until(lambda: emu.stats()["faults"].get("slow") == 1
                          and emu.stats()["requests"] == len(emu.received), timeout=10)
        second = start_service(*args, bundle=bundle, env=env)
        # the payloads whose events were in the slow request at least (the others' requests
        # may have been answered before the kill)
        assert 1 <= second.wait_event("spool recovered")["messages"] <= len(payloads)

        def ingested() -> Counter[str]:
            return Counter(partner.id_of_record(r) for r in emu.records())

        assert wait_until(lambda: set(ingested()) == set(expected), timeout=30), \
            second.log_text()[-3000:]
        assert wait_until(lambda: second.metrics()[
            f'moerules_spool_depth{{bundle="{bundle}"}}'] == 0)
        assert set(ingested().values()) == {1}, "every event exactly once in the partner"
        sent = Counter(i for r in emu.received for i in _ids_sent(partner, r.body))
        assert max(sent.values()) >= 2, "nothing was sent twice: the crash tested nothing"


def _ids_sent(partner: Partner, body: Any) -> list[str]:
    try:
        return partner.ids_in_request(body)
    except (KeyError, TypeError):
        return []
