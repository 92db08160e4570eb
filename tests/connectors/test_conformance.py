"""The connector contract, checked for every registered sink (parametrised over the registry).

A new sink passes this file before anything else: it declares what it accepts and its batch
policy; its encoder keeps to that policy (items, bytes per request, bytes per item, age) and
loses nothing; an item no request can hold is refused when encoded; every answer its partner
documents maps to the right verdict, 429's Retry-After included; partial verdicts dead-letter
exactly the rejected items and resend exactly the ones to retry; its secrets never appear
in the requests a dry run shows, in reports or in dead letters; and a bad setting is a
``moerules validate`` error at its line.
"""

from __future__ import annotations

import base64
import gzip
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
from moerules.engine.api import request_json
from moerules.engine.connector import (
    COHORT_MEMBERSHIP,
    USER,
    Delivered,
    Fatal,
    Item,
    ItemTooLarge,
    Partial,
    Reject,
    Response,
    Retry,
    Sink,
    Split,
    Unencodable,
    Verdict,
    WireRequest,
    connector_names,
    load_connector,
)
from moerules.engine.rules.settings import secret_fields, settings_model_of
from moerules.engine.runtime.deadletter import DeadLetterWriter
from moerules.engine.runtime.ratelimit import RateLimiter
from moerules.engine.runtime.report import RunReport
from moerules.engine.runtime.retry import RetryPolicy
from moerules.engine.runtime.sender import RunControl, Sender

from tests.conftest import Result

VERDICTS = (Delivered, Retry, Reject, Partial, Split, Fatal)


def registered_sinks() -> list[str]:
    names = []
    for name in connector_names():
        cls = load_connector(name)
        if isinstance(cls, type) and issubclass(cls, Sink):
            names.append(name)
    return names


SINKS = registered_sinks()


def sink_class(name: str) -> type[Sink]:
    cls = load_connector(name)
    assert isinstance(cls, type) and issubclass(cls, Sink)
    return cls


def build(cls: type[Sink]) -> Sink:
    """The sink as the engine builds it: from its example settings, parsed by its model."""
    parsed = settings_model_of(cls).model_validate(dict(cls.example_settings))
    from_settings = getattr(cls, "from_settings", None)
    sink: Sink = (
        from_settings(parsed) if from_settings is not None else cls(dict(cls.example_settings))
    )
    return sink


@pytest.fixture(params=SINKS)
def sink(request: pytest.FixtureRequest) -> Sink:
    return build(sink_class(request.param))


def secrets_of(sink: Sink) -> list[str]:
    """The values of the example's secret settings (``SecretStr`` fields of the model)."""
    names = secret_fields(settings_model_of(type(sink))) | type(sink).secret_settings
    return [
        str(type(sink).example_settings[k])
        for k in sorted(names)
        if k in type(sink).example_settings
    ]


