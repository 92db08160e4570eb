"""The three MoEngage Streams bundles as a whole: their tables agree with their rules, and the
example input runs through each as the README shows, every item accounted for, no secret
printed."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from moerules.engine.api import load_bundle
from moerules.engine.rules.overlay import shipped_bundles
from ruamel.yaml import YAML

from tests.conftest import EXAMPLES, Result

EXAMPLE = EXAMPLES / "streams-events.jsonl"
SECRETS = {
    "moengage-to-amplitude": {"AMPLITUDE_API_KEY": "amp-secret-key-123"},
    "moengage-to-segment": {"SEGMENT_WRITE_KEY": "seg-secret-write-key"},
    "moengage-to-mixpanel": {"MIXPANEL_PROJECT_TOKEN": "mp-secret-token-42"},
}


def tables(bundle: str) -> dict[str, dict[str, str]]:
    doc = YAML(typ="safe").load(shipped_bundles()[bundle].read_text(encoding="utf-8"))
    return doc["tables"]  # type: ignore[no-any-return]


def listed_codes(bundle: str, rule_name: str) -> list[str]:
    compiled = load_bundle(bundle, env=SECRETS[bundle])
    rule = next(r for r in compiled.model.events if r.name == rule_name)
    assert rule.when is not None
    inner = rule.when.split("[", 1)[1].split("]", 1)[0]
    return [code.strip().strip("'") for code in inner.split(",")]


def test_amplitude_selection_is_the_whole_table_by_default() -> None:
    codes = listed_codes("moengage-to-amplitude", "selected-events")
    assert codes == list(tables("moengage-to-amplitude")["amplitude_event_names"])


def test_segment_code_table_names_only_rows_of_segments_table() -> None:
    segment = tables("moengage-to-segment")
    assert set(segment["segment_event_codes"].values()) <= set(segment["segment_event_catalog"])


def test_segment_catalog_test_sends_every_row(tmp_path: Path) -> None:
    catalog = tables("moengage-to-segment")["segment_event_catalog"]
    test = shipped_bundles()["moengage-to-segment"].parent / "tests" / "catalog.yaml"
    sent = {
        e["event"]
        for case in YAML(typ="safe").load(test.read_text())["cases"]
        for request in case["expect"]["requests"]
        for e in request["body"]["batch"]
    }
    assert sent == (set(catalog) - {"Custom Event"}) | {"Added to Cart"}


# what each bundle does with examples/streams-events.jsonl (see its README section)
EXPECTED: dict[str, dict[str, Any]] = {
    "moengage-to-amplitude": {
        "delivered": 7,
        "dropped": {
            "event not selected for Amplitude": 1,
            "no uid: Amplitude needs the MoEngage uid as user_id": 1,
            "event has no event_uuid": 1,
            "event_time is not epoch seconds between 1971 and 2099": 1,
        },
        "dead_lettered": {
            "no usable identity": 1,
            "user_id shorter than min_id_length": 1,
            "payload is not a JSON object": 1,
            "payload has no events": 1,
            "malformed JSON": 1,
        },
    },
    "moengage-to-segment": {
        "delivered": 9,
        "dropped": {
            "no uid: Segment's userId is the MoEngage uid": 1,
            "event has no event_uuid": 1,
            "event_time is not epoch seconds between 1971 and 2099": 1,
        },
        "dead_lettered": {
            "no usable identity": 1,
            "payload is not a JSON object": 1,
            "payload has no events": 1,
            "malformed JSON": 1,
        },
    },
    "moengage-to-mixpanel": {
        "delivered": 9,
        "dropped": {
            "no uid: Mixpanel's distinct_id is the MoEngage uid": 1,
            "event has no event_uuid": 1,
            "event_time is not epoch seconds between 1971 and 2099": 1,
        },
        "dead_lettered": {
            "no usable identity": 1,
            "payload is not a JSON object": 1,
            "payload has no events": 1,
            "malformed JSON": 1,
        },
    },
}


@pytest.mark.parametrize("bundle", sorted(EXPECTED))
def test_example_dry_run(bundle: str, cli: Callable[..., Result], tmp_path: Path) -> None:
    report, dead = tmp_path / "report.json", tmp_path / "dead.jsonl"
    result = cli(
        "run",
        bundle,
        "--input",
        str(EXAMPLE),
        "--dry-run",
        "--report",
        str(report),
        "--dead-letter",
        str(dead),
        env=SECRETS[bundle],
    )
    assert result.exit_code == 0, result.stderr
    data = json.loads(report.read_text())
    expected = EXPECTED[bundle]
    assert (data["lines_in"], data["events_in"], data["unreadable_lines"]) == (7, 13, 3)
    assert data["delivered"] == expected["delivered"]
    assert data["dropped"] == dict(sorted(expected["dropped"].items()))
    assert data["dead_lettered"] == dict(sorted(expected["dead_lettered"].items()))
    assert data["balanced"] is True and data["requests"] == 1
    letters = [json.loads(line) for line in dead.read_text().splitlines()]
    assert len(letters) == data["dead_lettered_total"]
    (request,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert request["method"] == "POST"
    for secret in SECRETS[bundle].values():
        assert secret not in result.stdout + result.stderr + dead.read_text()


def test_the_readme_shows_the_settings_the_sinks_define() -> None:
    from moerules.connectors.amplitude.settings import AmplitudeSettings
    from moerules.connectors.mixpanel.settings import MixpanelSettings
    from moerules.connectors.segment.settings import SegmentSettings
    from moerules.engine.rules.settings import settings_table

    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    for model in (AmplitudeSettings, SegmentSettings, MixpanelSettings):
        table = settings_table(model)
        assert table in readme, f"README.md's {model.__name__} table should be:\n{table}"
