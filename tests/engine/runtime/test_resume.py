"""Resume: a run killed with SIGKILL and run again loses nothing and re-sends little."""

from __future__ import annotations

import random
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import orjson
from moerules.connectors.emulation import Fault
from moerules.engine.connector import EVENT, Item
from moerules.engine.runtime.delivery import deliver
from moerules.engine.runtime.state import AckTracker, CheckpointStore

from tests.engine.runtime.conftest import (
    FAST,
    TimedEmulator,
    batch,
    compiled,
    delivered,
    expected_ids,
    item_ids,
    run_args,
    spawn,
    wait_until,
    write_input,
)

CONCURRENCY = 4


def max_items_per_request(emu: TimedEmulator) -> int:
    return max(len(item_ids(r.body)) for r in emu.received if r.status == 200)


def received_more(emu: TimedEmulator, count: int) -> Callable[[], bool]:
    """True once ``count`` more requests than now were accepted."""
    target = len(emu.received) + count
    return lambda: len(emu.received) >= target


def test_sigkill_at_random_points_then_rerun(
    emulator: tuple[TimedEmulator, str], tmp_path: Path
) -> None:
    emu, url = emulator
    expected = write_input(tmp_path / "in.jsonl", 200)
    args = run_args(
        url,
        tmp_path / "in.jsonl",
        tmp_path / "state",
        "-q",
        "--concurrency",
        str(CONCURRENCY),
        "--backoff-base",
        "0.01",
        "--set",
        "destination.max_request_bytes=1024",
        "--set",
        "destination.requests_per_second=80",
    )
    rng = random.Random(20240611)
    kills = 3
    for _ in range(kills):
        process = spawn(args, tmp_path)
        assert wait_until(received_more(emu, 3), timeout=20), "no delivery"
        time.sleep(rng.uniform(0.0, 0.15))
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=10)
        assert process.returncode == -signal.SIGKILL
    final = spawn(args, tmp_path)
    _, stderr = final.communicate(timeout=60)
    assert final.returncode == 0, stderr
    assert "resumed after line" in stderr
    got = delivered(emu)
    assert set(got) == expected, "every record delivered"
    duplicates = sum(n - 1 for n in got.values())
    assert duplicates <= CONCURRENCY * kills * max_items_per_request(emu)


def test_requests_finished_after_a_slow_one_are_not_sent_again(
    emulator: tuple[TimedEmulator, str], tmp_path: Path
) -> None:
    """Acknowledgements beyond the watermark survive the crash: only in-flight work repeats."""
    emu, url = emulator
    emu.faults.push(Fault("slow", delay=30.0), count=1)  # the first request never answers
    expected = write_input(tmp_path / "in.jsonl", 60)
    args = run_args(
        url,
        tmp_path / "in.jsonl",
        tmp_path / "state",
        "-q",
        "--concurrency",
        str(CONCURRENCY),
        "--set",
        "destination.max_request_bytes=1024",
    )
    process = spawn(args, tmp_path)
    assert wait_until(lambda: len(emu.received) >= 20, timeout=20)
    time.sleep(0.3)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=10)
    done_before = set(delivered(emu))
    with sqlite3.connect(tmp_path / "state" / "state.sqlite") as db:
        (line,) = db.execute("SELECT line FROM runs").fetchone()
    assert line == 0  # the slow request holds the watermark at the start
    rerun = spawn(args, tmp_path)
    _, stderr = rerun.communicate(timeout=60)
    assert rerun.returncode == 0, stderr
    got = delivered(emu)
    assert set(got) == expected
    # a watermark alone would send all of done_before again; only in-flight requests repeat
    duplicates = sum(n - 1 for n in got.values())
    assert duplicates <= CONCURRENCY * max_items_per_request(emu) < len(done_before)


def test_appended_input_resumes_after_the_end(
    emulator: tuple[TimedEmulator, str], tmp_path: Path
) -> None:
    emu, url = emulator
    path = tmp_path / "in.jsonl"
    write_input(path, 30)
    bundle = compiled(url)
    deliver(bundle, str(path), state_dir=tmp_path, quiet=True, options=FAST)
    with path.open("ab") as f:
        for line in range(31, 41):
            f.write(orjson.dumps(batch(line, 3)) + b"\n")
    report = deliver(bundle, str(path), state_dir=tmp_path, quiet=True, options=FAST)
    assert report.lines_in == 10
    got = delivered(emu)
    assert set(got) == expected_ids(1, 40) and set(got.values()) == {1}


def test_stdin_cannot_resume(emulator: tuple[TimedEmulator, str], tmp_path: Path) -> None:
    emu, url = emulator
    expected = write_input(tmp_path / "in.jsonl", 5)
    process = spawn(
        [
            "run",
            "mparticle-to-moengage",
            "--input",
            "-",
            "--set",
            f"destination.endpoint={url}",
            "--state-dir",
            str(tmp_path),
            "-q",
        ],
        tmp_path,
        stdin=True,
    )
    _, stderr = process.communicate((tmp_path / "in.jsonl").read_text(), timeout=30)
    assert process.returncode == 0, stderr
    assert "stdin: no checkpoint is kept" in stderr
    assert set(delivered(emu)) == expected


def test_tracker_watermark_waits_for_the_oldest_open_line() -> None:
    def item(line: int, index: int) -> Item:
        return Item(EVENT, "c", "e", {}, {}, None, (line, index), "r")

    tracker = AckTracker()
    offsets = {1: 0, 2: 10, 3: 25}
    items = {line: [item(line, 0), item(line, 1)] for line in offsets}
    for line, start in offsets.items():
        tracker.begin_line(start)
        for it in items[line]:
            tracker.add(it)
        tracker.end_line(line, start + 10)
    assert tracker.watermark == (0, 0)
    tracker.resolve(items[2], 2)
    assert tracker.watermark == (0, 0)
    tracker.resolve(items[1][:1], 1)
    assert tracker.watermark == (0, 0)
    tracker.resolve(items[1][1:], 0)
    assert tracker.watermark == (2, 25)  # line 3 still open: it starts at byte 25
    tracker.resolve(items[3], 2)
    assert tracker.watermark == (3, 35)
    assert tracker.delivered == 5 and tracker.open_items == 0


def test_store_keeps_acks_beyond_the_watermark(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "state.sqlite")
    run = store.open_run("b", "/in", "fp")
    assert store.open_run("b", "/in", "fp") == run
    store.save(run, [(5, 0), (5, 1), (2, 0)], line=2, offset=40, fed=6, prune=True)
    saved = store.load(run)
    assert (saved.line, saved.offset, saved.fed) == (2, 40, 6)
    assert saved.acked == {(5, 0), (5, 1)}
    store.save(run, [], line=5, offset=90, fed=6, prune=True)
    assert store.load(run).acked == frozenset()
    store.complete(run, 9, 120, 120)
    done = store.load(run)
    assert done.complete and done.size == 120
    store.reset(run)
    assert store.load(run).line == 0 and not store.load(run).complete
    store.close()
