"""Permanent failures are dead-lettered with status and excerpt; ``replay`` sends them again."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson
from moerules.connectors.emulation import Fault
from moerules.engine.runtime.delivery import deliver

from tests.conftest import Result
from tests.engine.runtime.conftest import (
    ENV,
    FAST,
    TimedEmulator,
    compiled,
    dead_ids,
    delivered,
    write_input,
)

SINGLE = "destination.mode=single"  # one request per user update or customer's events


def refuse(emu: TimedEmulator, requests: int) -> None:
    emu.faults.push(
        Fault(
            "record_400", indices=(0,), field="customer_id", message="customer_id refused by test"
        ),
        count=requests,
    )


def failed_run(emu: TimedEmulator, url: str, tmp_path: Path) -> tuple[set[str], Path]:
    expected = write_input(tmp_path / "in.jsonl", 6)
    with (tmp_path / "in.jsonl").open("ab") as f:
        f.write(b"{not json\n")  # a mapping failure: replay must leave it alone
    refuse(emu, 3)
    dead_path = tmp_path / "dead.jsonl"
    report = deliver(
        compiled(url, SINGLE),
        str(tmp_path / "in.jsonl"),
        dead_letter=dead_path,
        state_dir=tmp_path,
        quiet=True,
        options=FAST,
    )
    assert report.balanced() and not report.interrupted
    assert report.statuses["400"] == 3
    return expected, dead_path


def test_permanent_400_is_dead_lettered_with_status_and_excerpt(
    emulator: tuple[TimedEmulator, str], tmp_path: Path
) -> None:
    emu, url = emulator
    expected, dead_path = failed_run(emu, url, tmp_path)
    letters = [orjson.loads(raw) for raw in dead_path.read_bytes().splitlines()]
    delivery = [x for x in letters if x.get("stage") == "delivery"]
    assert len(delivery) >= 3 and len(letters) == len(delivery) + 1
    for letter in delivery:
        assert letter["reason"] == "rejected by the destination: HTTP 400"
        assert letter["status"] == 400 and letter["attempts"] == 1
        assert "customer_id refused by test" in letter["response"]
        assert letter["bundle"] == "mparticle-to-moengage"
        assert letter["rule"] in ("custom-event", "user")
    got = delivered(emu)
    failed = {
        f"user:{x['record']['identity']}"
        if x["record"]["kind"] == "user"
        else f"event:{x['record']['attributes']['msg']}"
        for x in delivery
    }
    assert set(got) | failed == expected and not set(got) & failed


def test_replay_resends_after_the_fault_is_cleared(
    emulator: tuple[TimedEmulator, str], tmp_path: Path, cli: Callable[..., Result]
) -> None:
    emu, url = emulator
    expected, dead_path = failed_run(emu, url, tmp_path)
    emu.faults.clear()
    result = cli(
        "replay",
        str(dead_path),
        "--set",
        f"destination.endpoint={url}",
        "--set",
        SINGLE,
        "-q",
        env=ENV,
    )
    assert result.exit_code == 0, result.stderr
    got = delivered(emu)
    assert set(got) == expected and set(got.values()) == {1}
    assert "dead-lettered 0" in result.stderr
    assert "mapping failures, not delivery failures" in result.stderr
    left = [orjson.loads(raw) for raw in dead_path.read_bytes().splitlines()]
    assert [x["reason"] for x in left] == ["malformed JSON"]
    again = cli(
        "replay",
        str(dead_path),
        "--bundle",
        "mparticle-to-moengage",
        "--set",
        f"destination.endpoint={url}",
        "-q",
        env=ENV,
    )
    assert again.exit_code == 0 and "read      0 lines" in again.stderr


def test_replay_that_fails_again_keeps_the_dead_letters(
    emulator: tuple[TimedEmulator, str], tmp_path: Path, cli: Callable[..., Result]
) -> None:
    emu, url = emulator
    _, dead_path = failed_run(emu, url, tmp_path)
    before = dead_ids(dead_path)
    refuse(emu, 100)
    result = cli(
        "replay",
        str(dead_path),
        "--set",
        f"destination.endpoint={url}",
        "--set",
        SINGLE,
        "-q",
        "--fail-on-dead-letter",
        env=ENV,
    )
    assert result.exit_code == 3, result.stderr
    assert dead_ids(dead_path) == before  # same items, one dead letter each
    assert len(dead_path.read_bytes().splitlines()) == sum(before.values()) + 1


def test_replay_names_the_bundle_or_asks_for_it(tmp_path: Path, cli: Callable[..., Result]) -> None:
    letters = tmp_path / "dead.jsonl"
    letters.write_bytes(
        b"".join(
            orjson.dumps(
                {
                    "reason": "rejected by the destination: HTTP 400",
                    "error": "HTTP 400",
                    "line": 1,
                    "bundle": name,
                    "rule": "custom-event",
                    "stage": "delivery",
                    "event_index": 0,
                    "record": {"kind": "event", "identity": "c-1", "name": "E", "attributes": {}},
                }
            )
            + b"\n"
            for name in ("one", "two")
        )
    )
    result = cli("replay", str(letters), env=ENV)
    assert result.exit_code == 2
    assert "pass --bundle" in result.stderr and "one, two" in result.stderr


def delivery_letter(
    record: dict[str, object], line: int = 1, index: int | None = 0, **extra: object
) -> bytes:
    return (
        orjson.dumps(
            {
                "reason": "retries exhausted: HTTP 503",
                "error": "HTTP 503",
                "line": line,
                "bundle": "mparticle-to-moengage",
                "rule": "custom-event",
                "stage": "delivery",
                "event_index": index,
                "record": record,
                **extra,
            }
        )
        + b"\n"
    )


def event_record(identity: object, msg: str, **extra: object) -> dict[str, object]:
    return {
        "kind": "event",
        "identity": identity,
        "name": "Tested",
        "attributes": {"msg": msg},
        **extra,
    }


# hand-edited entries, and why replay refuses each (issue 8.6, 8.10)
CRAFTED: dict[str, tuple[dict[str, object], str]] = {
    "project": (
        event_record("c-1", "p", project={"a": 1}),
        '`project` {"a":1} is not a project code of the bundle\'s routing',
    ),
    "null-identity": (event_record(None, "n"), "`identity` must be a non-empty string, not null"),
    "repr-identity": (
        event_record({"a": 1}, "r"),
        '`identity` must be a non-empty string, not {"a":1}',
    ),
    "refused-identity": (event_record("null", "x"), '`identity` "null" is not one the '),
    "action-field": (
        event_record("c-1", "f", fields={"action": "Other"}),
        "`fields` has 'action', which destination 'moengage' does not take",
    ),
    "cohort": (
        {"kind": "cohort_membership", "identity": "c-1", "name": "VIP", "attributes": {}},
        "`kind` 'cohort_membership' is not one destination",
    ),
    "name": (event_record("c-1", "m", name=5), "`name` must be a string, not 5"),
    "attributes": (
        {"kind": "user", "identity": "c-1", "attributes": ["a"]},
        '`attributes` must be an object, not ["a"]',
    ),
}


def test_replay_refuses_crafted_entries_one_by_one_and_sends_the_good_ones(
    emulator: tuple[TimedEmulator, str], tmp_path: Path, cli: Callable[..., Result]
) -> None:
    emu, url = emulator
    letters = tmp_path / "dead.jsonl"
    good = [
        delivery_letter(event_record("c-1", "good-1")),
        delivery_letter(
            {"kind": "user", "identity": "c-2", "attributes": {"plan": "x"}}, line=2, index=None
        ),
        delivery_letter(event_record("c-3", "good-3"), line=3, format=1),
    ]
    bad = [delivery_letter(record, line=10 + n) for n, (record, _) in enumerate(CRAFTED.values())]
    letters.write_bytes(good[0] + bad[0] + good[1] + b"".join(bad[1:]) + good[2])
    result = cli(
        "replay",
        str(letters),
        "--set",
        f"destination.endpoint={url}",
        "-q",
        "--report",
        str(tmp_path / "report.json"),
        env=ENV,
    )
    assert result.exit_code == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert set(delivered(emu)) == {"event:good-1", "user:c-2", "event:good-3"}
    left = [orjson.loads(raw) for raw in letters.read_bytes().splitlines()]
    assert [x["reason"] for x in left] == ["dead letter cannot be replayed"] * len(CRAFTED)
    for letter, (record, why) in zip(left, CRAFTED.values(), strict=True):
        assert why in letter["error"]
        assert letter["record"] == record  # as it was, to be fixed by hand
        assert letter["previous_reason"] == "retries exhausted: HTTP 503"
        assert letter["stage"] == "delivery" and letter["format"] == 1
    report = orjson.loads((tmp_path / "report.json").read_bytes())
    assert report["delivered"] == 3 and report["balanced"]
    assert report["dead_lettered"] == {"dead letter cannot be replayed": len(CRAFTED)}


def test_replay_refuses_a_dead_letter_format_it_does_not_read(
    tmp_path: Path, cli: Callable[..., Result]
) -> None:
    letters = tmp_path / "dead.jsonl"
    for version, message in [
        (2, "dead-letter format 2 was written by a newer moerules"),
        ("1", "unknown dead-letter format '1'"),
    ]:
        content = delivery_letter(event_record("c-1", "a")) + delivery_letter(
            event_record("c-1", "b"), format=version
        )
        letters.write_bytes(content)
        result = cli("replay", str(letters), env=ENV)
        assert result.exit_code == 2
        assert f"{letters}:2: {message}" in result.stderr
        assert "Traceback" not in result.stderr
        assert letters.read_bytes() == content  # untouched


def test_replay_writes_versioned_dead_letters(
    emulator: tuple[TimedEmulator, str], tmp_path: Path
) -> None:
    emu, url = emulator
    _, dead_path = failed_run(emu, url, tmp_path)
    delivery = [
        orjson.loads(raw)
        for raw in dead_path.read_bytes().splitlines()
        if b'"stage":"delivery"' in raw
    ]
    assert delivery and all(letter["format"] == 1 for letter in delivery)
