"""Retries: Retry-After obeyed (measured at the emulator), else capped backoff with jitter."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest
from moerules.connectors.emulation import Fault
from moerules.engine.runtime.delivery import deliver
from moerules.engine.runtime.retry import RetryPolicy

from tests.engine.runtime.conftest import FAST, TimedEmulator, compiled, delivered, write_input


def test_retry_after_wins_up_to_its_cap() -> None:
    policy = RetryPolicy(max_retry_after=10.0)
    assert policy.delay(1, retry_after=2.5) == 2.5
    assert policy.delay(4, retry_after=0.0) == 0.0
    assert policy.delay(1, retry_after=3600.0) == 10.0


def test_full_jitter_within_a_capped_exponential() -> None:
    policy = RetryPolicy(backoff_base=0.5, backoff_cap=4.0, rng=random.Random(3))
    assert [policy.backoff(n) for n in (1, 2, 3, 4, 5, 500)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    draws = [policy.delay(3) for _ in range(500)]
    assert all(0.0 <= d <= 2.0 for d in draws)
    assert min(draws) < 0.2 and max(draws) > 1.8  # spread over the whole range


def test_attempts_are_bounded() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert [policy.can_retry(n) for n in (1, 2, 3)] == [True, True, False]
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


def test_429_storm_honours_retry_after(emulator: tuple[TimedEmulator, str], tmp_path: Path) -> None:
    emu, url = emulator
    emu.faults.push(Fault("429", retry_after=1), count=2)
    expected = write_input(tmp_path / "in.jsonl", 3)
    report = deliver(
        compiled(url),
        str(tmp_path / "in.jsonl"),
        state_dir=tmp_path,
        quiet=True,
        options=replace(FAST, concurrency=1),
    )
    assert set(delivered(emu)) == expected
    first, second, third = emu.arrivals[:3]
    assert second - first >= 0.99 and third - second >= 0.99  # not the 10 ms backoff
    assert report.throttled == 2 and report.retries == 2
    assert report.statuses == {"429": 2, "200": 1}


def test_retry_after_holds_back_every_sender(
    emulator: tuple[TimedEmulator, str], tmp_path: Path
) -> None:
    """One 429 with Retry-After pauses the credential, not just the request that met it."""
    emu, url = emulator
    emu.faults.push(Fault("429", retry_after=1), count=1)
    expected = write_input(tmp_path / "in.jsonl", 60)
    report = deliver(
        compiled(url, "destination.max_request_bytes=1024"),
        str(tmp_path / "in.jsonl"),
        state_dir=tmp_path,
        quiet=True,
        options=FAST,
    )
    assert set(delivered(emu)) == expected
    throttled_at = emu.arrivals[0]
    # requests already on their way may land just after the 429; nothing else before 1 s
    within = [a - throttled_at for a in emu.arrivals[1:] if 0.05 < a - throttled_at < 0.99]
    assert within == []
    assert report.throttled == 1


def test_429_without_retry_after_backs_off(
    emulator: tuple[TimedEmulator, str], tmp_path: Path
) -> None:
    emu, url = emulator
    emu.faults.push(Fault("429_bare"), count=3)
    expected = write_input(tmp_path / "in.jsonl", 2)
    report = deliver(
        compiled(url),
        str(tmp_path / "in.jsonl"),
        state_dir=tmp_path,
        quiet=True,
        options=replace(FAST, concurrency=1, backoff_base=0.05, backoff_cap=0.2),
    )
    assert set(delivered(emu)) == expected
    gaps = [b - a for a, b in zip(emu.arrivals, emu.arrivals[1:], strict=False)]
    assert all(gap < 0.5 for gap in gaps)  # backoff, no invented Retry-After
    assert report.throttled == 3 and report.retries == 3
