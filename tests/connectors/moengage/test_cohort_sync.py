"""MoEngage Cohort Sync sink: exact requests, 128 KB, order, name rules, verdicts, settings."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from moerules.connectors.moengage.cohort_sync import MAX_REQUEST_BYTES, CohortSyncSink
from moerules.connectors.moengage.emulator_schema import validate_cohort_sync
from moerules.engine.cohorts import InvalidCohortName
from moerules.engine.connector import (
    COHORT_MEMBERSHIP,
    Delivered,
    Fatal,
    Item,
    ItemTooLarge,
    RateLimit,
    Reject,
    Response,
    Retry,
    Split,
    Unencodable,
    WireRequest,
)

from tests.conftest import Result


def sink(**settings: object) -> CohortSyncSink:
    return CohortSyncSink(
        {
            "workspace_id": "WS",
            "data_api_key": "KEY-cohort-sync",
            "partner": "amplitude",
            "state": ":memory:",
            **settings,
        }
    )


def change(
    uid: str,
    member: bool = True,
    cohort: str = "c1",
    name: str = "[Amplitude][P]",
    description: str | None = None,
    line: int = 1,
) -> Item:
    return Item(
        COHORT_MEMBERSHIP,
        uid,
        name,
        {},
        {"cohort_id": cohort, "member": member, "description": description},
        None,
        (line, 0),
        "entered" if member else "left",
    )


def bodies(requests: list[WireRequest]) -> list[Any]:
    return [orjson.loads(r.body) for r in requests]


def test_the_exact_request() -> None:
    s = sink(data_center="02")
    encoder = s.encoder()
    assert encoder.add(change("u1")) == [] and encoder.add(change("u2")) == []
    (request,) = encoder.flush()
    assert request.method == "POST"
    assert request.url == "https://api-02.moengage.com/v1/integrations/cohortsync"
    assert request.headers == {
        "Authorization": "Basic " + base64.b64encode(b"WS:KEY-cohort-sync").decode(),
        "Content-Type": "application/json",
        "MOE-APPKEY": "WS",
    }
    assert request.body == (
        b'{"action":"add_members","partner":"amplitude","parameters":'
        b'{"cohort_name":"[Amplitude][P]","cohort_id":"c1","members":'
        b'[{"uid":"u1"},{"uid":"u2"}]}}'
    )
    assert validate_cohort_sync(orjson.loads(request.body)) is None  # the spec's own checks
    assert request.redacted_headers(s.secret_headers)["Authorization"] == "***"


def test_description_and_removals() -> None:
    encoder = sink(endpoint="http://127.0.0.1:9/").encoder()
    encoder.add(change("u1", member=False, description="Bought twice"))
    (request,) = encoder.flush()
    assert request.url == "http://127.0.0.1:9/v1/integrations/cohortsync"
    assert orjson.loads(request.body) == {
        "action": "remove_members",
        "partner": "amplitude",
        "parameters": {
            "cohort_name": "[Amplitude][P]",
            "cohort_id": "c1",
            "cohort_description": "Bought twice",
            "members": [{"uid": "u1"}],
        },
    }


def test_requests_stay_within_128_kb_and_carry_every_change() -> None:
    s = sink()
    assert s.batch_policy.max_request_bytes == MAX_REQUEST_BYTES == 128 * 1024
    encoder = s.encoder()
    items = [change(f"user-{n:06d}-" + "x" * 40) for n in range(6000)]
    requests = []
    for item in items:
        requests += encoder.add(item)
    requests += encoder.flush()
    assert len(requests) == 3
    assert all(len(r.body) <= 128 * 1024 for r in requests)
    assert len(requests[0].body) > 128 * 1024 - 70  # filled, not split early
    carried = [m["uid"] for b in bodies(requests) for m in b["parameters"]["members"]]
    assert carried == [i.identity for i in items]
    assert [i for r in requests for i in r.items] == items


def test_a_smaller_limit_is_a_setting() -> None:
    encoder = sink(max_request_bytes=2048).encoder()
    requests = [r for n in range(200) for r in encoder.add(change(f"u{n:04d}"))]
    requests += encoder.flush()
    assert len(requests) > 1 and all(len(r.body) <= 2048 for r in requests)


def test_an_id_no_request_can_hold_is_refused() -> None:
    encoder = sink().encoder()
    with pytest.raises(ItemTooLarge):
        encoder.add(change("u" * (128 * 1024)))
    assert encoder.flush() == []


def test_what_cohort_sync_cannot_carry_is_refused_not_dropped() -> None:
    encoder = sink().encoder()
    with_attributes = Item(
        COHORT_MEMBERSHIP, "u1", "P", {"plan": "gold"}, {"cohort_id": "c"}, None, (1, 0), "r"
    )
    with pytest.raises(
        Unencodable,
        match=r"a uid alone; this change carries attributes "
        r"\(plan\)",
    ):
        encoder.add(with_attributes)
    with pytest.raises(Unencodable, match="does not take 'event' items"):
        encoder.add(Item("event", "u1", "Opened", {}, {}, None, (1, 0), "r"))
    assert encoder.flush() == []


def test_a_change_undoing_one_held_closes_that_request_first() -> None:
    """Requests leave in the order of the changes: an add held for u1 goes before u1's
    removal; a removal of someone else waits in its own request."""
    encoder = sink().encoder()
    out = encoder.add(change("u1")) + encoder.add(change("u2", member=False))
    assert out == []
    (first,) = encoder.add(change("u1", member=False))
    assert bodies([first]) == [
        {
            "action": "add_members",
            "partner": "amplitude",
            "parameters": {
                "cohort_name": "[Amplitude][P]",
                "cohort_id": "c1",
                "members": [{"uid": "u1"}],
            },
        }
    ]
    rest = bodies(encoder.flush())
    assert [(b["action"], [m["uid"] for m in b["parameters"]["members"]]) for b in rest] == [
        ("remove_members", ["u2", "u1"])
    ]


def test_cohorts_go_in_requests_of_their_own_under_their_latest_name() -> None:
    encoder = sink().encoder()
    encoder.add(change("u1", cohort="a", name="A"))
    encoder.add(change("u1", cohort="b", name="B"))
    assert encoder.add(change("u2", cohort="a", name="A renamed", description="d")) == []
    assert [
        (
            b["parameters"]["cohort_id"],
            b["parameters"]["cohort_name"],
            b["parameters"].get("cohort_description"),
            [m["uid"] for m in b["parameters"]["members"]],
        )
        for b in bodies(encoder.flush())
    ] == [("a", "A renamed", "d", ["u1", "u2"]), ("b", "B", None, ["u1"])]


def test_a_rename_that_leaves_no_room_closes_the_request() -> None:
    encoder = sink(max_request_bytes=1024).encoder()
    out = [r for n in range(20) for r in encoder.add(change(f"u{n:03d}", name="A"))]
    assert out == []
    (closed,) = encoder.add(change("u999", name="A" * 700))
    assert orjson.loads(closed.body)["parameters"]["cohort_name"] == "A"
    (last,) = encoder.flush()
    assert orjson.loads(last.body)["parameters"]["members"] == [{"uid": "u999"}]
    assert len(closed.body) <= 1024 and len(last.body) <= 1024


def test_paced_within_300_requests_a_minute() -> None:
    assert sink().rate_limits() == [RateLimit(300, 60.0)]
    assert sink(requests_per_minute=120).rate_limits() == [RateLimit(120, 60.0)]
    assert CohortSyncSink.ordered  # one request at a time: a removal never overtakes an add


def test_what_is_held_leaves_at_max_age() -> None:
    encoder = sink().encoder()
    assert encoder.until_next() is None
    encoder.add(change("u1"))
    wait = encoder.until_next()
    assert wait is not None and 0 < wait <= 5.0


@pytest.mark.parametrize(("status", "body", "verdict"), CohortSyncSink.documented_answers)
def test_documented_answers(status: int, body: bytes, verdict: type[object]) -> None:
    s = sink()
    encoder = s.encoder()
    encoder.add(change("u1"))
    (request,) = encoder.flush()
    assert isinstance(s.classify(request, Response(status, {}, body)), verdict)


def test_verdict_details() -> None:
    s = sink()
    encoder = s.encoder()
    encoder.add(change("u1"))
    (request,) = encoder.flush()
    throttled = s.classify(request, Response(429, {"Retry-After": "7"}, b"{}"))
    assert isinstance(throttled, Retry) and throttled.throttled and throttled.after == 7.0
    assert isinstance(s.classify(request, Response(401, {}, b"")), Fatal)
    assert isinstance(s.classify(request, Response(413, {}, b"")), Split)
    assert isinstance(s.classify(request, Response(400, {}, b"")), Reject)
    assert isinstance(s.classify(request, Response(200, {}, b"")), Delivered)


@pytest.mark.parametrize(
    "name", ["a|b", "a*b", "a?b", "a\\b", "a:b", "a<b", "a>b", "a=b", "a$b", 'a"b']
)
def test_each_restricted_character_is_named(name: str) -> None:
    char = name[1]
    with pytest.raises(InvalidCohortName) as raised:
        sink().segment_name(name)
    message = str(raised.value)
    assert f"contains '{char}':" in message
    assert "cohort_names: clean" in message


def test_names() -> None:
    s = sink()
    assert s.segment_name("[Amplitude][Power Users] (2024)") == "[Amplitude][Power Users] (2024)"
    with pytest.raises(InvalidCohortName, match=r"starts with '\.' and contains ':'"):
        s.segment_name(".a:b")
    with pytest.raises(InvalidCohortName, match="blank"):
        s.segment_name("  ")
    clean = sink(cohort_names="clean")
    assert clean.segment_name("..VIP: Gold|Plus") == "VIP_ Gold_Plus"
    assert sink(cohort_names="clean", name_replacement="").segment_name("a$b") == "ab"
    with pytest.raises(InvalidCohortName, match="no usable name"):
        clean.segment_name("...")


def test_membership_scope_names_the_workspace_and_host() -> None:
    assert sink().membership_scope == "WS@https://api-01.moengage.com"
    assert sink(endpoint="http://127.0.0.1:8080").membership_scope == "WS@http://127.0.0.1:8080"


BUNDLE = """\
bundle: b
source: {connector: amplitude-cohorts, settings: {segment_name: "Amplitude: {{ cohort_name }}"}}
destination:
  connector: moengage-cohort-sync
  settings:
    workspace_id: WS
    data_api_key: "${KEY}"
    partner: amplitude
    cohort_names: tidy
    name_replacement: "|"
    max_request_bytes: 200000
    requests_per_minute: 0
