"""Mixpanel /import sink: the exact request and auth, settings, verdicts, and real runs against
the emulator with injected partial failures (reference §5.1)."""

from __future__ import annotations

import base64
import gzip
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from moerules.connectors.emulation import Fault, MixpanelEmulator, serve
from moerules.connectors.mixpanel.sink import MixpanelSink
from moerules.engine.api import dry_run, load_bundle
from moerules.engine.connector import (
    BYTES,
    EVENT,
    Delivered,
    Fatal,
    Item,
    Partial,
    RateLimit,
    Reject,
    Response,
    Retry,
    Split,
    WireRequest,
)
from moerules.engine.runtime.delivery import deliver
from pydantic import ValidationError
from starlette.requests import Request

from tests.conftest import Result
from tests.connectors.streams_input import FAST, accepted, dead_letters, write_streams

TOKEN = "test-mixpanel-token"


def sink(**settings: Any) -> MixpanelSink:
    return MixpanelSink(
        {"project_token": TOKEN, **settings}
        if "service_account_username" not in settings
        else settings
    )


def item(
    identity: str = "91304156-cafe",
    name: str = "Purchase",
    index: int = 0,
    attributes: dict[str, Any] | None = None,
    **fields: Any,
) -> Item:
    fields = {"time": 1618716477000, "insert_id": "935d87b1-00cd-41b7-be34-b9d98dd08b42", **fields}
    return Item(
        EVENT,
        identity,
        name,
        {"Item": "Coffee", "Amount": 5.0} if attributes is None else attributes,
        fields,
        None,
        (1, index),
        "r",
    )


def requests_of(s: MixpanelSink, *items: Item) -> list[WireRequest]:
    encoder = s.encoder()
    requests, refused = encoder.add_all(list(items))
    assert refused == []
    return requests + encoder.flush()


# -- the request -------------------------------------------------------------------------------
def test_request_is_byte_for_byte_mixpanels_example() -> None:
    """Reference §5.1's /import body."""
    (request,) = requests_of(sink(), item())
    assert request.body == (
        b'[{"event":"Purchase","properties":{"time":1618716477000,'
        b'"distinct_id":"91304156-cafe",'
        b'"$insert_id":"935d87b1-00cd-41b7-be34-b9d98dd08b42",'
        b'"Item":"Coffee","Amount":5.0}}]'
    )
    assert (request.method, request.url) == ("POST", "https://api.mixpanel.com/import?strict=1")
    assert request.headers == {
        "Content-Type": "application/json",
        "Authorization": "Basic " + base64.b64encode(f"{TOKEN}:".encode()).decode(),
    }


def test_service_account_auth_and_residency_hosts() -> None:
    s = sink(
        service_account_username="sa.user",
        service_account_secret="sa-secret",
        project_id=1234567,
        data_residency="EU",
    )
    (request,) = requests_of(s, item())
    assert request.url == "https://api-eu.mixpanel.com/import?strict=1&project_id=1234567"
    assert (
        request.headers["Authorization"]
        == "Basic " + base64.b64encode(b"sa.user:sa-secret").decode()
    )
    assert sink(data_residency="in").url == "https://api-in.mixpanel.com/import?strict=1"


