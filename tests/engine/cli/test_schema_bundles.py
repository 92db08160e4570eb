"""`moerules schema` and `moerules bundles`."""

from __future__ import annotations

import json
from collections.abc import Callable

import jsonschema

from tests.conftest import Result


def test_schema_describes_bundles(cli: Callable[..., Result]) -> None:
    result = cli("schema")
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema["title"] == "moerules bundle"
    assert set(schema["required"]) == {"bundle", "source", "destination"}
    assert {"identity", "events", "routing", "tables", "user", "extends"} <= set(
        schema["properties"]
    )
    rule = schema["$defs"]["EventRule"]
    assert rule["additionalProperties"] is False
    assert "when" in rule["properties"]
    assert "lookup" in schema["$defs"]["TransformName"]["enum"]


def test_bundles_lists_shipped(cli: Callable[..., Result]) -> None:
    result = cli("bundles")
    assert result.exit_code == 0
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert names == [
        "amplitude-cohorts-to-moengage",
        "mixpanel-cohorts-to-moengage",
        "moengage-to-amplitude",
        "moengage-to-mixpanel",
        "moengage-to-segment",
        "mparticle-to-moengage",
    ]
    assert "mParticle S2S batches" in result.stdout
    assert "MoEngage Streams → Amplitude HTTP V2 API" in result.stdout
    assert "Mixpanel cohort export → MoEngage Cohort Sync" in result.stdout


def test_installed_script_schema(moerules: Callable[..., object]) -> None:
    result = moerules("schema")
    assert result.returncode == 0  # type: ignore[attr-defined]
    assert json.loads(result.stdout)["type"] == "object"  # type: ignore[attr-defined]


def test_installed_script_bundles(moerules: Callable[..., object]) -> None:
    result = moerules("bundles")
    assert result.returncode == 0  # type: ignore[attr-defined]
    assert "mparticle-to-moengage" in result.stdout  # type: ignore[attr-defined]


def test_schema_takes_settings_from_the_connectors_models(cli: Callable[..., Result]) -> None:
    from moerules.connectors.moengage.settings import MoEngageDataSettings
    from moerules.engine.rules.loading import load_yaml
    from moerules.engine.rules.overlay import shipped_bundles

    schema = json.loads(cli("schema").stdout)
    defs = schema["$defs"]
    assert schema["properties"]["destination"] == {"$ref": "#/$defs/DestinationRef"}
    assert defs["DestinationRef"]["properties"]["connector"]["enum"] == [
        "amplitude",
        "mixpanel",
        "moengage",
        "moengage-cohort-sync",
        "segment",
    ]
    assert defs["SourceRef"]["properties"]["connector"]["enum"] == [
        "amplitude-cohorts",
        "mixpanel-cohorts",
        "moengage-streams",
        "mparticle",
    ]
    settings = defs["MoEngageDataSettings"]
    assert list(settings["properties"]) == list(MoEngageDataSettings.model_fields)
    assert settings["required"] == ["workspace_id", "data_api_key"]
    assert settings["properties"]["data_api_key"]["writeOnly"] is True
    assert defs["MParticleSettings"]["properties"] == {}

    validator = jsonschema.Draft202012Validator(schema)
    for path in shipped_bundles().values():
        shipped = load_yaml(path)
        assert list(validator.iter_errors(json.loads(json.dumps(shipped)))) == [], path

    def errors(**settings: object) -> list[str]:
        bundle = {
            "bundle": "b",
            "source": {"connector": "mparticle"},
            "destination": {
                "connector": "moengage",
                "settings": {"workspace_id": "WS", "data_api_key": "${KEY}", **settings},
            },
        }
        return sorted(e.message for e in validator.iter_errors(bundle))

    assert errors(requests_per_second=250, data_center="02", mode="single") == []
    assert errors(requests_per_second="${RPS}", data_center=2) == []
    assert errors(requests_per_second=0) != []
    assert errors(requests_per_second="abc") != []
    assert errors(data_centre="01") != []
    assert errors(mode="fast") != []
