"""The engine's public surface changes only on purpose (as httpx's test_exported_members)."""

from __future__ import annotations

import moerules.engine as engine


def test_exported_members() -> None:
    exported = {name for name in dir(engine) if not name.startswith("_")}
    modules = {name for name in exported if type(getattr(engine, name)).__name__ == "module"}
    assert exported - modules == set(engine.__all__)
    assert engine.__all__ == sorted(engine.__all__)
    assert all(getattr(engine, name) is not None for name in engine.__all__)