@pytest.mark.parametrize(
    ("settings", "key", "message"),
    [
        (
            {},
            "project_token",
            "give project_token, or service_account_username, "
            "service_account_secret and project_id",
        ),
        (
            {
                "project_token": "t",
                "service_account_username": "u",
                "service_account_secret": "s",
                "project_id": "1",
            },
            "project_token",
            "not both",
        ),
        (
            {"service_account_username": "u", "service_account_secret": "s"},
            "project_id",
            "needs project_id",
        ),
        ({"service_account_username": "u"}, "service_account_secret", "needs its secret"),
        (
            {"service_account_secret": "s", "project_id": "1"},
            "service_account_username",
            "needs its user",
        ),
    ],
)
def test_credentials_must_be_one_complete_kind(
    settings: dict[str, Any], key: str, message: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        MixpanelSink(settings)
    (error,) = caught.value.errors()
    assert error["loc"] == (key,) and message in error["msg"]


def test_a_credential_problem_is_a_validate_error_at_its_setting(
    write: Callable[[str, str], Path], cli: Callable[..., Result]
) -> None:
    path = write(
        "b.yaml",
        """
        bundle: t
        source: {connector: moengage-streams}
        destination:
          connector: mixpanel
          settings:
            service_account_username: sa.user
            service_account_secret: "${MP_SECRET}"
        identity: {candidates: {uid: event.uid}}
        events: [{name: all, event_name: "{{ event.event_name }}"}]
        """,
    )
    result = cli("validate", str(path))
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == (
        f"{path}:5:3: error: destination setting 'project_id': a service account needs "
        "project_id (Mixpanel requires ?project_id= with it)"
    )


def test_attributes_never_override_the_keys_import_requires() -> None:
    (request,) = requests_of(sink(), item(attributes={"distinct_id": "x", "time": 1, "k": 2}))
    assert orjson.loads(request.body)[0]["properties"] == {
        "time": 1618716477000,
        "distinct_id": "91304156-cafe",
        "$insert_id": "935d87b1-00cd-41b7-be34-b9d98dd08b42",
        "k": 2,
    }


def test_records_mixpanel_refuses_are_refused_here_with_their_reasons() -> None:
    encoder = sink().encoder()
    _, refused = encoder.add_all(
        [
            item(insert_id="x" * 37),
            item(insert_id="has space"),
            item(insert_id=5),
            item(time=int(time.time()) + 7200),
            item(time=(int(time.time()) + 7200) * 1000),
            item(attributes={f"p{i}": i for i in range(260)}),
            item(attributes={"blob": "x" * 1_000_001}),
        ]
    )
    assert [r.reason for r in refused] == ["event_uuid is not a Mixpanel $insert_id"] * 3 + [
        "event time more than an hour ahead"
    ] * 2 + ["too many properties for Mixpanel", "too large for the destination"]
    assert encoder.flush() == []


def test_fields_the_rule_left_out_are_left_for_mixpanel_to_name() -> None:
    bare = Item(EVENT, "u-1", "E", {"k": 1}, {}, None, (1, 0), "r")
    (request,) = requests_of(sink(), bare)
    assert request.body == b'[{"event":"E","properties":{"distinct_id":"u-1","k":1}}]'


def test_batches_hold_at_most_2000_records() -> None:
    encoder = sink().encoder()
    requests, _ = encoder.add_all([item(index=i, insert_id=f"id-{i}") for i in range(4100)])
    assert [len(r.items) for r in requests + encoder.flush()] == [2000, 2000, 100]


def test_rate_limit_is_two_gigabytes_of_json_a_minute() -> None:
    assert sink().rate_limits() == [RateLimit(2_000_000_000, 60.0, counts=BYTES)]


# -- answers -----------------------------------------------------------------------------------
def request_of(count: int) -> WireRequest:
    return WireRequest("POST", "u", {}, b"", [item(index=i) for i in range(count)])


@pytest.mark.parametrize(("status", "body", "verdict"), MixpanelSink.documented_answers)
def test_documented_answers(status: int, body: bytes, verdict: type[Any]) -> None:
    assert isinstance(sink().classify(request_of(3), Response(status, {}, body)), verdict)


def test_strict_400_rejects_exactly_the_failed_records_the_others_were_imported() -> None:
    answer = Response(
        400,
        {},
        orjson.dumps(
            {
                "code": 400,
                "error": "some data points in the request failed validation",
                "num_records_imported": 2,
                "status": "Bad Request",
                "failed_records": [
                    {
                        "index": 0,
                        "insert_id": "a",
                        "field": "properties.time",
                        "message": "'properties.time' is invalid",
                    },
                    {
                        "index": 2,
                        "insert_id": "c",
                        "field": "properties.$insert_id",
                        "message": "too long",
                    },
                    {"index": 9, "message": "out of range: ignored"},
                ],
            }
        ),
    )
    assert sink().classify(request_of(4), answer) == Partial(
        {0: "properties.time: 'properties.time' is invalid", 2: "properties.$insert_id: too long"},
        reason="HTTP 400: some data points in the request failed validation",
    )


def test_other_answers() -> None:
    s, request = sink(), request_of(1)
    assert s.classify(request, Response(200, {}, b"")) == Delivered()
    assert s.classify(request, Response(400, {}, b"")) == Reject("HTTP 400")
    assert s.classify(request, Response(429, {}, b"")) == Retry("HTTP 429", throttled=True)
    assert s.classify(request, Response(429, {"Retry-After": "3"}, b"")) == Retry(
        "HTTP 429", after=3.0, throttled=True
    )
    assert isinstance(s.classify(request, Response(503, {}, b"")), Retry)
    assert isinstance(s.classify(request, Response(413, {}, b"")), Split)
    assert isinstance(s.classify(request, Response(403, {}, b"")), Fatal)


# -- real runs ---------------------------------------------------------------------------------
def run(
    url: str, tmp_path: Path, lines: int, *sets: str, token: str = TOKEN
) -> tuple[Any, list[str], Path]:
    uuids = write_streams(tmp_path / "in.jsonl", lines)
    dead = tmp_path / "dead.jsonl"
    bundle = load_bundle(
        "moengage-to-mixpanel",
        [f"destination.endpoint={url}", *sets],
        env={"MIXPANEL_PROJECT_TOKEN": token},
    )
    report = deliver(
        bundle,
        str(tmp_path / "in.jsonl"),
        dead_letter=dead,
        state_dir=tmp_path / "state",
        quiet=True,
        options=FAST,
    )
    return report, uuids, dead


def test_a_partial_success_dead_letters_exactly_the_failed_records(tmp_path: Path) -> None:
    emu = MixpanelEmulator(TOKEN)
    emu.faults.push(
        Fault(
            "record_400",
            indices=(0, 5),
            field="properties.time",
            message="'properties.time' is invalid",
        )
    )
    with serve(emu) as url:
        report, uuids, dead = run(url, tmp_path, 3)
    letters = dead_letters(dead, "insert_id")
    assert set(letters) == {uuids[0], uuids[5]}
    for letter in letters.values():
        assert (
            letter["reason"] == "rejected by the destination: HTTP 400: some data points "
            "in the request failed validation"
        )
        assert letter["error"] == "properties.time: 'properties.time' is invalid"
    # the others were imported by that same request: never sent again
    imported = accepted(emu.records("/import"), lambda r: r["properties"]["$insert_id"])
    assert imported == {u: 1 for u in uuids if u not in letters}
    assert len(emu.received) == 1 and report.balanced()
    assert report.delivered == len(uuids) - 2


def test_413_splits_until_requests_fit(tmp_path: Path) -> None:
    emu = MixpanelEmulator(TOKEN, max_events=4)
    with serve(emu) as url:
        report, uuids, dead = run(url, tmp_path, 5)
    imported = accepted(emu.records("/import"), lambda r: r["properties"]["$insert_id"])
    assert imported == {u: 1 for u in uuids}
    assert report.statuses["413"] >= 1 and not dead.exists()


def test_throttling_and_outages_are_retried_and_nothing_is_imported_twice(tmp_path: Path) -> None:
    emu = MixpanelEmulator(TOKEN)
    for fault in (Fault("429_bare"), Fault("500"), Fault("503")):
        emu.faults.push(fault)
    with serve(emu) as url:
        report, uuids, dead = run(url, tmp_path, 3)
    imported = accepted(emu.records("/import"), lambda r: r["properties"]["$insert_id"])
    assert imported == {u: 1 for u in uuids}
    assert report.retries == 3 and report.throttled == 1 and not dead.exists()


def test_service_account_run_sends_project_id(tmp_path: Path) -> None:
    emu = MixpanelEmulator(TOKEN)
    with serve(emu) as url:
        report, uuids, _ = run(
            url,
            tmp_path,
            1,
            "destination.project_token=null",
            "destination.service_account_username=test-sa.user",
            "destination.service_account_secret=test-sa-secret",
            "destination.project_id=1234567",
        )
    assert report.delivered == len(uuids)
    assert [r.query for r in emu.received] == [{"strict": "1", "project_id": "1234567"}]


def test_a_wrong_token_stops_the_run_without_dead_letters(tmp_path: Path) -> None:
    emu = MixpanelEmulator(TOKEN)
    with serve(emu) as url:
        report, _, dead = run(url, tmp_path, 2, token="not-the-token")
    assert report.interrupted
    assert any("Invalid credentials" in w for w in report.warnings)
    assert not dead.exists() and emu.records() == []


# -- gzip on the wire --------------------------------------------------------------------------
class WireMixpanel(MixpanelEmulator):
    """The Mixpanel emulator, keeping each request body exactly as it came off the wire."""

    def __init__(self, token: str) -> None:
        super().__init__(token)
        self.wire: list[bytes] = []

    async def read_body(self, request: Request, limit: int) -> bytes:
        raw = await super().read_body(request, limit)
        self.wire.append(raw)
        return raw


def test_bodies_travel_gzipped_and_inflate_to_exactly_the_dry_run_body(tmp_path: Path) -> None:
    emu = WireMixpanel(TOKEN)
    with serve(emu) as url:
        report, uuids, dead = run(url, tmp_path, 4)
    assert report.delivered == len(uuids) and not dead.exists()
    [received] = emu.received
    assert received.headers["content-encoding"] == "gzip"
    [wire] = emu.wire
    assert wire[:2] == b"\x1f\x8b"  # gzip's magic: compressed on the wire
    # the same bundle and input in a dry run: the readable body, and the header it will carry
    bundle = load_bundle(
        "moengage-to-mixpanel",
        [f"destination.endpoint={url}"],
        env={"MIXPANEL_PROJECT_TOKEN": TOKEN},
    )
    out = io.BytesIO()
    lines = (tmp_path / "in.jsonl").read_bytes().splitlines()
    dry_run(bundle, [(n, line) for n, line in enumerate(lines, 1)], out)
    [printed] = out.getvalue().splitlines()
    shown = orjson.loads(printed)
    assert shown["headers"]["Content-Encoding"] == "gzip"
    body = printed[printed.index(b',"body":') + len(b',"body":') : -1]
    assert gzip.decompress(wire) == body
    assert accepted(emu.records("/import"), lambda r: r["properties"]["$insert_id"]) == {
        u: 1 for u in uuids
    }


def test_gzip_false_sends_the_body_as_is(tmp_path: Path) -> None:
    emu = WireMixpanel(TOKEN)
    with serve(emu) as url:
        report, uuids, _ = run(url, tmp_path, 2, "destination.gzip=false")
    assert report.delivered == len(uuids)
    [received] = emu.received
    assert "content-encoding" not in received.headers
    assert orjson.loads(emu.wire[0])[0]["properties"]["$insert_id"] == uuids[0]


def test_the_10_mb_limit_counts_the_uncompressed_body() -> None:
    """ "10MB uncompressed" (reference §5.1): a batch is cut by its readable size."""
    s = sink(max_request_bytes=1024)
    requests = requests_of(s, *(item(index=i, insert_id=f"id-{i}") for i in range(40)))
    assert len(requests) > 1
    assert all(r.content_encoding == "gzip" and len(r.body) <= 1024 for r in requests)
    assert all(len(r.wire_body()) < len(r.body) for r in requests)
