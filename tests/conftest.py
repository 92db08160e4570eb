"""Shared fixtures: running the CLI in-process and as the installed console script."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import settings
from moerules.engine.cli.main import main

# Property tests run the same examples on every machine (a CI failure can be reproduced) and
# keep no example database in the checkout; their own @settings bound the time they take.
settings.register_profile("moerules", derandomize=True, database=None)
settings.load_profile("moerules")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli() -> Callable[..., Result]:
    """Run ``moerules ARGS`` in-process with click's runner; stdout and stderr apart."""

    def invoke(
        *args: str, input: bytes | str | None = None, env: dict[str, str] | None = None
    ) -> Result:
        runner = CliRunner()
        result = runner.invoke(main, list(args), input=input, env=env, catch_exceptions=False)
        return Result(result.exit_code, result.stdout, result.stderr)

    return invoke


def _script() -> str:
    found = shutil.which("moerules", path=str(Path(sys.executable).parent))
    return found or shutil.which("moerules") or "moerules"


@pytest.fixture
def moerules() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the installed ``moerules`` console script as a subprocess."""

    def run(
        *args: str,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("MOENGAGE_")}
        full_env.update(env or {})
        return subprocess.run(
            [_script(), *args],
            cwd=cwd,
            env=full_env,
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    return run


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write a dedented file under tmp_path and return its path."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    return _write


MINIMAL_BUNDLE = """
bundle: t
source: {connector: mparticle}
destination:
  connector: moengage
  settings: {workspace_id: WS, data_api_key: "${TEST_KEY}"}
identity:
  candidates: {customer_id: batch.user_identities.customer_id}
events:
  - name: custom
    when: event.event_type == 'custom_event'
    event_name: "{{ event.data.event_name }}"
"""
