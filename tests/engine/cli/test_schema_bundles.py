"""`moerules schema` and `moerules bundles`."""

from __future__ import annotations

import json
from collections.abc import Callable

from tests.conftest import Result


def test_schema_describes_bundles(cli: Callable[..., Result]) -> None:
    result = cli("schema")
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema["title"] == "moerules bundle"
    assert set(schema["required"]) == {"bundle", "source", "destination"}
    assert {"identity", "events", "routing", "tables", "user", "extends"} <= set(
        schema["properties"])
    rule = schema["$defs"]["EventRule"]
    assert rule["additionalProperties"] is False
    assert "when" in rule["properties"]
    assert "lookup" in schema["$defs"]["TransformName"]["enum"]


def test_bundles_lists_shipped(cli: Callable[..., Result]) -> None:
    result = cli("bundles")
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0].startswith("mparticle-to-moengage ")
    assert "mParticle S2S batches" in result.stdout


def test_installed_script_schema(moerules: Callable[..., object]) -> None:
    result = moerules("schema")
    assert result.returncode == 0  # type: ignore[attr-defined]
    assert json.loads(result.stdout)["type"] == "object"  # type: ignore[attr-defined]


def test_installed_script_bundles(moerules: Callable[..., object]) -> None:
    result = moerules("bundles")
    assert result.returncode == 0  # type: ignore[attr-defined]
    assert "mparticle-to-moengage" in result.stdout  # type: ignore[attr-defined]
