"""The installed layout: every source folder is a listed package under the `moerules` namespace."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_every_package_folder_is_installed() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = set()
    for top in ("engine", "connectors", "rules", "benchmarks"):
        name = f"moerules.{top}"
        assert config["package-dir"][name] == top
        for init in (ROOT / top).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / top).parts
            on_disk.add(".".join((name, *parts)))
    assert on_disk == listed


def test_no_global_import_names() -> None:
    """`pip install moerules` must not claim `engine` or `connectors` as top-level names."""
    import moerules.engine

    assert moerules.engine.__name__ == "moerules.engine"
    for line in (ROOT / "pyproject.toml").read_text().splitlines():
        if '= "' in line and ":" in line and "moerules." not in line and "engine" in line:
            raise AssertionError(f"entry point outside the namespace: {line}")
