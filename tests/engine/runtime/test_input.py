"""The input: lines cut with a size bound and a BOM skipped, whatever the block sizes; inputs
that cannot be read named with what to do."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from moerules.engine.errors import InputError
from moerules.engine.runtime.input import (
    BOM,
    EXCERPT_BYTES,
    LineCutter,
    LongLine,
    check_input,
)


def cut(data: bytes, block: int, limit: int) -> tuple[list[bytes | LongLine], int]:
    """Every line of ``data`` fed in blocks of ``block`` bytes; and the bytes skipped."""
    cutter = LineCutter(limit)
    lines: list[bytes | LongLine] = []
    for i in range(0, len(data), block):
        lines += cutter.feed(data[i : i + block])
    lines += cutter.end()
    return lines, cutter.take_skipped()


def expected(data: bytes, limit: int) -> list[bytes | LongLine]:
    """The same, by splitting the whole input at once (the model)."""
    data = data.removeprefix(BOM)
    out: list[bytes | LongLine] = []
    pieces = data.split(b"\n")
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        if last and not piece:
            break
        newline = not last
        if len(piece) > limit:
            out.append(LongLine(piece[:EXCERPT_BYTES], len(piece), len(piece) + newline, limit))
        else:
            out.append(piece + b"\n" * newline)
    return out


INPUTS = [
    b"",
    b"\n",
    b"a",
    b"a\nb",
    b"ab\n\ncd\n",
    BOM,
    BOM + b"{}\n",
    BOM[:2],
    b"\xef\xbbx\n",
    BOM + b"\n" + BOM + b"x\n",  # only the first BOM is skipped
    b"x" * 5000 + b"\nshort\n" + b"y" * 3000,  # long lines in the middle and at the end
    b"z" * 40 + b"\n" + b"w" * 41 + b"\n",  # at and just over a limit of 40
]


@pytest.mark.parametrize("block", [1, 2, 3, 7, 64, 1 << 20])
@pytest.mark.parametrize("limit", [40, 4096, 1 << 20])
@pytest.mark.parametrize("data", INPUTS, ids=range(len(INPUTS)))
def test_cutting_matches_the_model(data: bytes, block: int, limit: int) -> None:
    lines, skipped = cut(data, block, limit)
    assert lines == expected(data, limit)
    assert skipped == (3 if data.startswith(BOM) else 0)
    # every byte is accounted for: what the lines took plus the BOM
    taken = sum(x.size if isinstance(x, LongLine) else len(x) for x in lines)
    assert taken + skipped == len(data)


def test_long_line_keeps_only_its_excerpt() -> None:
    cutter = LineCutter(100)
    for _ in range(1000):  # 1 MB without a newline, in 1 KB blocks
        assert cutter.feed(b"q" * 1024) == []
        assert not cutter._parts  # nothing of it is held but the excerpt
    (line,) = cutter.feed(b"tail\nnext\n")[:1]
    assert line == LongLine(b"q" * EXCERPT_BYTES, 1024 * 1000 + 4, 1024 * 1000 + 5, 100)
    assert line.error == (
        "the line is 1024004 bytes long; the limit is 100 bytes (--max-line-bytes)"
    )


def test_resumed_input_keeps_a_leading_bom_like_sequence() -> None:
    # past the start of the file a BOM is data, not a mark to skip
    cutter = LineCutter(100, at_start=False)
    assert cutter.feed(BOM + b"x\n") == [BOM + b"x\n"]


def test_inputs_that_cannot_be_read(tmp_path: Path) -> None:
    missing = tmp_path / "none.jsonl"
    with pytest.raises(InputError) as info:
        check_input(str(missing))
    assert str(info.value) == (
        f"input {missing} does not exist; --input takes a JSON Lines file, or - for stdin"
    )
    with pytest.raises(InputError) as info:
        check_input(str(tmp_path))
    assert str(info.value) == (
        f"input {tmp_path} is a directory; --input takes a JSON Lines file, or - for stdin"
    )
    with pytest.raises(InputError) as info:
        check_input("/proc/self/mem")  # opens, then refuses to be read
    assert str(info.value) == "cannot read input /proc/self/mem: Input/output error"


def test_pipes_devices_and_files_are_inputs(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert check_input(str(fifo)) == "pipe"  # not opened: that would block, or steal data
    assert check_input("/dev/null") == "device"
    assert check_input("-") == "stdin"
    (tmp_path / "in.jsonl").write_bytes(b"{}\n")
    assert check_input(str(tmp_path / "in.jsonl")) == "file"
