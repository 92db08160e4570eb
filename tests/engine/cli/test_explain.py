"""`moerules explain`: the trace of one record through a bundle."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import orjson

from tests.conftest import EXAMPLES, Result

SECRET = "explain-secret-key"
ENV = {"MOENGAGE_WORKSPACE_ID": "WS7", "MOENGAGE_DATA_API_KEY": SECRET}

PURCHASE = {
    "environment": "production",
    "mpid": 42,
    "user_identities": {"customer_id": "cust-9", "email": "e@x.com"},
    "user_attributes": {"$FirstName": "Ada", "tier": "gold"},
    "events": [
        {
            "event_type": "commerce_event",
            "data": {
                "currency_code": "EUR",
                "timestamp_unixtime_ms": 1700000000999,
                "custom_attributes": {"moe_project_name": "Brand A"},
                "product_action": {
                    "action": "purchase",
                    "transaction_id": "T9",
                    "total_amount": 30.5,
                    "products": [{"id": "p1", "price": "12.50", "quantity": 2}],
                },
            },
        },
        {"event_type": "session_start", "data": {}},
    ],
}


def test_explain_shows_every_decision(cli: Callable[..., Result], tmp_path: Path) -> None:
    event = tmp_path / "one.json"
    event.write_bytes(orjson.dumps(PURCHASE, option=orjson.OPT_INDENT_2))
    result = cli(
        "explain",
        "mparticle-to-moengage",
        "--event",
        str(event),
        "--set",
        "routing.projects=[{name: Brand A, code: PA}]",
        env=ENV,
    )
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    # identity: the candidate that won
    assert '  candidate customer_id: "cust-9"  -> chosen' in out
    # user attributes: source path -> value, reserved name renamed
    assert '    first_name <- spread batch.user_attributes = "Ada"' in out
    # rules tried, with why each matched or not
    assert "  rule custom-event: when event.event_type == 'custom_event'  -> no match" in out
    assert (
        "  rule commerce-purchase: when event.event_type == 'commerce_event' && "
        "event.data.product_action.action == 'purchase'  -> matched"
    ) in out
    # attribute: source path -> transform -> value
    assert '    Total Amount <- event.data.product_action.total_amount | as string = "30.5"' in out
    assert "    Products[].Price <- price | as float = 12.5" in out
    # routing decision
    assert (
        '    routing: event.data.custom_attributes.moe_project_name = "Brand A" -> '
        "project 'Brand A' (project_code PA)"
    ) in out
    assert "  => event 'purchase' (rule 'commerce-purchase'), project 'Brand A'" in out
    assert (
        "  => dropped by rule 'unsupported-event-types': not supported by the MoEngage integration"
    ) in out
    # the request it produces
    assert "  POST https://api-01.moengage.com/v1/transition/WS7?app_id=WS7&project_code=PA" in out
    assert "    Authorization: ***" in out
    assert SECRET not in out + result.stderr


def test_explain_json(cli: Callable[..., Result], tmp_path: Path) -> None:
    event = tmp_path / "one.json"
    event.write_bytes(orjson.dumps(PURCHASE))
    result = cli(
        "explain",
        "mparticle-to-moengage",
        "--event",
        str(event),
        "--json",
        "--set",
        "routing.projects=[{name: Brand B, code: PB}]",
        env=ENV,
    )
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    rules = [s for s in data["steps"] if s["step"] == "rule"]
    assert [r["rule"] for r in rules[:4]] == [
        "custom-event-reserved-name",
        "custom-event-attribution",
        "custom-event",
        "commerce-purchase",
    ]
    assert [r["matched"] for r in rules[:4]] == [False, False, False, True]
    route = next(s for s in data["steps"] if s["step"] == "route")
    assert route["decision"] == "portfolio level (unknown project name)"
    assert data["report"]["routing_fallback"] == {"unknown": 1}
    assert len(data["requests"]) == 1


def test_explain_no_identity(cli: Callable[..., Result], tmp_path: Path) -> None:
    event = tmp_path / "one.json"
    record = dict(PURCHASE, user_identities={"customer_id": "guest"})
    event.write_bytes(orjson.dumps(record))
    result = cli("explain", "mparticle-to-moengage", "--event", str(event), env=ENV)
    assert result.exit_code == 0
    assert '  candidate customer_id: "guest"  -> not usable' in result.stdout
    assert "no usable identity: the record would be dead-lettered" in result.stdout
    assert "requests\n  (none)" in result.stdout


def test_explain_first_line_of_jsonl(cli: Callable[..., Result]) -> None:
    path = EXAMPLES / "mparticle-batches.jsonl"
    result = cli("explain", str(EXAMPLES / "acme-overlay.yaml"), "--event", str(path), env=ENV)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(
        f"explain acme-mparticle-to-moengage <- {path}, line 1 (the first of several records; "
        "--line N explains another)\nidentity\n"
    )
    assert "requests" in result.stdout


def test_explain_line_n_numbered_as_dead_letters_are(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    path = EXAMPLES / "mparticle-batches.jsonl"
    dead = tmp_path / "dead.jsonl"
    cli(
        "run",
        str(EXAMPLES / "acme-overlay.yaml"),
        "--input",
        str(path),
        "--dry-run",
        "--dead-letter",
        str(dead),
        env=ENV,
    )
    letter = next(
        orjson.loads(x)
        for x in dead.read_bytes().splitlines()
        if orjson.loads(x)["reason"] == "malformed JSON"
    )
    result = cli(
        "explain",
        str(EXAMPLES / "acme-overlay.yaml"),
        "--event",
        str(path),
        "--line",
        str(letter["line"]),
        env=ENV,
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(
        f"explain acme-mparticle-to-moengage <- {path}, line {letter['line']}\n"
        f"  => dead-lettered: malformed JSON: {letter['error']}\n"
    )
    as_json = cli(
        "explain",
        str(EXAMPLES / "acme-overlay.yaml"),
        "--event",
        str(path),
        "--line",
        "2",
        "--json",
        env=ENV,
    )
    assert as_json.exit_code == 0
    assert json.loads(as_json.stdout)["steps"]  # stdout stays JSON
    assert as_json.stderr == f"moerules: explained {path}, line 2\n"


def test_explain_line_that_holds_no_record(cli: Callable[..., Result], tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + orjson.dumps(PURCHASE) + b"\n\n" + orjson.dumps(PURCHASE))
    blank = cli("explain", "mparticle-to-moengage", "--event", str(path), "--line", "2")
    assert (blank.exit_code, blank.stderr) == (
        2,
        f"moerules: error: line 2 of {path} is blank; pick a line with a record\n",
    )
    past = cli("explain", "mparticle-to-moengage", "--event", str(path), "--line", "9")
    assert (past.exit_code, past.stderr) == (
        2,
        f"moerules: error: {path} has no line 9: its last record is on line 3\n",
    )
    first = cli("explain", "mparticle-to-moengage", "--event", str(path), env=ENV)
    assert first.exit_code == 0  # the BOM before line 1 is no part of the record
    assert '  candidate customer_id: "cust-9"  -> chosen' in first.stdout
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"\n \n")
    result = cli("explain", "mparticle-to-moengage", "--event", str(empty))
    assert (result.exit_code, result.stderr) == (
        2,
        f"moerules: error: {empty} holds no record; give a file with a JSON record, or a "
        "JSON Lines file\n",
    )


def test_explain_malformed_record(cli: Callable[..., Result], tmp_path: Path) -> None:
    event = tmp_path / "bad.json"
    event.write_text("[1, 2]")
    result = cli("explain", "mparticle-to-moengage", "--event", str(event))
    assert result.exit_code == 0
    assert "=> dead-lettered: payload is not a JSON object" in result.stdout


def test_installed_script_explain(moerules: Callable[..., object], tmp_path: Path) -> None:
    event = tmp_path / "one.json"
    event.write_bytes(orjson.dumps(PURCHASE))
    result = moerules("explain", "mparticle-to-moengage", "--event", str(event), env=ENV)
    assert result.returncode == 0, result.stderr  # type: ignore[attr-defined]
    assert "-> matched" in result.stdout  # type: ignore[attr-defined]
