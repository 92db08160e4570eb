"""`moerules coverage`: what a sample exercises of a bundle, as a user reads it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import orjson

from tests.conftest import EXAMPLES, Result

SAMPLE = str(EXAMPLES / "mparticle-batches.jsonl")
OVERLAY = str(EXAMPLES / "acme-overlay.yaml")


def test_text_report(cli: Callable[..., Result]) -> None:
    result = cli("coverage", OVERLAY, "--input", SAMPLE, "--limit", "3")
    assert result.exit_code == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[0] == "coverage acme-mparticle-to-moengage: 8 records, 16 events"
    assert "  custom-event                       5 in 5 records  (4 sent, 1 dead-lettered)" in out
    assert "  unsupported-event-types            3 in 3 records  (3 dropped)" in out
    never = next(line for line in out if line.startswith("never fired: "))
    assert "user-identity-change" in never and "custom-event," not in never
    assert "  commerce-product-action: Tax Amount (in 2 sent events)" in out
    assert "table platforms: 3 of 8 rows used; never: tvOS, roku, fire_tv and 2 more" in out
    assert out[out.index("identity (precedence: customer_id, email)") + 1 :][:3] == [
        "  customer_id                        4 records",
        "  email                              1 records",
        "  (none usable)                      1 records",
    ]
    assert "  undeclared project 'Brand C': 1 events" in out
    assert "  portfolio level, blank project name: 1 events" in out
    assert "unmapped input: 15 fields no rule reads (by records holding them)" in out
    assert "  batch.mpid                                             6" in out
    assert "measured 8 records in" in result.stderr


def test_json_shape(cli: Callable[..., Result]) -> None:
    result = cli("coverage", "mparticle-to-moengage", "--input", SAMPLE, "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert (
        data["records"],
        data["events"],
        data["no_rule_matched"],
        data["failed_while_mapping"],
    ) == (8, 16, 0, 1)  # a price that will not cast
    rules = {r["rule"]: r for r in data["rules"]}
    assert rules["commerce-purchase"] == {
        "rule": "commerce-purchase",
        "events": 1,
        "records": 1,
        "sent": 1,
        "dropped": 0,
        "dead_lettered": 0,
    }
    assert sum(r["events"] for r in data["rules"]) == 15
    assert data["tables"]["reserved_user_attributes"]["used"] == {
        "$FirstName": 2,
        "$LastName": 1,
        "$Gender": 1,
        "$City": 2,
    }  # $firstname too
    assert data["identities"] == {
        "precedence": ["customer_id"],
        "chosen": {"customer_id": 4, "(none)": 2},
    }
    assert data["undeclared_projects"] == {}  # no projects declared: nothing is routed
    assert {"path": "batch.ip", "records": 1} in data["unmapped_fields"]
    assert not any(
        p["path"].startswith("event.data.custom_attributes") for p in data["unmapped_fields"]
    )  # read whole by the spreads
    assert {"rule": "commerce-product-action", "attribute": "Tax Amount", "sent_events": 2} in data[
        "attributes_never_set"
    ]


def test_a_rule_and_a_row_that_fire(cli: Callable[..., Result], tmp_path: Path) -> None:
    sample = tmp_path / "tv.jsonl"
    sample.write_bytes(
        orjson.dumps(
            {
                "environment": "production",
                "user_identities": {"customer_id": "c1"},
                "device_info": {"platform": "Roku"},
                "events": [
                    {
                        "event_type": "user_identity_change",
                        "data": {"new": {"identity_type": "email", "identity": "a@b.c"}},
                    }
                ],
            }
        )
        + b"\n"
    )
    data = json.loads(
        cli("coverage", "mparticle-to-moengage", "--input", str(sample), "--json").stdout
    )
    assert "user-identity-change" not in data["rules_never_fired"]
    assert data["tables"]["tv_os_types"]["used"] == {"roku": 1}


def test_a_rule_whose_events_never_go_out(cli: Callable[..., Result], tmp_path: Path) -> None:
    sample = tmp_path / "anonymous.jsonl"
    sample.write_bytes(
        orjson.dumps(
            {
                "environment": "production",
                "user_identities": {"email": "a@b.c"},
                "events": [{"event_type": "custom_event", "data": {"event_name": "Hi"}}],
            }
        )
        + b"\n"
    )
    result = cli("coverage", "mparticle-to-moengage", "--input", str(sample))
    assert (
        "never sent: custom-event matched 1 events and sent none: its attributes were "
        "always dropped"
    ) in result.stdout.splitlines()
    data = json.loads(
        cli("coverage", "mparticle-to-moengage", "--input", str(sample), "--json").stdout
    )
    assert data["rules_never_sent"] == ["custom-event"]


def test_errors(cli: Callable[..., Result], write: Callable[..., Path]) -> None:
    missing = cli("coverage", "mparticle-to-moengage", "--input", "nope.jsonl")
    assert missing.exit_code == 2
    bad = write("bad.yaml", "extends: mparticle-to-moengage\nbundle: b\nrouting: {form: x}\n")
    result = cli("coverage", str(bad), "--input", SAMPLE)
    assert result.exit_code == 1
    assert f"{bad}:3:11: error: unknown key 'form'" in result.stderr
