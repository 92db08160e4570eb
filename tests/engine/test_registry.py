"""One registry: connectors and emulators are found through entry points only.

A third-party connector is simulated the way pip would install one: a ``*.dist-info`` folder
with an ``entry_points.txt``, and its module, in a folder put on ``sys.path``. Nothing is
installed and nothing in moerules changes.
"""

from __future__ import annotations

import io
import json
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from moerules.engine import connector
from moerules.engine.api import dry_run, load_bundle
from moerules.engine.connector import (
    connector_names,
    emulator_names,
    load_connector,
    load_emulator,
)
from moerules.engine.errors import RuleError
from moerules.engine.rules.schema import bundle_schema

ACME = """
from typing import ClassVar, Literal

from moerules.engine.connector import (
    EVENT, BatchPolicy, Delivered, JsonArrayEncoder, Reject, Sink, WireRequest)
from moerules.engine.rules.settings import ConnectorSettings
from pydantic import Field, SecretStr


class AcmeSettings(ConnectorSettings):
    api_key: SecretStr = Field(description="the Acme API key (secret)")
    region: Literal["us", "eu"] = Field("us", description="data residency")
    batch_size: int = Field(10, ge=1, le=100, description="events per request")


class AcmeSink(Sink):
    name = "acme"
    accepts = frozenset({EVENT})
    settings_model: ClassVar[type[AcmeSettings]] = AcmeSettings

    def __init__(self, settings: AcmeSettings) -> None:
        super().__init__({})
        self.config = settings
        self.batch_policy = BatchPolicy(max_items=settings.batch_size)

    @classmethod
    def from_settings(cls, settings: AcmeSettings) -> "AcmeSink":
        return cls(settings)

    def encoder(self):
        url = f"https://{self.config.region}.acme.example/track"
        return JsonArrayEncoder(
            self.batch_policy, element=lambda item: {"user": item.identity, "event": item.name},
            request=lambda key, body, items: WireRequest(
                "POST", url, {"Authorization": self.config.api_key.get_secret_value()}, body,
                items))

    def classify(self, request, response):
        return Delivered() if response.status < 300 else Reject(f"HTTP {response.status}")


class AcmeEmulator:
    def __init__(self, **options):
        self.options = options
"""

BUNDLE = """\
bundle: to-acme
source: {connector: mparticle}
destination:
  connector: acme
  settings: {api_key: "${ACME_KEY}", region: eu, batch_size: 2}
identity: {candidates: {customer_id: batch.user_identities.customer_id}}
events:
  - name: custom
    when: event.event_type == 'custom_event'
    event_name: "{{ event.data.event_name }}"
"""


@pytest.fixture
def third_party(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A package 'acme-moerules' as pip would leave it, on sys.path for this test only."""
    site = tmp_path / "site"
    (site / "acme_moerules.py").parent.mkdir(parents=True)
    (site / "acme_moerules.py").write_text(textwrap.dedent(ACME))
    info = site / "acme_moerules-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-moerules\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[moerules.connectors]\nacme = acme_moerules:AcmeSink\n\n"
        "[moerules.emulators]\nacme = acme_moerules:AcmeEmulator\n"
    )
    monkeypatch.syspath_prepend(str(site))
    yield site
    import sys

    sys.modules.pop("acme_moerules", None)


def test_a_third_party_connector_is_found(third_party: Path) -> None:
    assert connector_names() == [
        "acme",
        "amplitude",
        "amplitude-cohorts",
        "mixpanel",
        "mixpanel-cohorts",
        "moengage",
        "moengage-cohort-sync",
        "moengage-streams",
        "mparticle",
        "segment",
    ]
    sink = load_connector("acme")
    assert sink is not None and sink.__module__ == "acme_moerules"
    assert "acme" in emulator_names()
    factory = load_emulator("acme")
    assert factory is not None and factory(port=1).options == {"port": 1}


def test_a_third_party_connector_runs_with_its_typed_settings(
    third_party: Path, write: Callable[..., Path]
) -> None:
    path = write("bundle.yaml", BUNDLE)
    compiled = load_bundle(path, env={"ACME_KEY": "acme-secret-key"})
    out = io.BytesIO()
    line = json.dumps(
        {
            "user_identities": {"customer_id": "c1"},
            "events": [{"event_type": "custom_event", "data": {"event_name": n}} for n in "ABC"],
        }
    ).encode()
    dry_run(compiled, [(1, line)], out)
    requests = [json.loads(r) for r in out.getvalue().splitlines()]
    assert [(r["url"], r["body"]) for r in requests] == [
        (
            "https://eu.acme.example/track",
            [{"user": "c1", "event": "A"}, {"user": "c1", "event": "B"}],
        ),
        ("https://eu.acme.example/track", [{"user": "c1", "event": "C"}]),
    ]
    assert "acme-secret-key" not in out.getvalue().decode()


def test_a_third_party_connectors_settings_are_checked_and_in_the_schema(
    third_party: Path, write: Callable[..., Path]
) -> None:
    path = write("bundle.yaml", BUNDLE.replace("batch_size: 2", "batch_size: 0, regoin: eu"))
    with pytest.raises(RuleError) as info:
        load_bundle(path)
    assert [str(p) for p in info.value.problems] == [
        f"{path}:5:62: error: destination setting 'batch_size': Input should be greater than or "
        "equal to 1",
        f"{path}:5:65: error: unknown setting 'regoin' for destination 'acme' (did you mean "
        "'region'?); it takes: api_key, region, batch_size",
    ]
    schema = bundle_schema()
    assert schema["$defs"]["DestinationRef"]["properties"]["connector"]["enum"] == [
        "acme",
        "amplitude",
        "mixpanel",
        "moengage",
        "moengage-cohort-sync",
        "segment",
    ]
    assert list(schema["$defs"]["AcmeSettings"]["properties"]) == [
        "api_key",
        "region",
        "batch_size",
    ]


def test_entry_points_are_the_only_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connector, "entry_points", lambda group: [])
    assert connector_names() == []
    assert load_connector("moengage") is None
    assert emulator_names() == []


def test_the_emulator_group_lists_every_shipped_emulator() -> None:
    from moerules.connectors.emulation import EMULATORS

    assert emulator_names() == sorted(EMULATORS)
    for name, factory in EMULATORS.items():
        assert load_emulator(name) is factory
