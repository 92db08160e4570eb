"""A real run over HTTP: every record ends delivered or dead-lettered, checked one by one."""

from __future__ import annotations

import io
import os
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import anyio
import orjson
import pytest
from moerules.connectors.emulation import Fault
from moerules.connectors.moengage import sink as sink_module
from moerules.engine.api import dry_run, iter_lines
from moerules.engine.runtime.delivery import deliver
from moerules.engine.runtime.progress import ProgressDisplay, Snapshot

from tests.engine.runtime.conftest import (
    FAST,
    TimedEmulator,
    batch,
    compiled,
    dead_ids,
    delivered,
    expected_ids,
    item_ids,
    wait_until,
    write_input,
)


def test_delivers_every_record_once(emulator: tuple[TimedEmulator, str], tmp_path: Path) -> None:
    emu, url = emulator
    expected = write_input(tmp_path / "in.jsonl", 40)
    report = deliver(
        compiled(url, "destination.max_request_bytes=2048"),
        str(tmp_path / "in.jsonl"),
        state_dir=tmp_path / "state",
        quiet=True,
        options=FAST,
    )
    got = delivered(emu)
    assert set(got) == expected
    assert set(got.values()) == {1}
    assert report.dry_run is False
    assert report.balanced()
    assert report.delivered == len(expected)
    assert report.requests == len(emu.received) > 1
    assert dict(report.statuses) == {"200": report.requests}
    assert report.retries == report.throttled == 0
    assert not report.interrupted
    assert not (tmp_path / "state" / "dead-letter.jsonl").exists()


def test_rerun_of_a_complete_input_sends_nothing(
    emulator: tuple[TimedEmulator, str], tmp_path: Path
) -> None:
    emu, url = emulator
    write_input(tmp_path / "in.jsonl", 5)
    bundle = compiled(url)
    deliver(bundle, str(tmp_path / "in.jsonl"), state_dir=tmp_path, quiet=True, options=FAST)
    sent = len(emu.received)
    again = deliver(
        bundle, str(tmp_path / "in.jsonl"), state_dir=tmp_path, quiet=True, options=FAST
    )
    assert len(emu.received) == sent
    assert again.lines_in == 0
    assert any("already complete" in n for n in again.notes)
    fresh = deliver(
        bundle,
        str(tmp_path / "in.jsonl"),
        state_dir=tmp_path,
        quiet=True,
        from_start=True,
        options=FAST,
    )
    assert fresh.lines_in == 5
    assert len(emu.received) == 2 * sent


def test_faults_end_delivered_or_dead_lettered(
    emulator: tuple[TimedEmulator, str], tmp_path: Path
) -> None:
    """20% faults: throttling with and without Retry-After, 5xx, resets, slow answers."""
    emu, url = emulator
    emu.faults.reseed(44)  # a seed that draws every kind of fault early
    for fault, probability in [
        (Fault("429", retry_after=0), 0.04),
        (Fault("429_date", retry_after=0), 0.02),
        (Fault("429_bare"), 0.03),
        (Fault("500"), 0.04),
        (Fault("503"), 0.03),
        (Fault("reset"), 0.02),
        (Fault("slow", delay=0.2), 0.02),
    ]:
        emu.faults.add_random(fault, probability)
    expected = write_input(tmp_path / "in.jsonl", 120)
    dead_path = tmp_path / "dead.jsonl"
    report = deliver(
        compiled(url, "destination.max_request_bytes=1500"),
        str(tmp_path / "in.jsonl"),
        dead_letter=dead_path,
        state_dir=tmp_path / "state",
        quiet=True,
        options=replace(FAST, max_attempts=3),
    )
    got, dead = delivered(emu), dead_ids(dead_path)
    assert set(got) | set(dead) == expected, "every record delivered or dead-lettered"
    assert not set(got) & set(dead)
    assert set(got.values()) == {1} and set(dead.values()) <= {1}
    assert report.balanced()
    assert report.delivered == sum(got.values())
    assert sum(report.dead_lettered.values()) == sum(dead.values())
    stats = emu.stats()["faults"]
    assert (
        report.throttled
        == stats.get("429", 0) + stats.get("429_date", 0) + stats.get("429_bare", 0)
        > 0
    )
    assert report.statuses["500"] == stats.get("500", 0)
    assert report.statuses["connection error"] == stats.get("reset", 0)
    assert report.retries >= sum(stats.values()) - stats.get("slow", 0) - len(dead)
    for raw in dead_path.read_bytes().splitlines() if dead_path.exists() else []:
        letter = orjson.loads(raw)
        assert letter["reason"].startswith("retries exhausted: ")
        assert letter["attempts"] == 3 and letter["stage"] == "delivery"
        assert letter["bundle"] == "mparticle-to-moengage"


