"""A real run's input: pipes, byte-order marks, huge lines and failing reads, over HTTP."""

from __future__ import annotations

import io
import os
import threading
from dataclasses import replace
from pathlib import Path

import orjson
from moerules.engine.api import dry_run, iter_lines, load_bundle
from moerules.engine.runtime.delivery import deliver

from tests.engine.runtime.conftest import (
    ENV,
    FAST,
    TimedEmulator,
    batch,
    compiled,
    delivered,
    expected_ids,
)


def line(n: int, **extra: object) -> bytes:
    return orjson.dumps({**batch(n, 3), **extra}) + b"\n"


def test_huge_line_and_bom_keep_offsets_right(
    emulator: tuple[TimedEmulator, str], tmp_path: Path
) -> None:
    emu, url = emulator
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + line(1) + line(2, pad="p" * 20_000) + line(3))
    options = replace(FAST, max_line_bytes=10_000)
    report = deliver(compiled(url), str(path), state_dir=tmp_path, quiet=True, options=options)
    assert set(delivered(emu)) == expected_ids(1, 1) | expected_ids(3, 3)
    assert report.dead_lettered == {"line too long": 1} and report.balanced()
    (letter,) = [
        orjson.loads(x) for x in (tmp_path / "dead-letter.jsonl").read_bytes().splitlines()
    ]
    assert (letter["line"], letter["reason"]) == (2, "line too long")
    # the checkpoint ended exactly at the end of the file: a rerun finds it complete
    with path.open("ab") as f:
        f.write(line(4))
    emu.reset()
    again = deliver(compiled(url), str(path), state_dir=tmp_path, quiet=True, options=options)
    assert set(delivered(emu)) == expected_ids(4, 4)
    assert again.notes == [f"resumed after line 3 (checkpoint in {tmp_path / 'state.sqlite'})"]


def test_named_pipe_input(emulator: tuple[TimedEmulator, str], tmp_path: Path) -> None:
    emu, url = emulator
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)

    def writer() -> None:
        with fifo.open("wb") as f:
            for n in range(1, 11):
                f.write(line(n))
                f.flush()

    thread = threading.Thread(target=writer)
    thread.start()
    report = deliver(compiled(url), str(fifo), state_dir=tmp_path, quiet=True, options=FAST)
    thread.join(timeout=10)
    assert set(delivered(emu)) == expected_ids(1, 10)
    assert report.notes == [
        f"input {fifo} is a pipe or a device, not a file: no checkpoint "
        "is kept, a rerun cannot resume"
    ]
    assert not (tmp_path / "state.sqlite").exists()


class _FailingRead(io.RawIOBase):
    """Two lines, then an I/O error (a disk or mount that went away)."""

    def __init__(self) -> None:
        self.calls = 0
        self.name = "flaky.jsonl"

    def readable(self) -> bool:
        return True

    def read1(self, size: int = -1) -> bytes:
        self.calls += 1
        if self.calls == 1:
            return line(1) + line(2)
        raise OSError(5, "Input/output error")


def test_a_read_that_fails_part_way_stops_the_dry_run_cleanly() -> None:
    bundle = load_bundle("mparticle-to-moengage", env=ENV)
    out = io.BytesIO()
    report = dry_run(bundle, iter_lines(_FailingRead()), out)  # type: ignore[arg-type]
    assert report.interrupted and report.lines_in == 2 and report.balanced()
    assert report.warnings == [
        f"reading input flaky.jsonl failed at byte {len(line(1) + line(2))}: Input/output error"
    ]
    assert out.getvalue()  # what was read is mapped and written
