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
    emu.faults.push(Fault("record_400", indices=(0,), field="customer_id",
                          message="customer_id refused by test"), count=requests)


def failed_run(emu: TimedEmulator, url: str, tmp_path: Path) -> tuple[set[str], Path]:
    expected = write_input(tmp_path / "in.jsonl", 6)
    with (tmp_path / "in.jsonl").open("ab") as f:
        f.write(b"{not json\n")  # a mapping failure: replay must leave it alone
    refuse(emu, 3)
    dead_path = tmp_path / "dead.jsonl"
    report = deliver(compiled(url, SINGLE), str(tmp_path / "in.jsonl"), dead_letter=dead_path,
                     state_dir=tmp_path, quiet=True, options=FAST)
    assert report.balanced() and not report.interrupted
    assert report.statuses["400"] == 3
    return expected, dead_path


def test_permanent_400_is_dead_lettered_with_status_and_excerpt(
        emulator: tuple[TimedEmulator, str], tmp_path: Path) -> None:
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
    failed = {f"user:{x['record']['identity']}" if x["record"]["kind"] == "user" else
              f"event:{x['record']['attributes']['msg']}" for x in delivery}
    assert set(got) | failed == expected and not set(got) & failed


def test_replay_resends_after_the_fault_is_cleared(emulator: tuple[TimedEmulator, str],
                                                   tmp_path: Path,
                                                   cli: Callable[..., Result]) -> None:
    emu, url = emulator
    expected, dead_path = failed_run(emu, url, tmp_path)
    emu.faults.clear()
    result = cli("replay", str(dead_path), "--set", f"destination.endpoint={url}",
                 "--set", SINGLE, "-q", env=ENV)
    assert result.exit_code == 0, result.stderr
    got = delivered(emu)
    assert set(got) == expected and set(got.values()) == {1}
    assert "dead-lettered 0" in result.stderr
    assert "mapping failures, not delivery failures" in result.stderr
    left = [orjson.loads(raw) for raw in dead_path.read_bytes().splitlines()]
    assert [x["reason"] for x in left] == ["malformed JSON"]
    again = cli("replay", str(dead_path), "--bundle", "mparticle-to-moengage", "--set",
                f"destination.endpoint={url}", "-q", env=ENV)
    assert again.exit_code == 0 and "read      0 lines" in again.stderr


def test_replay_that_fails_again_keeps_the_dead_letters(emulator: tuple[TimedEmulator, str],
                                                        tmp_path: Path,
                                                        cli: Callable[..., Result]) -> None:
    emu, url = emulator
    _, dead_path = failed_run(emu, url, tmp_path)
    before = dead_ids(dead_path)
    refuse(emu, 100)
    result = cli("replay", str(dead_path), "--set", f"destination.endpoint={url}",
                 "--set", SINGLE, "-q", "--fail-on-dead-letter", env=ENV)
    assert result.exit_code == 3, result.stderr
    assert dead_ids(dead_path) == before  # same items, one dead letter each
    assert len(dead_path.read_bytes().splitlines()) == sum(before.values()) + 1


def test_replay_names_the_bundle_or_asks_for_it(tmp_path: Path,
                                                cli: Callable[..., Result]) -> None:
    letters = tmp_path / "dead.jsonl"
    letters.write_bytes(b"".join(orjson.dumps({
        "reason": "rejected by the destination: HTTP 400", "error": "HTTP 400", "line": 1,
        "bundle": name, "rule": "custom-event", "stage": "delivery", "event_index": 0,
        "record": {"kind": "event", "identity": "c-1", "name": "E", "attributes": {}},
    }) + b"\n" for name in ("one", "two")))
    result = cli("replay", str(letters), env=ENV)
    assert result.exit_code == 2
    assert "pass --bundle" in result.stderr and "one, two" in result.stderr