def test_retries_exhausted_dead_letters_with_details(
    emulator: tuple[TimedEmulator, str], tmp_path: Path
) -> None:
    emu, url = emulator
    emu.faults.push(Fault("503"), count=3)
    expected = write_input(tmp_path / "in.jsonl", 2, events=1)
    dead_path = tmp_path / "dead.jsonl"
    report = deliver(
        compiled(url),
        str(tmp_path / "in.jsonl"),
        dead_letter=dead_path,
        state_dir=tmp_path,
        quiet=True,
        options=replace(FAST, concurrency=1, max_attempts=3),
    )
    assert set(dead_ids(dead_path)) == expected
    assert report.delivered == 0 and report.balanced()
    assert report.dead_lettered == {"retries exhausted: HTTP 503": len(expected)}
    assert report.retries == 2 and report.statuses == {"503": 3}
    letters = [orjson.loads(raw) for raw in dead_path.read_bytes().splitlines()]
    event = next(x for x in letters if x["record"]["kind"] == "event")
    assert event["status"] == 503 and event["attempts"] == 3
    assert "ServiceUnavailable" in event["response"]
    assert event["line"] == 1 and event["event_index"] == 0
    assert event["rule"] == "custom-event"
    assert event["record"]["name"] == "Tested"
    assert event["record"]["identity"] == "c-1"


def test_413_splits_the_request(emulator: tuple[TimedEmulator, str], tmp_path: Path) -> None:
    emu, url = emulator
    emu.max_body_bytes = 1500  # stricter than the sink believes
    expected = write_input(tmp_path / "in.jsonl", 30)
    big = tmp_path / "in.jsonl"
    with big.open("ab") as f:  # one event far beyond the emulator's limit: alone, still 413
        f.write(
            orjson.dumps(
                {
                    "user_identities": {"customer_id": "c-big"},
                    "events": [
                        {
                            "event_type": "custom_event",
                            "data": {
                                "event_name": "Big",
                                "custom_attributes": {"msg": "big", "blob": "x" * 3000},
                            },
                        }
                    ],
                }
            )
            + b"\n"
        )
    dead_path = tmp_path / "dead.jsonl"
    report = deliver(
        compiled(url, "destination.max_request_bytes=8192"),
        str(big),
        dead_letter=dead_path,
        state_dir=tmp_path,
        quiet=True,
        options=FAST,
    )
    got = delivered(emu)
    assert set(got) == expected and set(got.values()) == {1}
    assert set(dead_ids(dead_path)) == {"event:big"}
    assert report.statuses["413"] > 1
    assert report.dead_lettered == {"too large for one request (HTTP 413)": 1}
    assert report.balanced()


def test_lines_longer_than_a_read_and_no_final_newline(
    emulator: tuple[TimedEmulator, str], tmp_path: Path
) -> None:
    emu, url = emulator
    path = tmp_path / "in.jsonl"
    huge = {
        "user_identities": {"customer_id": "c-huge"},
        "events": [
            {
                "event_type": "custom_event",
                "data": {
                    "event_name": "Huge",
                    "custom_attributes": {"msg": "huge", "blob": "y" * 200_000},
                },
            }
        ],
    }
    path.write_bytes(
        orjson.dumps(batch(1, 2)) + b"\n\n" + orjson.dumps(huge) + b"\n" + orjson.dumps(batch(4, 2))
    )  # a blank line, and no newline at the end
    dead_path = tmp_path / "dead.jsonl"
    report = deliver(
        compiled(url),
        str(path),
        dead_letter=dead_path,
        state_dir=tmp_path,
        quiet=True,
        options=FAST,
    )
    assert report.lines_in == 3
    assert set(delivered(emu)) == expected_ids(1, 1, 2) | expected_ids(4, 4, 2)
    # larger than any request the destination takes: refused when encoded, never sent
    (letter,) = [orjson.loads(raw) for raw in dead_path.read_bytes().splitlines()]
    assert letter["reason"] == "too large for the destination"
    assert letter["record"]["data"]["custom_attributes"]["msg"] == "huge"
    assert report.dead_lettered == {"too large for the destination": 1}
    assert "413" not in report.statuses
    again = deliver(compiled(url), str(path), state_dir=tmp_path, quiet=True, options=FAST)
    assert any("already complete" in n for n in again.notes)


