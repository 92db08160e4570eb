"""The cohort examples: the dry runs the README shows give exactly the output it shows."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("bundle", "example"),
    [
        ("amplitude-cohorts-to-moengage", "amplitude-cohort-webhooks.jsonl"),
        ("mixpanel-cohorts-to-moengage", "mixpanel-cohort-webhooks.jsonl"),
    ],
)
def test_the_readme_shows_each_bundle_running_on_its_example(
    moerules: Callable[..., object], tmp_path: Path, bundle: str, example: str
) -> None:
    shutil.copytree(EXAMPLES, tmp_path / "examples")
    command = f"moerules run {bundle} --input examples/{example} --dry-run"
    assert f"```sh\n{command}\n```" in README
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOENGAGE_")}
    result = moerules(*command.split()[1:], cwd=tmp_path, env=env)
    assert result.returncode == 0  # type: ignore[attr-defined]
    shown = result.stdout + result.stderr  # type: ignore[attr-defined]
    assert f"```\n{shown}```" in README, f"README should show:\n{shown}"
    assert not (tmp_path / ".moerules").exists()  # a dry run writes no state
