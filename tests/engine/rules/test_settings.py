"""Typed connector settings: every bad setting is a validate error at its file:line:col."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from moerules.connectors.moengage.settings import MoEngageDataSettings
from moerules.connectors.moengage.sink import MoEngageDataSink
from moerules.engine.api import load_bundle
from moerules.engine.errors import RuleError
from moerules.engine.rules.settings import secret_fields, settings_table
from pydantic import SecretStr, ValidationError

from tests.conftest import Result

BUNDLE = """\
bundle: t
source: {connector: mparticle}
destination:
  connector: moengage
  settings:
    workspace_id: WS
    data_api_key: "${TEST_KEY}"
    requests_per_second: VALUE
events:
  - name: custom
    when: event.event_type == 'custom_event'
    event_name: "{{ event.data.event_name }}"
identity: {candidates: {customer_id: batch.user_identities.customer_id}}
"""


def bundle(write: Callable[..., Path], value: str) -> Path:
    return write("bundle.yaml", BUNDLE.replace("VALUE", value))


def validate(cli: Callable[..., Result], path: Path, **env: str) -> tuple[int, str]:
    result = cli("validate", str(path), env=env)
    return result.exit_code, result.stderr


INT = "Input should be a valid integer"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "Input should be greater than or equal to 1"),
        ("-5", "Input should be greater than or equal to 1"),
        ("abc", f"{INT}, unable to parse string as an integer"),
        ("1.5", f"{INT}, got a number with a fractional part"),
        ("[1]", INT),
        ("100001", "Input should be less than or equal to 100000"),
        (
            "1" * 5000,
            "number has too many digits; write it as a string (in quotes) if it is an identifier",
        ),
    ],
)
def test_out_of_range_and_wrong_types(
    cli: Callable[..., Result], write: Callable[..., Path], value: str, message: str
) -> None:
    path = bundle(write, value)
    code, err = validate(cli, path)
    if message.startswith("number"):  # refused by the loader, before any setting is read
        assert (code, err) == (1, f"{path}:8:26: error: {message}\n1 problem found in 1 files\n")
        return
    assert (code, err) == (
        1,
        f"{path}:8:26: error: destination setting 'requests_per_second': "
        f"{message}\n1 problem found in 1 files\n",
    )


def test_every_setting_problem_in_one_pass(
    cli: Callable[..., Result], write: Callable[..., Path]
) -> None:
    path = write(
        "bundle.yaml",
        """\
bundle: t
source: {connector: mparticle, settings: {colour: red}}
destination:
  connector: moengage
  settings:
    data_api_key: [not, text]
    data_centre: "01"
    data_center: "99"
    mode: fast
    endpoint: ftp://example.com
    max_request_bytes: 200000
