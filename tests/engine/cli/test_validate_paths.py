"""`moerules validate`: warnings for rule paths the source's records never contain."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Result

WARNING = re.compile(r"^(?P<path>.+?):(?P<line>\d+):(?P<col>\d+): warning: (?P<msg>.+)$")

TYPOS = """
    extends: mparticle-to-moengage
    bundle: typos
    identity:
      candidates:
        customer_id: batch.user_identities.custmer_id
    events:
      - name: commerce-purchase
        attributes:
          Total Amount: {from: event.data.product_action.totl_amount, as: string}
          Products:
            each: event.data.product_action.products
            attributes:
              Price: {from: pric, as: float}
      - name: custom-event
        event_name: "{{ event.data.evnt_name }}"
        attributes:
          Kind: event.event_type.name
          Where: event.data.location.lat
          Free: event.data.custom_attributes.anything_goes
          Tagged: "event.data.custom_attributes.moe_project_name || event.data.screen_nme"
      - name: consent
        when: event.event_type == 'opt_out'
        event_name: consent
        spread: [{from: batch.consent_state.gdpr, value: consentd}]
"""


def warnings(result: Result) -> list[tuple[int, int, str]]:
    return [
        (int(m["line"]), int(m["col"]), m["msg"])
        for m in map(WARNING.match, result.stderr.splitlines())
        if m
    ]


def test_typos_are_warnings_at_their_column(
    cli: Callable[..., Result], write: Callable[..., Path]
) -> None:
    path = write("typos.yaml", TYPOS)
    result = cli("validate", str(path))
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "ok: 1 files valid (8 warnings; --strict fails on them)\n"
    assert warnings(result) == [
        (
            5,
            40,
            "no mparticle record has 'batch.user_identities.custmer_id': "
            "batch.user_identities has no field 'custmer_id' (did you mean 'customer_id'?)",
        ),
        (
            9,
            54,
            "no mparticle record has 'event.data.product_action.totl_amount': "
            "event.data.product_action has no field 'totl_amount' (did you mean "
            "'total_amount'?)",
        ),
        (
            13,
            25,
            "no mparticle record has 'pric': an element of "
            "event.data.product_action.products has no field 'pric' (did you mean "
            "'price'?)",
        ),
        (
            15,
            32,
            "no mparticle record has 'event.data.evnt_name': event.data has no field "
            "'evnt_name' (did you mean 'event_name'?)",
        ),
        (
            17,
            30,
            "no mparticle record has 'event.event_type.name': event.event_type is a "
            "string, not an object",
        ),
        (
            18,
            34,
            "no mparticle record has 'event.data.location.lat': event.data.location has "
            "no field 'lat' (it has: accuracy, latitude, longitude)",
        ),
        (
            20,
            76,
            "no mparticle record has 'event.data.screen_nme': event.data has no field "
            "'screen_nme' (did you mean 'screen_name'?)",
        ),
        (
            24,
            54,
            "no mparticle record has 'consentd': an entry of batch.consent_state.gdpr "
            "has no field 'consentd' (did you mean 'consented'?)",
        ),
    ]
    lines = path.read_text().splitlines()
    assert lines[19][75:].startswith("screen_nme")  # the column is the misspelt name's


def test_strict_fails_on_warnings(cli: Callable[..., Result], write: Callable[..., Path]) -> None:
    path = write("typos.yaml", TYPOS)
    result = cli("validate", "--strict", str(path))
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == "8 problems found in 1 files"
    assert (
        f"{path}:9:54: warning: no mparticle record has "
        "'event.data.product_action.totl_amount'" in result.stderr
    )


def test_open_maps_and_shipped_bundles_are_quiet(cli: Callable[..., Result]) -> None:
    """custom_attributes and user_attributes take any key; the shipped bundles read only
    what their sources document."""
    result = cli("validate", "--strict", "rules")
    assert result.exit_code == 0, result.stderr
    assert "warning" not in result.stderr


def test_errors_still_fail_without_strict(
    cli: Callable[..., Result], write: Callable[..., Path]
) -> None:
    path = write("b.yaml", TYPOS + "    routing: {form: x}\n")
    result = cli("validate", str(path))
    assert result.exit_code == 1
    assert ": error: unknown key 'form'" in result.stderr
