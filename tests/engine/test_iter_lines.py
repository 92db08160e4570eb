"""Input lines are cut from blocks exactly as file iteration would give them."""

from __future__ import annotations

import random
from pathlib import Path

import moerules.engine.api as api
import pytest

_rng = random.Random(5)
INPUTS = [
    b"",
    b"\n",
    b"a\n",
    b"a",
    b"  ",
    b"a\n\nb\n  \n\r\nc",
    b"x\ry\nz\r\n",
    b"\n\n\nq",
    b"".join(
        b"x" * _rng.randrange(0, 3000) + (b"\n" if _rng.random() < 0.9 else b" \n")
        for _ in range(500)
    ),
    b"y" * 10_000 + b"\n" + b"z" * 5_000,  # lines longer than several blocks
]


@pytest.mark.parametrize("block", [1, 2, 7, 4096, 1 << 20])
@pytest.mark.parametrize("data", INPUTS, ids=range(len(INPUTS)))
def test_lines_and_numbers_match_file_iteration(
    data: bytes, block: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(data)
    monkeypatch.setattr(api, "_READ", block)
    with path.open("rb") as f:
        expected = [(n, line) for n, line in enumerate(f, 1) if not line.isspace()]
    assert list(api.iter_lines(str(path))) == expected