def test_wrong_credentials_stop_the_run_without_dead_letters(
    emulator: tuple[TimedEmulator, str], tmp_path: Path
) -> None:
    _, url = emulator
    write_input(tmp_path / "in.jsonl", 20)
    report = deliver(
        compiled(url, "destination.data_api_key=wrong-key-value"),
        str(tmp_path / "in.jsonl"),
        state_dir=tmp_path,
        quiet=True,
        options=FAST,
    )
    assert report.interrupted
    assert any("HTTP 401" in w for w in report.warnings)
    assert not (tmp_path / "dead-letter.jsonl").exists()
    assert report.balanced()
    assert report.delivered == 0


@pytest.mark.anyio
async def test_progress_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    display = ProgressDisplay(
        lambda: Snapshot(10, 100, 7, 1, 2, 1), stream=out, tty=False, interval=0.01
    )
    with anyio.move_on_after(0.1):
        await display.run()
    assert "moerules: 10 lines" in out.getvalue()
    assert "delivered 7, dead-lettered 1, retries 2 (1 after 429)" in out.getvalue()


@pytest.mark.anyio
async def test_progress_bar_on_a_terminal_and_quiet() -> None:
    out = io.StringIO()
    display = ProgressDisplay(
        lambda: Snapshot(10, 50, 7, 1, 0, 0), total_bytes=100, stream=out, tty=True, interval=0.01
    )
    with anyio.move_on_after(0.1):
        await display.run()
    assert "delivered 7" in out.getvalue()
    silent = io.StringIO()
    with anyio.move_on_after(0.05):
        await ProgressDisplay(
            lambda: Snapshot(1, 1, 1, 0, 0, 0), stream=silent, quiet=True, interval=0.01
        ).run()
    assert silent.getvalue() == ""


def test_stopped_run_takes_back_user_updates_made_by_events(
    emulator: tuple[TimedEmulator, str], tmp_path: Path
) -> None:
    _, url = emulator
    path = tmp_path / "in.jsonl"
    change = {
        "event_type": "user_attribute_change",
        "data": {"user_attribute_name": "$City", "new": "Paris", "old": "Oslo"},
    }
    path.write_bytes(
        orjson.dumps(
            {
                "user_identities": {"customer_id": "c-1"},
                "user_attributes": {"tier": "gold"},
                "events": [change, change],
            }
        )
        + b"\n"
    )
    report = deliver(
        compiled(url, "destination.data_api_key=wrong-key-value"),
        str(path),
        state_dir=tmp_path,
        quiet=True,
        options=FAST,
    )
    assert report.interrupted
    # nothing was sent: the two event-made updates and the batch's update are all taken back
    assert (report.events_in, report.user_updates_in, report.delivered) == (0, 0, 0)
    assert report.balanced()


