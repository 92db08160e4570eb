"""`moerules run --dry-run`: the requests that would be sent, the report, bad input."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import orjson

from tests.conftest import EXAMPLES, MINIMAL_BUNDLE, Result

SECRET = "s3cr3t-data-api-key-value"
ENV = {"MOENGAGE_WORKSPACE_ID": "WS42", "MOENGAGE_DATA_API_KEY": SECRET}


def batch(cid: str | None, *events: dict[str, object], **extra: object) -> bytes:
    body: dict[str, object] = {
        "environment": "production",
        "mpid": 99,
        "user_identities": {"customer_id": cid} if cid else {},
        "events": list(events),
        **extra,
    }
    return orjson.dumps(body) + b"\n"


def custom(name: str, **attrs: object) -> dict[str, object]:
    return {
        "event_type": "custom_event",
        "data": {
            "event_name": name,
            "timestamp_unixtime_ms": 1700000000123,
            "custom_attributes": attrs,
        },
    }


def test_quickstart_examples(cli: Callable[..., Result], tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    dead = tmp_path / "dead.jsonl"
    result = cli(
        "run",
        str(EXAMPLES / "acme-overlay.yaml"),
        "--input",
        str(EXAMPLES / "mparticle-batches.jsonl"),
        "--dry-run",
        "--report",
        str(report),
        "--dead-letter",
        str(dead),
        env=ENV,
    )
    assert result.exit_code == 0, result.stderr  # finished; dead letters are not lost
    requests = [json.loads(line) for line in result.stdout.splitlines()]
    data = json.loads(report.read_text())
    assert data["requests"] == len(requests) > 0
    assert data["balanced"] is True
    assert (
        data["items_in"] == data["delivered"] + data["dropped_total"] + data["dead_lettered_total"]
    )
    dead_lines = [json.loads(line) for line in dead.read_text().splitlines()]
    assert len(dead_lines) == data["dead_lettered_total"]
    assert {d["reason"] for d in dead_lines} == set(data["dead_lettered"])
    for request in requests:
        assert request["method"] == "POST"
        assert request["url"].startswith(
            "https://api-02.moengage.com/v1/transition/WS42?app_id=WS42"
        )
        assert request["headers"] == {
            "Authorization": "***",
            "Content-Type": "application/json",
            "MOE-APPKEY": "WS42",
        }
        assert request["body"]["type"] == "transition"
        assert len(orjson.dumps(request["body"])) <= 100 * 1024
    assert "moerules: acme-mparticle-to-moengage (dry run)" in result.stderr
    assert "dead letters written to" in result.stderr


def test_secrets_never_printed(cli: Callable[..., Result], tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    dead = tmp_path / "dead.jsonl"
    result = cli(
        "run",
        "mparticle-to-moengage",
        "--input",
        str(EXAMPLES / "mparticle-batches.jsonl"),
        "--dry-run",
        "--report",
        str(report),
        "--dead-letter",
        str(dead),
        env=ENV,
    )
    encoded = base64.b64encode(f"WS42:{SECRET}".encode()).decode()
    for text in (result.stdout, result.stderr, report.read_text(), dead.read_text()):
        assert SECRET not in text
        assert encoded not in text


def test_secret_inside_a_record_is_scrubbed(cli: Callable[..., Result], tmp_path: Path) -> None:
    data = tmp_path / "in.jsonl"
    data.write_bytes(batch(None, custom("Leaky", note=f"key is {SECRET}")))
    dead = tmp_path / "dead.jsonl"
    result = cli(
        "run",
        "mparticle-to-moengage",
        "--input",
        str(data),
        "--dry-run",
        "--dead-letter",
        str(dead),
        env=ENV,
    )
    assert result.exit_code == 0
    assert SECRET not in dead.read_text()
    assert "key is ***" in dead.read_text()


def test_placeholders_without_credentials(cli: Callable[..., Result], tmp_path: Path) -> None:
    data = tmp_path / "in.jsonl"
    data.write_bytes(batch("c1", custom("Opened")))
    result = cli(
        "run",
        "mparticle-to-moengage",
        "--input",
        str(data),
        "--dry-run",
        env={"MOENGAGE_WORKSPACE_ID": None, "MOENGAGE_DATA_API_KEY": None},
    )
    assert result.exit_code == 0, result.stderr
    (request,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert request["url"] == (
        "https://api-01.moengage.com/v1/transition/"
        "${MOENGAGE_WORKSPACE_ID}?app_id=${MOENGAGE_WORKSPACE_ID}"
    )
    assert "not set, shown as placeholders: MOENGAGE_DATA_API_KEY, MOENGAGE_WORKSPACE_ID" in (
        result.stderr
    )


def test_exact_request_for_one_custom_event(cli: Callable[..., Result], tmp_path: Path) -> None:
    data = tmp_path / "in.jsonl"
    data.write_bytes(
        batch(
            "c1",
            custom("Opened", screen="home"),
            device_info={"platform": "Android"},
            application_info={"application_version": "1.2"},
        )
    )
    result = cli("run", "mparticle-to-moengage", "--input", str(data), "--dry-run", env=ENV)
    assert result.exit_code == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {
            "method": "POST",
            "url": "https://api-01.moengage.com/v1/transition/WS42?app_id=WS42",
            "headers": {
                "Authorization": "***",
                "Content-Type": "application/json",
                "MOE-APPKEY": "WS42",
            },
            "body": {
                "type": "transition",
                "elements": [
                    {
                        "type": "event",
                        "customer_id": "c1",
                        "actions": [
                            {
                                "action": "Opened",
                                "attributes": {"screen": "home"},
                                "current_time": 1700000000,
                                "platform": "ANDROID",
                                "app_version": "1.2",
                            }
                        ],
                    }
                ],
            },
        }
    ]


def test_bad_lines_are_dead_lettered_and_the_run_goes_on(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    data = tmp_path / "in.jsonl"
    data.write_bytes(
        batch("c1", custom("First"))
        + b"{not json\n"
        + b"[1, 2, 3]\n"
        + b"\n"
        + batch(None, custom("NoIdentity"))
        + b'"a string"\n'
        + batch("c2", custom("Last"))
    )
    dead = tmp_path / "dead.jsonl"
    report = tmp_path / "report.json"
    result = cli(
        "run",
        "mparticle-to-moengage",
        "--input",
        str(data),
        "--dry-run",
        "--dead-letter",
        str(dead),
        "--report",
        str(report),
        "--fail-on-dead-letter",
        env=ENV,
    )
    assert result.exit_code == 3
    names = [
        a["action"]
        for line in result.stdout.splitlines()
        for e in json.loads(line)["body"]["elements"]
        for a in e.get("actions", [])
    ]
    assert names == ["First", "Last"]
    letters = [json.loads(line) for line in dead.read_text().splitlines()]
    assert [(d["line"], d["reason"]) for d in letters] == [
        (2, "malformed JSON"),
        (3, "payload is not a JSON object"),
        (5, "no usable identity"),
        (6, "payload is not a JSON object"),
    ]
    assert letters[0]["raw"] == "{not json\n"
    assert letters[2]["record"]["data"]["event_name"] == "NoIdentity"
    assert letters[2]["error"] == (
        "none of the identity candidates had a usable value: customer_id"
    )
    data_report = json.loads(report.read_text())
    assert data_report["dead_lettered"] == {
        "malformed JSON": 1,
        "no usable identity": 1,
        "payload is not a JSON object": 2,
    }
    assert data_report["lines_in"] == 6
    assert data_report["balanced"]


def test_stdin_input_and_output_file(cli: Callable[..., Result], tmp_path: Path) -> None:
    out = tmp_path / "requests.jsonl"
    result = cli(
        "run",
        "mparticle-to-moengage",
        "--input",
        "-",
        "--dry-run",
        "--output",
        str(out),
        input=batch("c1", custom("Piped")),
        env=ENV,
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    (request,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert request["body"]["elements"][0]["actions"][0]["action"] == "Piped"


def test_set_overrides(cli: Callable[..., Result], tmp_path: Path) -> None:
    data = tmp_path / "in.jsonl"
    data.write_bytes(
        batch(
            None, custom("ByEmail", moe_project_name="Brand A"), user_identities={"email": "a@b.c"}
        )
    )
    result = cli(
        "run",
        "mparticle-to-moengage",
        "--input",
        str(data),
        "--dry-run",
        "--set",
        "identity.precedence=[email]",
        "--set",
        "destination.data_center=03",
        "--set",
        "routing.projects=[{name: Brand A, code: PA}]",
        env=ENV,
    )
    assert result.exit_code == 0, result.stderr
    users, routed = [json.loads(line) for line in result.stdout.splitlines()]
    # user attributes stay at portfolio level; the routed event carries the project code
    assert users["url"] == "https://api-03.moengage.com/v1/transition/WS42?app_id=WS42"
    assert users["body"]["elements"] == [
        {"type": "customer", "customer_id": "a@b.c", "attributes": {"email": "a@b.c"}}
    ]
    assert routed["url"] == (
        "https://api-03.moengage.com/v1/transition/WS42?app_id=WS42&project_code=PA"
    )
    (element,) = routed["body"]["elements"]
    assert element["customer_id"] == "a@b.c"
    assert element["actions"][0]["attributes"] == {"moe_project_name": "Brand A"}


def test_bad_set_is_a_rule_error(cli: Callable[..., Result], tmp_path: Path) -> None:
    data = tmp_path / "in.jsonl"
    data.write_bytes(batch("c1"))
    result = cli(
        "run",
        "mparticle-to-moengage",
        "--input",
        str(data),
        "--dry-run",
        "--set",
        "destination.data_center=99",
    )
    assert (result.exit_code, result.stderr) == (
        1,
        (
            "--set destination.data_center:1:1: error: destination setting 'data_center': unknown "
            "data center '99'; use one of 01, 02, 03, 04, 05, 06, 101\n1 problem found\n"
        ),
    )


def test_unknown_bundle_name(cli: Callable[..., Result], tmp_path: Path) -> None:
    data = tmp_path / "in.jsonl"
    data.write_bytes(batch("c1"))
    result = cli("run", "mparticle-to-moengag", "--input", str(data), "--dry-run")
    assert result.exit_code == 1
    assert "did you mean 'mparticle-to-moengage'?" in result.stderr


def test_missing_input_file(cli: Callable[..., Result], tmp_path: Path) -> None:
    result = cli(
        "run", "mparticle-to-moengage", "--input", str(tmp_path / "none.jsonl"), "--dry-run"
    )
    assert result.exit_code == 2
    assert result.stderr == (
        f"moerules: error: input {tmp_path / 'none.jsonl'} does not exist; "
        "--input takes a JSON Lines file, or - for stdin\n"
    )


def test_large_batches_split_under_100kb(cli: Callable[..., Result], tmp_path: Path) -> None:
    data = tmp_path / "in.jsonl"
    lines = b"".join(
        batch(f"cust-{i}", *[custom(f"E{j}", pad="x" * 500) for j in range(20)]) for i in range(60)
    )
    data.write_bytes(lines)
    report = tmp_path / "r.json"
    result = cli(
        "run",
        "mparticle-to-moengage",
        "--input",
        str(data),
        "--dry-run",
        "--report",
        str(report),
        env=ENV,
    )
    assert result.exit_code == 0
    requests = [json.loads(line) for line in result.stdout.splitlines()]
    sizes = [len(orjson.dumps(r["body"])) for r in requests]
    assert len(requests) > 5
    assert max(sizes) <= 100 * 1024
    actions = [a for r in requests for e in r["body"]["elements"] for a in e["actions"]]
    assert len(actions) == 1200
    assert json.loads(report.read_text())["delivered_events"] == 1200


def test_installed_script_dry_run(
    moerules: Callable[..., object], tmp_path: Path, write: Callable[..., Path]
) -> None:
    bundle = write("bundle.yaml", MINIMAL_BUNDLE)
    data = tmp_path / "in.jsonl"
    data.write_bytes(batch("c1", custom("Hello")))
    result = moerules(
        "run", str(bundle), "--input", str(data), "--dry-run", env={"TEST_KEY": SECRET}
    )
    assert result.returncode == 0, result.stderr  # type: ignore[attr-defined]
    (request,) = [json.loads(x) for x in result.stdout.splitlines()]  # type: ignore[attr-defined]
    assert request["body"]["elements"][0]["actions"][0]["action"] == "Hello"
    assert SECRET not in result.stdout + result.stderr  # type: ignore[attr-defined]


def test_real_run_refuses_without_credentials(cli: Callable[..., Result], tmp_path: Path) -> None:
    data = tmp_path / "in.jsonl"
    data.write_bytes(batch("c1", custom("E")))
    result = cli(
        "run",
        "mparticle-to-moengage",
        "--input",
        str(data),
        env={"MOENGAGE_WORKSPACE_ID": None, "MOENGAGE_DATA_API_KEY": None},
    )
    assert result.exit_code == 2
    assert (
        "a real run needs these environment variables set: MOENGAGE_DATA_API_KEY, "
        "MOENGAGE_WORKSPACE_ID (or use --dry-run)"
    ) in result.stderr


def test_short_secret_does_not_corrupt_output(cli: Callable[..., Result], tmp_path: Path) -> None:
    data = tmp_path / "in.jsonl"
    data.write_bytes(batch("c1", custom("Kick")))
    result = cli(
        "run",
        "mparticle-to-moengage",
        "--input",
        str(data),
        "--dry-run",
        env={"MOENGAGE_WORKSPACE_ID": "WS42", "MOENGAGE_DATA_API_KEY": "K"},
    )
    (request,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert request["headers"] == {
        "Authorization": "***",
        "Content-Type": "application/json",
        "MOE-APPKEY": "WS42",
    }
    assert request["body"]["elements"][0]["actions"][0]["action"] == "Kick"


def test_unreadable_timestamps_cost_only_the_field(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    data = tmp_path / "in.jsonl"
    events = []
    for stamp in ("nan", "inf", 1e300, "-1e400", "yesterday"):
        event = custom(f"At {stamp}")
        event["data"]["timestamp_unixtime_ms"] = stamp  # type: ignore[index]
        events.append(event)
    data.write_bytes(batch("c1", *events))
    report = tmp_path / "r.json"
    result = cli(
        "run",
        "mparticle-to-moengage",
        "--input",
        str(data),
        "--dry-run",
        "--report",
        str(report),
        env=ENV,
    )
    assert result.exit_code == 0, result.stderr
    (request,) = [json.loads(line) for line in result.stdout.splitlines()]
    actions = request["body"]["elements"][0]["actions"]
    assert [a["action"] for a in actions] == [
        "At nan",
        "At inf",
        "At 1e+300",
        "At -1e400",
        "At yesterday",
    ]
    assert all("current_time" not in a for a in actions)
    assert json.loads(report.read_text())["delivered_events"] == 5


def test_values_beyond_64_bits_are_dead_lettered_not_fatal(
    cli: Callable[..., Result], write: Callable[..., Path], tmp_path: Path
) -> None:
    bundle = write(
        "bundle.yaml",
        MINIMAL_BUNDLE
        + """\
    attributes:
      at_ms: {from: event.data.at, transform: epoch_s_to_ms}
