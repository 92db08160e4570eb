"""The connector contract: items with kinds, the JSON-array encoder, batch policies, rate-limit
costs, and the validate error for a kind the destination cannot take."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from moerules.connectors.moengage.sink import MoEngageDataSink
from moerules.engine.connector import (
    BYTES,
    EVENT,
    ITEMS,
    USER,
    BatchPolicy,
    Item,
    ItemTooLarge,
    JsonArrayEncoder,
    RateLimit,
    Response,
    WireRequest,
    kind_problem,
)

from tests.conftest import MINIMAL_BUNDLE, Result


def item(n: int, kind: str = EVENT, pad: int = 0) -> Item:
    return Item(kind, f"u{n}", f"E{n}", {"p": "x" * pad} if pad else {}, {}, None, (n, 0), "r")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def encoder(
    policy: BatchPolicy, clock: Callable[[], float] | None = None, by_kind: bool = False
) -> JsonArrayEncoder:
    return JsonArrayEncoder(
        policy,
        element=lambda i: {"event": i.name, "user": i.identity, **i.attributes},
        request=lambda key, body, items: WireRequest("POST", f"https://x/{key}", {}, body, items),
        key=(lambda i: i.kind) if by_kind else None,
        envelope=lambda key: (b'{"api_key":"k","events":[', b"]}"),
        **({"clock": clock} if clock else {}),
    )


def test_json_array_encoder_builds_envelope_and_keeps_order() -> None:
    enc = encoder(BatchPolicy())
    assert enc.add(item(1)) == [] and enc.add(item(2)) == []
    (request,) = enc.flush()
    assert request.body == (
        b'{"api_key":"k","events":[{"event":"E1","user":"u1"},{"event":"E2","user":"u2"}]}'
    )
    assert [i.name for i in request.items] == ["E1", "E2"]
    assert enc.flush() == []


def test_json_array_encoder_closes_at_max_items() -> None:
    enc = encoder(BatchPolicy(max_items=3))
    out = [r for n in range(7) for r in enc.add(item(n))] + enc.flush()
    assert [len(r.items) for r in out] == [3, 3, 1]
    assert [len(orjson.loads(r.body)["events"]) for r in out] == [3, 3, 1]


def test_json_array_encoder_stays_within_request_bytes() -> None:
    enc = encoder(BatchPolicy(max_request_bytes=300))
    out = [r for n in range(40) for r in enc.add(item(n, pad=n % 50))] + enc.flush()
    assert all(len(r.body) <= 300 for r in out)
    assert max(len(r.body) for r in out) > 250  # filled, not one item per request
    assert [i.name for r in out for i in r.items] == [f"E{n}" for n in range(40)]


def test_item_larger_than_its_limits_is_refused_and_held_nowhere() -> None:
    enc = encoder(BatchPolicy(max_request_bytes=200, max_item_bytes=120))
    enc.add(item(1))
    with pytest.raises(ItemTooLarge, match="at most 120 per item"):
        enc.add(item(2, pad=150))
    requests, refused = enc.add_all([item(3), item(4, pad=150), item(5)])
    assert [(r.item.name, r.reason) for r in refused] == [("E4", "too large for the destination")]
    out = requests + enc.flush()
    assert [i.name for r in out for i in r.items] == ["E1", "E3", "E5"]
    only_request = encoder(BatchPolicy(max_request_bytes=100))
    with pytest.raises(ItemTooLarge, match="a request holds at most 100 bytes"):
        only_request.add(item(1, pad=80))


def test_json_array_encoder_keeps_one_batch_per_key() -> None:
    enc = encoder(BatchPolicy(max_items=2), by_kind=True)
    out = enc.add(item(1)) + enc.add(item(2, USER)) + enc.add(item(3)) + enc.flush()
    assert [(r.url, [i.name for i in r.items]) for r in out] == [
        ("https://x/event", ["E1", "E3"]),
        ("https://x/user", ["E2"]),
    ]


def test_until_next_counts_from_the_oldest_held_item() -> None:
    clock = Clock()
    enc = encoder(BatchPolicy(max_age=5.0), clock=clock, by_kind=True)
    assert enc.until_next() is None
    enc.add(item(1))
    clock.now += 2
    enc.add(item(2, USER))
    assert enc.until_next() == pytest.approx(3.0)
    clock.now += 3.5
    assert enc.until_next() == pytest.approx(-0.5)
    assert len(enc.flush()) == 2 and enc.until_next() is None
    assert encoder(BatchPolicy(), clock=clock).until_next() is None  # no max_age: never


def test_batch_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="max_items"):
        BatchPolicy(max_items=0)
    with pytest.raises(ValueError, match="max_age"):
        BatchPolicy(max_age=-1)


def test_rate_limit_costs_count_what_the_partner_counts() -> None:
    request = WireRequest(
        "POST", "u", {}, b"x" * 1234, [item(1), item(2, USER), item(3), item(4, USER), item(5)]
    )
    assert RateLimit(10, 1.0).cost(request) == 1
    assert RateLimit(10, 1.0, counts=ITEMS).cost(request) == 5
    assert RateLimit(10, 1.0, counts=ITEMS, kind=EVENT).cost(request) == 3
    assert RateLimit(10, 1.0, counts=ITEMS, kind=USER).cost(request) == 2
    assert RateLimit(10, 1.0, counts=BYTES).cost(request) == 1234
    with pytest.raises(ValueError, match="requests, items or bytes"):
        RateLimit(10, 1.0, counts="users")


def test_response_headers_are_case_insensitive_and_json_is_forgiving() -> None:
    answer = Response(429, {"Retry-After": "3"}, b"not json")
    assert answer.header("retry-after") == "3" and answer.header("x-none") is None
    assert answer.json() is None and Response(200).json() is None
    assert Response(200, body=b'{"a":1}').json() == {"a": 1}


def test_kind_problem_names_what_the_destination_accepts() -> None:
    assert kind_problem(MoEngageDataSink, EVENT) is None
    assert kind_problem(MoEngageDataSink, "cohort_membership") == (
        "destination 'moengage' cannot take 'cohort_membership' items (cohort membership "
        "changes); it accepts: event, user"
    )


def test_validate_refuses_a_kind_the_destination_cannot_take(
    cli: Callable[..., Result], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(MoEngageDataSink, "accepts", frozenset({EVENT}))
    bundle = tmp_path / "bundle.yaml"
    bundle.write_text(
        MINIMAL_BUNDLE + "  - name: profile\n"
        "    when: event.event_type == 'user_attribute_change'\n"
        "    emit: user\n"
        "    attributes: {from: event.data}\n"
        "user:\n  attributes: {plan: batch.user_attributes.plan}\n"
    )
    result = cli("validate", str(bundle))
    assert result.exit_code == 1
    message = (
        "destination 'moengage' cannot take 'user' items (user profile updates); it accepts: event"
    )
    assert result.stderr.splitlines() == [
        f"{bundle}:15:5: error: {message}",
        f"{bundle}:17:1: error: {message}",
        "2 problems found in 1 files",
    ]