def items_for(sink: Sink, count: int, pad: int = 0) -> list[Item]:
    """``count`` items of every kind the sink accepts, in turn, of varied sizes up to ``pad``."""
    kinds = sorted(sink.accepts)
    out = []
    for n in range(count):
        kind = kinds[n % len(kinds)]
        note = "x" * (n * 7919 % pad if pad else 0)
        if kind == COHORT_MEMBERSHIP:  # as engine/cohorts.py makes them: a user id (its size
            # varies here) joining one cohort; no attributes (Cohort Sync takes none)
            out.append(
                Item(
                    kind,
                    f"user-{n % 7}-{note}",
                    "Conformance cohort",
                    {},
                    dict(sink.example_fields.get(kind, {})),
                    None,
                    (n // 3 + 1, n % 3),
                    "conformance",
                )
            )
            continue
        out.append(
            Item(
                kind,
                f"user-{n % 7}",
                "" if kind == USER else f"Conformance {n}",
                {"n": n, "note": note},
                dict(sink.example_fields.get(kind, {})),
                None,
                (n // 3 + 1, -1 if kind == USER else n % 3),
                "conformance",
            )
        )
    return out


def encode(sink: Sink, items: list[Item], per_record: int = 3) -> list[WireRequest]:
    """Items through a fresh encoder, a record's worth at a time; nothing may be refused."""
    encoder = sink.encoder()
    requests: list[WireRequest] = []
    for start in range(0, len(items), per_record):
        out, refused = encoder.add_all(items[start : start + per_record])
        assert refused == []
        requests += out
    return requests + encoder.flush()


# -- declarations -----------------------------------------------------------------------------
def test_registry_has_sinks() -> None:
    assert "moengage" in SINKS


def test_declares_the_contract(sink: Sink) -> None:
    assert sink.accepts, "a sink accepts at least one kind of item"
    assert all(isinstance(kind, str) and kind for kind in sink.accepts)
    policy = sink.batch_policy
    assert policy.max_request_bytes is not None, "every partner caps a request's size"
    assert policy.max_age is not None and policy.max_age > 0, (
        "a request that is not full must still leave (inputs that never end)"
    )
    assert sink.documented_answers, "the partner's documented answers, for the checks below"
    assert secrets_of(sink), "example_settings hold the sink's secret settings"


# -- batching ---------------------------------------------------------------------------------
def test_requests_keep_to_the_batch_policy_and_lose_nothing(sink: Sink) -> None:
    policy = sink.batch_policy
    assert policy.max_request_bytes is not None
    pad = min(policy.max_request_bytes, policy.max_item_bytes or policy.max_request_bytes) // 8
    items = items_for(sink, 600, pad)
    requests = encode(sink, items)
    assert len(requests) > 1, "enough items to fill more than one request"
    for request in requests:
        assert len(request.body) <= policy.max_request_bytes
        assert policy.max_items is None or len(request.items) <= policy.max_items
    carried = sorted(id(item) for request in requests for item in request.items)
    assert carried == sorted(id(item) for item in items)  # each item once, none lost


def test_max_items_holds_when_items_are_small(sink: Sink) -> None:
    policy = sink.batch_policy
    if policy.max_items is None:
        pytest.skip(f"{sink.name} has no item limit per request")
    items = items_for(sink, 3 * policy.max_items + 5)
    requests = encode(sink, items)
    assert max(len(r.items) for r in requests) == policy.max_items


def test_an_item_no_request_can_hold_is_refused_when_encoded(sink: Sink) -> None:
    policy = sink.batch_policy
    assert policy.max_request_bytes is not None
    limit = min(policy.max_request_bytes, policy.max_item_bytes or policy.max_request_bytes)
    small = items_for(sink, 2)
    for kind in sorted(sink.accepts):
        big = Item(
            kind,
            "user-big",
            "" if kind == USER else "Big",
            {"blob": "y" * limit},
            dict(sink.example_fields.get(kind, {})),
            None,
            (9, -1 if kind == USER else 0),
            "conformance",
        )
        if kind == COHORT_MEMBERSHIP:  # a cohort change is as large as its user id
            big = Item(
                kind,
                "y" * limit,
                "Conformance cohort",
                {},
                dict(sink.example_fields.get(kind, {})),
                None,
                (9, 0),
                "conformance",
            )
        encoder = sink.encoder()
        requests, refused = encoder.add_all([small[0], big, small[1]])
        assert [(r.item, r.reason) for r in refused] == [(big, ItemTooLarge.reason)]
        with pytest.raises(Unencodable) as raised:
            encoder.add(big)
        assert raised.value.reason == ItemTooLarge.reason
        requests += encoder.flush()
        assert [i for r in requests for i in r.items] == small  # nothing of it held


def test_what_is_held_leaves_at_max_age(sink: Sink) -> None:
    max_age = sink.batch_policy.max_age
    assert max_age is not None
    encoder = sink.encoder()
    assert encoder.until_next() is None
    assert encoder.add(items_for(sink, 1)[0]) == []
    wait = encoder.until_next()
    assert wait is not None and 0 < wait <= max_age
    assert (encoder.until_next(now=1e12) or 0) < 0  # overdue: the loop flushes now
    assert len(encoder.flush()) == 1 and encoder.until_next() is None


# -- verdicts ---------------------------------------------------------------------------------
def request_of(sink: Sink) -> WireRequest:
    """A request of several items (documented answers may name items by index)."""
    return max(
        encode(sink, items_for(sink, 8 * len(sink.accepts))), key=lambda request: len(request.items)
    )


def test_every_documented_answer_maps_to_its_verdict(sink: Sink) -> None:
    request = request_of(sink)
    for status, body, expected in sink.documented_answers:
        assert expected in VERDICTS
        verdict = sink.classify(request, Response(status, {}, body))
        assert isinstance(verdict, expected), (status, body, verdict)


@pytest.mark.parametrize("status", [429, 500, 503])
def test_throttling_and_server_errors_are_retried(sink: Sink, status: int) -> None:
    verdict = sink.classify(request_of(sink), Response(status, {"Retry-After": "7"}, b""))
    assert isinstance(verdict, Retry | Partial)
    if status == 429:  # throttled, and never sent again sooner than the partner asked
        assert verdict.throttled and verdict.after is not None and verdict.after >= 7.0


# -- the runtime applies verdicts --------------------------------------------------------------
class Exchange:
    """Requests sent through the real Sender to an httpx MockTransport answering ``status`` and
    echoing the request (a proxy that echoes what it got, as in issue 8.4)."""

    def __init__(self, sink: Sink, tmp_path: Path, status: int = 400) -> None:
        self.sink = sink
        self.status = status
        self.dead_path = tmp_path / "dead.jsonl"
        self.report = RunReport(bundle="conformance", dry_run=False)
        self.settled: list[Item] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        body = request.content
        if request.headers.get("content-encoding") == "gzip":  # echoed inflated: readable
            body = gzip.decompress(body)
        echo = {
            "error": "refused",
            "echo": {
                "headers": dict(request.headers),
                "url": str(request.url),
                "body": body.decode(),
            },
        }
        return httpx.Response(self.status, content=orjson.dumps(echo))

    def run(self, requests: list[WireRequest]) -> None:
        async def main() -> None:
            secrets = frozenset(secrets_of(self.sink))
            dead = DeadLetterWriter(self.dead_path, "conformance", secrets)
            transport = httpx.MockTransport(self.handler)
            async with httpx.AsyncClient(transport=transport) as client:
                sender = Sender(
                    self.sink,
                    client,
                    RateLimiter([]),
                    RetryPolicy(max_attempts=3, backoff_base=0, backoff_cap=0),
                    self.report,
                    dead,
                    RunControl(),
                    on_final=lambda items, _: self.settled.extend(items),
                )
                for request in requests:
                    for item in request.items:
                        self.report.ledger.take(item.kind, item.ref[1] >= 0)
                    await sender.send(request)
            dead.close()

        anyio.run(main)

    def letters(self) -> list[dict[str, Any]]:
        if not self.dead_path.exists():
            return []
        return [orjson.loads(raw) for raw in self.dead_path.read_bytes().splitlines()]


def test_partial_verdicts_dead_letter_exactly_the_rejected_items(
    sink: Sink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = items_for(sink, 12)
    requests = encode(sink, items)
    first = {id(r) for r in requests}
    rejected: list[Item] = []
    retried: list[Item] = []
    resent: list[Item] = []

    def classify(request: WireRequest, response: Response) -> Verdict:
        if id(request) not in first:  # a resend of the items to retry
            resent.extend(request.items)
            return Delivered()
        last = len(request.items) - 1
        rejected.extend(
            {
                request.items[0].ref: request.items[0],
                request.items[last].ref: request.items[last],
            }.values()
        )
        retry = frozenset({1}) if last > 1 else frozenset()
        retried.extend(request.items[i] for i in retry)
        return Partial({0: "bad record 0", last: f"bad record {last}"}, retry, reason="HTTP 400")

    monkeypatch.setattr(sink, "classify", classify)
    exchange = Exchange(sink, tmp_path)
    exchange.run(requests)
    letters = exchange.letters()
    assert [(x["line"], x["event_index"]) for x in letters] == [
        (i.ref[0], None if i.ref[1] < 0 else i.ref[1]) for i in rejected
    ]
    assert {x["reason"] for x in letters} == {"rejected by the destination: HTTP 400"}
    assert all(x["error"].startswith("bad record ") for x in letters)
    ledger = exchange.report.ledger
    assert ledger.open() == 0
    assert sum(ledger.delivered.values()) == len(items) - len(rejected)
    assert sum(ledger.dead.values()) == len(rejected)
    assert sorted(map(id, exchange.settled)) == sorted(map(id, items))  # each once
    assert retried and resent == retried  # exactly the ones to retry went again


def test_secrets_never_appear_in_requests_shown_reports_or_dead_letters(
    sink: Sink, tmp_path: Path
) -> None:
    secrets = secrets_of(sink)
    forms = set(secrets)
    for request in encode(sink, items_for(sink, 4)):
        for name, value in request.headers.items():
            if name.lower() in sink.secret_headers:  # e.g. the Basic token: a derived form
                forms.add(value.split()[-1])
    shown = b"".join(
        request_json(r, sink.secret_headers, frozenset(secrets))
        for r in encode(sink, items_for(sink, 4))
    )
    for status in (400, 401, 500):
        exchange = Exchange(sink, tmp_path / str(status), status)
        exchange.run(encode(sink, items_for(sink, 4)))
        report = exchange.report
        outputs = {
            "dry-run requests": shown,
            "report": orjson.dumps(report.to_dict()) + report.summary().encode(),
            "dead letters": exchange.dead_path.read_bytes() if exchange.dead_path.exists() else b"",
        }
        for where, data in outputs.items():
            for form in forms:
                assert form.encode() not in data, f"{where} shows a secret ({status})"
                decoded = _b64(form)
                assert decoded is None or decoded not in data, where


def _b64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True) or None
    except ValueError:
        return None


def test_bad_settings_are_validate_errors_at_their_line(
    cli: Any, tmp_path: Path, sink: Sink
) -> None:
    """An unknown setting, and a wrong type for a setting that takes a number, are errors at
    ``file:line:col`` of the setting (never a traceback in a real run)."""
    model = settings_model_of(type(sink))
    numbers = [name for name, info in model.model_fields.items() if info.annotation in (int, float)]
    lines = [
        f"    {key}: {orjson.dumps(value).decode()}"
        for key, value in type(sink).example_settings.items()
        if key not in numbers[:1]
    ]
    bad = ["    no_such_setting: 1"] + [f"    {name}: abc" for name in numbers[:1]]
    bundle = tmp_path / "bundle.yaml"
    bundle.write_text(
        "\n".join(
            [
                "bundle: conformance",
                "source: {connector: mparticle}",
                "destination:",
                f"  connector: {sink.name}",
                "  settings:",
                *lines,
                *bad,
                "identity:",
                "  candidates: {customer_id: batch.user_identities.customer_id}",
                "events:",
                "  - name: all",
                '    event_name: "{{ event.event_type }}"',
                "",
            ]
        )
    )
    result: Result = cli("validate", str(bundle))
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    first = 6 + len(lines)
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert any(
        line.startswith(f"{bundle}:{first}:5: error: ") and "no_such_setting" in line
        for line in errors
    ), errors
    if numbers:
        assert any(line.startswith(f"{bundle}:{first + 1}:") for line in errors), errors
