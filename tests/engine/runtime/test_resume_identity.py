"""A checkpoint resumes only the input it was made from.

The checkpoint keeps the SHA-256 of every input byte it speaks of. A file at the same path
that starts with the same first KB but differs later (a daily export with a fixed header
batch) is a new input: read from line 1, nothing skipped, and the run says so. A file that
only grew (appends) resumes where it stopped.
"""

from __future__ import annotations

from pathlib import Path

import orjson
from moerules.connectors.emulation import Fault
from moerules.engine.runtime.delivery import deliver
from moerules.engine.runtime.state import CheckpointStore

from tests.engine.runtime.conftest import (
    FAST,
    TimedEmulator,
    batch,
    compiled,
    delivered,
    expected_ids,
)

HEADER = orjson.dumps({**batch(1, 3), "pad": "h" * 1500}) + b"\n"  # the same first KB daily


def export(path: Path, first: int, last: int) -> set[str]:
    """The fixed header batch (line 1), then batches ``first``..``last``; their item ids."""
    with path.open("wb") as f:
        f.write(HEADER)
        for line in range(first, last + 1):
            f.write(orjson.dumps(batch(line, 3)) + b"\n")
    return expected_ids(1, 1) | expected_ids(first, last)


def test_daily_export_with_the_same_header_is_read_whole(
    emulator: tuple[TimedEmulator, str], tmp_path: Path
) -> None:
    emu, url = emulator
    path, state = tmp_path / "export.jsonl", tmp_path / "state"
    export(path, 2, 30)  # day 1
    first = deliver(compiled(url), str(path), state_dir=state, quiet=True, options=FAST)
    assert first.lines_in == 30 and not first.interrupted
    emu.reset()
    day2 = export(path, 101, 140)  # day 2: same path, same first KB, other records, longer
    report = deliver(compiled(url), str(path), state_dir=state, quiet=True, options=FAST)
    assert set(delivered(emu)) == day2  # nothing skipped
    assert report.lines_in == 41 and report.balanced() and report.warnings == []
    assert report.notes == [
        f"{path} is not the input its checkpoint in "
        f"{state / 'state.sqlite'} was made from (its first "
        f"{first_size(tmp_path)} bytes differ): read as a new input, from "
        "line 1"
    ]
    emu.reset()
    day3 = export(path, 201, 205)  # day 3: shorter than what the checkpoint read
    report = deliver(compiled(url), str(path), state_dir=state, quiet=True, options=FAST)
    assert set(delivered(emu)) == day3
    assert "it is shorter than the" in report.notes[0]


def first_size(tmp_path: Path) -> int:
    """Bytes of the day-1 export (written again here: the file now holds day 2)."""
    export(tmp_path / "day1.jsonl", 2, 30)
    return (tmp_path / "day1.jsonl").stat().st_size


def test_unfinished_run_of_a_replaced_input(
    emulator: tuple[TimedEmulator, str], tmp_path: Path
) -> None:
    emu, url = emulator
    path, state = tmp_path / "export.jsonl", tmp_path / "state"
    export(path, 2, 40)
    emu.faults.push(Fault("echo", echo_status=401, path="/v1/transition"))  # a key revoked
    stopped = deliver(
        compiled(url, "destination.max_request_bytes=1024"),
        str(path),
        state_dir=state,
        quiet=True,
        options=FAST,
    )
    assert stopped.interrupted
    emu.reset()
    replaced = export(path, 301, 340)
    report = deliver(compiled(url), str(path), state_dir=state, quiet=True, options=FAST)
    assert set(delivered(emu)) == replaced
    (warning,) = report.warnings
    assert warning.startswith(
        f"{path} is not the input its checkpoint in {state / 'state.sqlite'} was made from ("
    )
    assert warning.endswith(f"cannot be resumed. {path} is read as a new input, from line 1")


def test_an_input_that_grew_resumes_where_it_stopped(
    emulator: tuple[TimedEmulator, str], tmp_path: Path
) -> None:
    emu, url = emulator
    path, state = tmp_path / "events.jsonl", tmp_path / "state"
    export(path, 2, 20)
    deliver(compiled(url), str(path), state_dir=state, quiet=True, options=FAST)
    emu.reset()
    with path.open("ab") as f:
        for line in range(21, 26):
            f.write(orjson.dumps(batch(line, 3)) + b"\n")
    report = deliver(compiled(url), str(path), state_dir=state, quiet=True, options=FAST)
    assert set(delivered(emu)) == expected_ids(21, 25)
    assert report.notes == [f"resumed after line 20 (checkpoint in {state / 'state.sqlite'})"]
    emu.reset()
    again = deliver(compiled(url), str(path), state_dir=state, quiet=True, options=FAST)
    assert len(emu.received) == 0 and "already complete" in again.notes[0]


def test_the_checkpoint_vouches_for_every_byte_it_speaks_of(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"a" * 5000 + b"\n" + b"b" * 100 + b"\n")
    store = CheckpointStore(tmp_path / "state.sqlite")
    run = store.resume("b", path).run
    # acknowledged through line 2 (fed), though only line 1 is final: both are covered
    store.save(run, [(2, 0)], 1, 5001, 2, prune=False, fed_offset=5102)
    assert store.load(run).hashed == 5102
    store.close()
    path.write_bytes(b"a" * 5000 + b"\n" + b"c" * 100 + b"\n")  # line 2 changed
    store = CheckpointStore(tmp_path / "state.sqlite")
    resumed = store.resume("b", path)
    assert resumed.checkpoint is not None and resumed.checkpoint.line == 0
    assert resumed.checkpoint.acked == frozenset()  # line 2's acknowledgement is not reused
    store.close()