identity:
  candidates: {user_id: event.user_id}
"""


def test_bad_settings_are_errors_at_their_line(cli: Callable[..., Result], tmp_path: Path) -> None:
    path = tmp_path / "bundle.yaml"
    path.write_text(BUNDLE)
    result = cli("validate", str(path))
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert errors == [
        f"{path}:9:19: error: destination setting 'cohort_names': Input should be 'check' or "
        "'clean'",
        f"{path}:10:23: error: destination setting 'name_replacement': the replacement must "
        'itself be allowed in a cohort name (not . at the start, none of | * ? \\ : < > = $ ")',
        f"{path}:11:24: error: destination setting 'max_request_bytes': Input should be less "
        "than or equal to 131072",
        f"{path}:12:26: error: destination setting 'requests_per_minute': Input should be "
        "greater than or equal to 1",
    ]


def test_a_template_whose_own_text_is_refused_is_an_error(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    path = tmp_path / "bundle.yaml"
    path.write_text(
        "\n".join(
            line
            for line in BUNDLE.splitlines()
            if not line.startswith(
                ("    cohort_names", "    name_repl", "    max_request", "    requests_per")
            )
        )
    )
    result = cli("validate", str(path))
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == (
        f"{path}:2:65: error: the segment name template gives names the destination refuses: "
        "cohort name 'Amplitude: Cohort' contains ':': MoEngage refuses a segment name that "
        "starts with '.' or contains any of | * ? \\ : < > = $ \". Rename the cohort at the "
        "partner, or set the destination setting `cohort_names: clean` to replace such "
        "characters with '_'"
    )
    path.write_text(
        path.read_text().replace(
            "partner: amplitude", "partner: amplitude\n    cohort_names: clean"
        )
    )
    assert cli("validate", str(path)).exit_code == 0


def test_a_cohort_source_needs_a_cohort_destination(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    path = tmp_path / "bundle.yaml"
    path.write_text(
        "bundle: b\nsource: {connector: mixpanel-cohorts}\ndestination:\n"
        "  connector: moengage\n  settings: {workspace_id: WS, data_api_key: k}\n"
        "events:\n  - {name: e, event_name: x}\n"
    )
    result = cli("validate", str(path))
    assert result.exit_code == 1
    assert result.stderr.splitlines()[:3] == [
        f"{path}:2:1: error: a cohort bundle needs `identity`: the candidates for each "
        "member's user id (paths start with `event.`)",
        f"{path}:4:14: error: source 'mixpanel-cohorts' gives cohort memberships; destination "
        "'moengage' cannot take them (it accepts: event, user)",
        f"{path}:6:1: error: a cohort bundle has no event rules: each member's user id comes "
        "from `identity`",
    ]


def test_the_readme_shows_the_settings_the_models_define() -> None:
    from moerules.connectors.amplitude.cohorts import AmplitudeCohortSettings
    from moerules.connectors.mixpanel.cohorts import MixpanelCohortSettings
    from moerules.connectors.moengage.cohort_sync import CohortSyncSettings
    from moerules.engine.rules.settings import settings_table

    readme = (Path(__file__).parents[3] / "README.md").read_text(encoding="utf-8")
    for model in (CohortSyncSettings, AmplitudeCohortSettings, MixpanelCohortSettings):
        table = settings_table(model)
        assert table in readme, f"README.md's {model.__name__} table should be:\n{table}"