""",
    )
    code, err = validate(cli, path)
    assert code == 1
    assert err.splitlines() == [
        f"{path}:2:43: error: unknown setting 'colour' for source 'mparticle'; it takes: no "
        "settings",
        f"{path}:5:3: error: destination 'moengage' needs setting 'workspace_id'",
        f"{path}:6:19: error: destination setting 'data_api_key': Input should be a valid string",
        f"{path}:7:5: error: unknown setting 'data_centre' for destination 'moengage' (did you "
        "mean 'data_center'?); it takes: workspace_id, data_api_key, data_center, endpoint, "
        "mode, max_request_bytes, requests_per_second, requests_per_minute",
        f"{path}:8:18: error: destination setting 'data_center': unknown data center '99'; use "
        "one of 01, 02, 03, 04, 05, 06, 101",
        f"{path}:9:11: error: destination setting 'mode': Input should be 'bulk' or 'single'",
        f"{path}:10:15: error: destination setting 'endpoint': endpoint must be an http:// or "
        "https:// URL",
        f"{path}:11:24: error: destination setting 'max_request_bytes': Input should be less "
        "than or equal to 131072",
        "8 problems found in 1 files",
    ]


def test_a_bad_setting_in_an_overlay_points_at_the_overlay(
    cli: Callable[..., Result], write: Callable[..., Path]
) -> None:
    bundle(write, "100")
    overlay = write(
        "o.yaml", "extends: bundle.yaml\ndestination:\n  settings: {requests_per_minute: -1}\n"
    )
    assert validate(cli, overlay) == (
        1,
        (
            f"{overlay}:3:35: error: destination setting 'requests_per_minute': Input should be "
            "greater than or equal to 1\n1 problem found in 1 files\n"
        ),
    )


@pytest.mark.parametrize(
    ("set_value", "message"),
    [
        (
            "destination.requests_per_second=abc",
            "destination setting 'requests_per_second': "
            f"{INT}, unable to parse string as an integer",
        ),
        (
            "destination.requests_per_second=0",
            "destination setting 'requests_per_second': Input should be greater than or equal to 1",
        ),
        ("destination.colour=red", "unknown setting 'colour' for destination 'moengage'"),
    ],
)
def test_set_values_are_checked_too(
    cli: Callable[..., Result], write: Callable[..., Path], set_value: str, message: str
) -> None:
    path = bundle(write, "100")
    result = cli("run", str(path), "--input", "-", "--dry-run", "--set", set_value, input="")
    key = set_value.split("=")[0]
    assert result.exit_code == 1
    assert result.stderr.startswith(f"--set {key}:1:1: error: {message}")
    assert result.stderr.endswith("\n1 problem found\n")


def test_placeholders_are_checked_after_substitution(
    cli: Callable[..., Result], write: Callable[..., Path], tmp_path: Path
) -> None:
    path = bundle(write, '"${RPS}"')
    assert validate(cli, path) == (0, "")  # unset: a dry run paces at the default
    assert validate(cli, path, RPS="250") == (0, "")
    line = (
        f"{path}:8:26: error: destination setting 'requests_per_second' (from ${{RPS}}): "
        f"{INT}, unable to parse string as an integer\n"
    )
    assert validate(cli, path, RPS="abc") == (1, line + "1 problem found in 1 files\n")
    # a real run reads the environment as it starts: the same one line, before anything is sent
    data = tmp_path / "in.jsonl"
    data.write_text("{}\n")
    result = cli(
        "run",
        str(path),
        "--input",
        str(data),
        "--state-dir",
        str(tmp_path / "s"),
        env={"TEST_KEY": "k" * 12, "RPS": "abc"},
    )
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", line + "1 problem found\n")


@pytest.mark.parametrize("value", ['"${1RPS}"', '"${RPS"', '"x${}"'])
def test_malformed_placeholders(
    cli: Callable[..., Result], write: Callable[..., Path], value: str
) -> None:
    path = bundle(write, value)
    assert validate(cli, path) == (
        1,
        (
            f"{path}:8:26: error: destination setting 'requests_per_second': "
            "malformed placeholder; write ${NAME}, NAME made of letters, digits and _ "
            "(not starting with a digit)\n"
            "1 problem found in 1 files\n"
        ),
    )


def test_a_secret_is_never_echoed(cli: Callable[..., Result], write: Callable[..., Path]) -> None:
    secret = "Sx9-not-for-your-eyes"
    path = write(
        "bundle.yaml",
        BUNDLE.replace("VALUE", "1").replace('"${TEST_KEY}"', f"{{nested: {secret}}}"),
    )
    code, err = validate(cli, path)
    assert (code, err) == (
        1,
        f"{path}:7:19: error: destination setting 'data_api_key': Input "
        "should be a valid string\n1 problem found in 1 files\n",
    )
    result = cli(
        "run",
        str(path),
        "--input",
        "-",
        "--dry-run",
        "--set",
        f"destination.data_api_key=[{secret}",
        input="",
    )
    assert result.exit_code == 1
    assert secret not in result.stderr


def test_an_unset_variable_in_a_typed_setting_takes_the_default_in_a_dry_run(
    cli: Callable[..., Result], write: Callable[..., Path], tmp_path: Path
) -> None:
    path = write(
        "bundle.yaml", BUNDLE.replace("requests_per_second: VALUE", 'data_center: "${DC}"')
    )
    data = tmp_path / "in.jsonl"
    data.write_text(
        '{"user_identities": {"customer_id": "c1"}, "events": [{"event_type": '
        '"custom_event", "data": {"event_name": "E"}}]}\n'
    )
    result = cli(
        "run",
        str(path),
        "--input",
        str(data),
        "--dry-run",
        "--dead-letter",
        str(tmp_path / "dl.jsonl"),
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith('{"method":"POST","url":"https://api-01.moengage.com/')
    assert "not set, shown as placeholders: DC, TEST_KEY" in result.stderr
    real = cli("run", str(path), "--input", str(data), env={"TEST_KEY": "k" * 12})
    assert real.exit_code == 2
    assert "a real run needs these environment variables set: DC" in real.stderr


def test_the_sink_is_built_from_the_parsed_model(write: Callable[..., Path]) -> None:
    path = bundle(write, "40")
    compiled = load_bundle(
        path,
        ["destination.data_center=2", "destination.mode=single"],
        env={"TEST_KEY": "key-123456"},
    )
    sink = compiled.sink
    assert isinstance(sink, MoEngageDataSink)
    assert sink.config == MoEngageDataSettings.model_validate(
        dict(
            workspace_id="WS",
            data_api_key=SecretStr("key-123456"),
            data_center="02",
            mode="single",
            requests_per_second=40,
        )
    )
    assert (sink.host, sink.bulk) == ("https://api-02.moengage.com", False)
    assert [(r.amount, r.per_seconds) for r in sink.rate_limits()[:2]] == [(40, 1.0), (15000, 60.0)]
    assert compiled.secrets == frozenset({"key-123456"})
    assert "key-123456" not in repr(sink.config)


def test_a_mapping_is_parsed_by_the_same_model() -> None:
    with pytest.raises(ValidationError) as info:
        MoEngageDataSink({"workspace_id": "WS", "data_api_key": "k", "requests_per_second": 0})
    assert [e["loc"] for e in info.value.errors()] == [("requests_per_second",)]


def test_secret_fields_and_the_settings_table() -> None:
    assert secret_fields(MoEngageDataSettings) == frozenset({"data_api_key"})
    table = settings_table(MoEngageDataSettings)
    assert "| `data_api_key` | secret string | required |" in table
    assert "| `data_center` | `01` / `02` / `03` / `04` / `05` / `06` / `101` | `01` |" in table
    assert "| `requests_per_second` | integer (≥ 1, ≤ 100000) | `500` |" in table


def test_the_readme_shows_the_settings_the_models_define() -> None:
    readme = (Path(__file__).parents[3] / "README.md").read_text(encoding="utf-8")
    table = settings_table(MoEngageDataSettings)
    assert table in readme, f"README.md's MoEngage settings table should be:\n{table}"


def test_load_bundle_error_lists_every_problem(write: Callable[..., Path]) -> None:
    path = bundle(write, "0")
    with pytest.raises(RuleError) as info:
        load_bundle(path, ["destination.mode=fast"])
    assert [str(p) for p in info.value.problems] == [
        "--set destination.mode:1:1: error: destination setting 'mode': Input should be 'bulk' "
        "or 'single'",
        f"{path}:8:26: error: destination setting 'requests_per_second': Input should be "
        "greater than or equal to 1",
    ]