def test_an_event_that_cannot_be_encoded_is_dead_lettered_and_the_run_completes(
    emulator: tuple[TimedEmulator, str], tmp_path: Path
) -> None:
    """JSON cannot carry an integer beyond 64 bits to the partner: that event alone is dead-
    lettered at mapping, everything else delivered, and the input checkpointed complete."""
    emu, url = emulator
    expected = write_input(tmp_path / "in.jsonl", 6)
    lines = (tmp_path / "in.jsonl").read_bytes().splitlines()
    # written by hand: orjson will not write such an integer either
    lines[2] = lines[2].replace(b'"msg":"3-1"', b'"msg":"3-1","huge":%d' % 2**70)
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    bundle = compiled(url)
    report = deliver(
        bundle, str(tmp_path / "in.jsonl"), state_dir=tmp_path / "state", quiet=True, options=FAST
    )
    assert set(delivered(emu)) == expected - {"event:3-1"}
    assert dict(report.dead_lettered) == {"cannot encode for the destination": 1}
    assert report.balanced() and not report.interrupted
    letter = orjson.loads((tmp_path / "state" / "dead-letter.jsonl").read_bytes())
    assert letter["event_index"] == 1 and letter["line"] == 3
    again = deliver(
        bundle, str(tmp_path / "in.jsonl"), state_dir=tmp_path / "state", quiet=True, options=FAST
    )
    assert again.lines_in == 0 and any("already complete" in n for n in again.notes)


def test_an_input_that_never_ends_still_sends_on_time(
    emulator: tuple[TimedEmulator, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A half-full request leaves when its oldest item is the batch policy's max_age old, while
    the input (a pipe) stays open: a service's input never reaches its end."""
    emu, url = emulator
    monkeypatch.setattr(sink_module, "DEFAULT_MAX_AGE", 0.3)
    read_end, write_end = os.pipe()
    stdin = io.TextIOWrapper(os.fdopen(read_end, "rb"))
    monkeypatch.setattr(sys, "stdin", stdin)
    seen: list[float] = []

    def writer() -> None:
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(orjson.dumps(batch(1, 2)) + b"\n")
            pipe.flush()
            written = time.monotonic()
            wait_until(lambda: bool(emu.received), timeout=5.0)
            seen.append(time.monotonic() - written)  # the pipe is still open here
            pipe.write(orjson.dumps(batch(2, 2)) + b"\n")

    thread = threading.Thread(target=writer)
    thread.start()
    report = deliver(
        compiled(url),
        "-",
        state_dir=tmp_path,
        quiet=True,
        options=replace(FAST, handle_signals=False),
    )
    thread.join()
    stdin.close()
    assert seen and 0.25 <= seen[0] < 3.0  # flushed by age, not by the end of the input
    first = emu.received[0]
    assert item_ids(first.body) == ["user:c-1", "event:1-0", "event:1-1"]
    assert set(delivered(emu)) == expected_ids(1, 2, 2)
    assert report.balanced() and not report.interrupted


def test_an_item_too_large_is_dead_lettered_alike_in_dry_and_real_runs(
    emulator: tuple[TimedEmulator, str], tmp_path: Path
) -> None:
    """Issue 8.8: a dry run promises only what the real run can do."""
    emu, url = emulator
    path = tmp_path / "in.jsonl"
    huge = batch(2, 2)
    huge["events"][1]["data"]["custom_attributes"]["blob"] = "z" * 200_000
    path.write_bytes(b"".join(orjson.dumps(b) + b"\n" for b in (batch(1, 2), huge, batch(3, 2))))
    dry_dead, real_dead = tmp_path / "dry.jsonl", tmp_path / "real.jsonl"
    with (tmp_path / "requests.jsonl").open("wb") as out:
        dry = dry_run(compiled(url), iter_lines(str(path)), out, dead_letter=dry_dead)
    real = deliver(
        compiled(url),
        str(path),
        dead_letter=real_dead,
        state_dir=tmp_path,
        quiet=True,
        options=FAST,
    )
    assert dry_dead.read_bytes() == real_dead.read_bytes()
    (letter,) = [orjson.loads(raw) for raw in real_dead.read_bytes().splitlines()]
    assert (letter["reason"], letter["line"], letter["event_index"]) == (
        "too large for the destination",
        2,
        1,
    )
    for report in (dry, real):
        assert report.dead_lettered == {"too large for the destination": 1}
        assert report.delivered == len(expected_ids(1, 3, 2)) - 1
    assert max(len(line) for line in (tmp_path / "requests.jsonl").read_bytes().splitlines()) < (
        100 * 1024
    )
    assert set(delivered(emu)) == expected_ids(1, 3, 2) - {"event:2-1"}
