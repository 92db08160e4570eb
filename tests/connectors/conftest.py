"""Fixtures shared by the emulator tests: each module supplies its own ``emu`` and ``client``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from moerules.connectors.emulation import Emulator, serve


@pytest.fixture(scope="module")
def url(emu: Emulator) -> Iterator[str]:
    """The module's emulator, served on 127.0.0.1 for the whole module."""
    with serve(emu) as base:
        yield base


@pytest.fixture(autouse=True)
def _fresh(request: pytest.FixtureRequest) -> None:
    """Every test starts with an empty store and no faults."""
    if "emu" in request.fixturenames:
        request.getfixturevalue("emu").reset()
