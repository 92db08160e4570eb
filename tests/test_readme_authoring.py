"""The README's diff and coverage examples are what the commands print today."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Result

ROOT = Path(__file__).parents[1]
BLOCK = re.compile(r"```console\n\$ (moerules (?:diff|coverage) [^\n]+)\n(.*?)```", re.S)


def _examples() -> list[tuple[str, str]]:
    return BLOCK.findall((ROOT / "README.md").read_text(encoding="utf-8"))


def test_the_readme_has_the_examples() -> None:
    commands = [command.split()[1] for command, _ in _examples()]
    assert commands == ["diff", "coverage"]


@pytest.mark.parametrize(
    ("command", "shown"),
    _examples(),
    ids=lambda v: v.split()[1] if v.startswith("moerules") else "",
)
def test_example_output(
    command: str, shown: str, cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    for name in ("MOENGAGE_WORKSPACE_ID", "MOENGAGE_DATA_API_KEY"):  # shown as placeholders
        monkeypatch.delenv(name, raising=False)
    result = cli(*shlex.split(command)[1:])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == shown, "the README's example is out of date: paste the new output"