""",
    )
    data = tmp_path / "in.jsonl"
    data.write_bytes(
        batch(
            "c1",
            {
                "event_type": "custom_event",
                "data": {"event_name": "Huge", "at": 18446744073709551615},
            },
        )
        + batch("c2", custom("Fine"))
    )
    dead = tmp_path / "dead.jsonl"
    result = cli(
        "run",
        str(bundle),
        "--input",
        str(data),
        "--dry-run",
        "--dead-letter",
        str(dead),
        env={"TEST_KEY": "k" * 10},
    )
    assert result.exit_code == 0, result.stderr
    (request,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert request["body"]["elements"][0]["actions"][0]["action"] == "Fine"
    (letter,) = [json.loads(line) for line in dead.read_text().splitlines()]
    assert letter["line"] == 1
    # the compiled int fast path multiplies; the encoder refuses what no 64-bit field holds
    assert letter["reason"] == "cannot encode for the destination"
    assert letter["record"]["data"]["event_name"] == "Huge"


def test_template_failing_at_render_dead_letters_the_event(
    cli: Callable[..., Result], write: Callable[..., Path], tmp_path: Path
) -> None:
    bundle = write(
        "bundle.yaml",
        MINIMAL_BUNDLE.replace(
            '"{{ event.data.event_name }}"', '"{{ event.data.event_name | upper }} seen"'
        ),
    )
    data = tmp_path / "in.jsonl"
    data.write_bytes(batch("c1", {"event_type": "custom_event", "data": {}}, custom("fine")))
    dead = tmp_path / "dead.jsonl"
    result = cli(
        "run",
        str(bundle),
        "--input",
        str(data),
        "--dry-run",
        "--dead-letter",
        str(dead),
        env={"TEST_KEY": "k" * 10},
    )
    assert result.exit_code == 0, result.stderr
    (request,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert [a["action"] for a in request["body"]["elements"][0]["actions"]] == ["FINE seen"]
    (letter,) = [json.loads(line) for line in dead.read_text().splitlines()]
    assert letter["reason"] == "template failed"
    assert "event_name" in letter["error"]
    assert letter["event_index"] == 0


def test_an_event_that_cannot_be_encoded_leaves_the_routing_counts(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    """Routing counts describe events that went into requests: one refused by the encoder
    (an integer no 64-bit JSON field holds) is dead-lettered and not counted."""
    data = tmp_path / "in.jsonl"
    line = batch(
        "c1",
        custom("Kept", moe_project_name="Brand A"),
        custom("Huge", moe_project_name="Brand A", n=0),
        custom("Lost", moe_project_name="Brand Z", n=0),
    )
    # written by hand: orjson will not write such an integer either
    data.write_bytes(line.replace(b'"n":0', b'"n":%d' % (2**70 + 1)))
    report = tmp_path / "report.json"
    dead = tmp_path / "dead.jsonl"
    result = cli(
        "run",
        "mparticle-to-moengage",
        "--input",
        str(data),
        "--dry-run",
        "--set",
        "routing.projects=[{name: Brand A, code: PA}]",
        "--report",
        str(report),
        "--dead-letter",
        str(dead),
        env=ENV,
    )
    assert result.exit_code == 0, result.stderr
    counts = json.loads(report.read_text())
    assert counts["delivered_events"] == 1
    assert counts["dead_lettered"] == {"cannot encode for the destination": 2}
    assert counts["routing"] == {"Brand A": 1}
    assert counts["routing_fallback"] == {} and counts["unknown_projects"] == {}
    assert "Brand Z" not in result.stderr
    letters = [json.loads(x) for x in dead.read_text().splitlines()]
    assert [x["event_index"] for x in letters] == [1, 2]
    # the record as the rules saw it: exact, not rounded to a float
    assert letters[0]["record"]["data"]["custom_attributes"]["n"] == 2**70 + 1


def test_a_user_update_that_cannot_be_encoded_is_dead_lettered_alone(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    data = tmp_path / "in.jsonl"
    line = batch("c1", custom("Kept"), user_attributes={"$FirstName": "Ada", "points": 0})
    data.write_bytes(line.replace(b'"points":0', b'"points":%d' % (2**70 + 1)))
    report = tmp_path / "report.json"
    dead = tmp_path / "dead.jsonl"
    result = cli(
        "run",
        "mparticle-to-moengage",
        "--input",
        str(data),
        "--dry-run",
        "--report",
        str(report),
        "--dead-letter",
        str(dead),
        env=ENV,
    )
    assert result.exit_code == 0, result.stderr
    counts = json.loads(report.read_text())
    assert (counts["delivered_events"], counts["delivered_user_updates"]) == (1, 0)
    assert counts["dead_lettered"] == {"cannot encode for the destination": 1}
    (letter,) = [json.loads(x) for x in dead.read_text().splitlines()]
    assert letter["rule"] == "user" and letter["event_index"] is None
    assert letter["record"]["user_attributes"]["points"] == 2**70 + 1
    (request,) = [json.loads(x) for x in result.stdout.splitlines()]
    assert [e["type"] for e in request["body"]["elements"]] == ["event"]
