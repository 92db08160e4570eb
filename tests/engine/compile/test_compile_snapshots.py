"""`moerules compile BUNDLE` prints the Python a bundle compiles to; the shipped bundles' code is
kept as snapshots, so a change to the compiler (or a bundle) shows in review as a change of
generated code.

After an intended change, regenerate them and review the diff:

    MOERULES_UPDATE_SNAPSHOTS=1 python -m pytest tests/engine/compile/test_compile_snapshots.py
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from moerules.engine.rules.overlay import shipped_bundles

from tests.conftest import Result

SNAPSHOTS = Path(__file__).parent / "snapshots"
UPDATE = os.environ.get("MOERULES_UPDATE_SNAPSHOTS") == "1"


@pytest.mark.parametrize("name", sorted(shipped_bundles()))
def test_shipped_bundles_compile_to_their_snapshot(cli: Callable[..., Result], name: str) -> None:
    result = cli("compile", name)
    assert result.exit_code == 0, result.stderr
    snapshot = SNAPSHOTS / f"{name}.py.txt"
    if UPDATE:
        snapshot.write_text(result.stdout, encoding="utf-8")
    assert snapshot.exists(), f"no snapshot of {name}: run with MOERULES_UPDATE_SNAPSHOTS=1"
    expected = snapshot.read_text(encoding="utf-8")
    assert result.stdout == expected, (
        f"the code {name} compiles to changed; if that is intended, run with "
        "MOERULES_UPDATE_SNAPSHOTS=1 and review the snapshot's diff"
    )


def test_every_snapshot_is_of_a_shipped_bundle() -> None:
    stale = {p.name.removesuffix(".py.txt") for p in SNAPSHOTS.glob("*.py.txt")} - set(
        shipped_bundles()
    )
    assert not stale, f"snapshots of bundles no longer shipped: {sorted(stale)}"


def test_compile_prints_runnable_code_and_its_constants(cli: Callable[..., Result]) -> None:
    result = cli(
        "compile", "mparticle-to-moengage", "--set", "routing.projects=[{name: Brand A, code: BA}]"
    )
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert out.startswith(
        "# mparticle-to-moengage: the Python its rules compile to, as a run runs it.\n"
    )
    assert "\ndef event(batch, event):\n" in out and "\ndef _event_safe(batch, event):\n" in out
    assert "projects_" in out and "{'Brand A': 0}" in out  # the routing table, shown
    assert "mapped_" in out and "= engine.compile.mapped.MappedEvent\n" in out
    compile(out, "<listing>", "exec")  # constants shown as Python, then the code


def test_compile_trace_shows_the_trace_points(cli: Callable[..., Result]) -> None:
    result = cli("compile", "mparticle-to-moengage", "--trace")
    assert result.exit_code == 0, result.stderr
    assert "traced, as explain runs it" in result.stdout
    assert "def event(batch, event, _tr=None):" in result.stdout
    assert "_event_safe" not in result.stdout


def test_compile_of_a_bad_bundle_lists_its_problems(
    cli: Callable[..., Result], write: Callable[..., Path]
) -> None:
    path = write("bundle.yaml", "bundle: t\nsource: {connector: mparticle}\n")
    result = cli("compile", str(path))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert f"{path}:1:1: error: missing required key 'destination'" in result.stderr
