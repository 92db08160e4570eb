"""`moerules validate`: every class of rule-file mistake, reported as PATH:LINE:COL."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import MINIMAL_BUNDLE, Result

LINE = re.compile(r"^(?P<path>.+?):(?P<line>\d+):(?P<col>\d+): error: (?P<msg>.+)$")


def errors(result: Result) -> list[tuple[int, int, str]]:
    out = []
    for line in result.stderr.splitlines():
        m = LINE.match(line)
        if m:
            out.append((int(m["line"]), int(m["col"]), m["msg"]))
    return out


def test_shipped_bundles_are_valid(cli: Callable[..., Result]) -> None:
    result = cli("validate", "rules")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("ok: ")


def test_installed_script_validates(moerules: Callable[..., object], tmp_path: Path) -> None:
    ok = moerules("validate", "rules", cwd=Path(__file__).parents[3])
    assert ok.returncode == 0, ok.stderr  # type: ignore[attr-defined]
    bad = tmp_path / "bundle.yaml"
    bad.write_text("bundle: x\nsourc: {connector: mparticle}\n")
    result = moerules("validate", str(bad))
    assert result.returncode == 1  # type: ignore[attr-defined]
    assert f"{bad}:2:1: error: unknown key 'sourc' (did you mean 'source'?)" in (result.stderr)  # type: ignore[attr-defined]
    assert "Traceback" not in result.stderr  # type: ignore[attr-defined]


def test_valid_minimal_bundle(cli: Callable[..., Result], write: Callable[..., Path]) -> None:
    path = write("bundle.yaml", MINIMAL_BUNDLE)
    result = cli("validate", str(path))
    assert result.exit_code == 0, result.stderr


def test_yaml_syntax_error_points_at_line(
    cli: Callable[..., Result], write: Callable[..., Path]
) -> None:
    path = write("b.yaml", "bundle: x\nevents: [\n  {name: a\n")
    result = cli("validate", str(path))
    assert result.exit_code == 1
    ((line, _col, msg),) = errors(result)
    assert msg.startswith("invalid YAML")
    assert line >= 3


def test_all_problems_in_one_pass(cli: Callable[..., Result], write: Callable[..., Path]) -> None:
    path = write(
        "bundle.yaml",
        """
        bundle: t
        source: {connector: mparticel}
        destination:
          connector: moengage
          settings: {workspace_id: WS, data_api_key: K, data_centre: "01"}
        identity:
          candidates: {customer_id: batch.user_identities.customer_id}
          precedence: [customerid]
        events:
          - name: a
            when: "event.event_type == "
            event_name: "{{ event.data.event_name "
          - name: a
            wehn: x
            event_name: x
            attributes:
              Price: {from: event.data.price, transform: [flaot]}
              Brand: {from: event.data.brand, transform: [{lookup: brandz}]}
              Name: {from: data.name}
            fields:
              curent_time: event.data.ts
        tables:
          brands: {a: b}
        """,
    )
    result = cli("validate", str(path))
    assert result.exit_code == 1
    found = errors(result)
    messages = "\n".join(f"{line}:{col} {msg}" for line, col, msg in found)
    expected = [
        (2, "unknown source connector 'mparticel' (did you mean 'mparticle'?)"),
        (
            5,
            "unknown setting 'data_centre' for destination 'moengage' (did you mean "
            "'data_center'?)",
        ),
        (8, "unknown identity candidate 'customerid' (did you mean 'customer_id'?)"),
        (11, "invalid JMESPath"),
        (12, "template does not parse"),
        (13, "duplicate rule name 'a'"),
        (14, "unknown key 'wehn' (did you mean 'when'?)"),
        (17, "unknown transform 'flaot' (did you mean 'float'?)"),
        (18, "unknown table 'brandz' (did you mean 'brands'?)"),
        (19, "path 'data.name' starts at 'data'"),
        (21, "has no event field 'curent_time' (did you mean 'current_time'?)"),
    ]
    for line, text in expected:
        assert any(at == line and text in msg for at, _, msg in found), (
            f"line {line}: {text!r} not in\n{messages}"
        )
    assert result.stderr.strip().endswith(f"{len(found)} problems found in 1 files")


def test_unknown_key_did_you_mean(cli: Callable[..., Result], write: Callable[..., Path]) -> None:
    path = write("bundle.yaml", MINIMAL_BUNDLE.replace("event_name:", "event_nme:"))
    result = cli("validate", str(path))
    assert (
        11,
        5,
        "unknown key 'event_nme' (did you mean 'event_name'?); allowed here: "
        "attributes, drop, emit, event_name, fields, name, spread, when",
    ) in errors(result)


def test_missing_required_key(cli: Callable[..., Result], write: Callable[..., Path]) -> None:
    path = write("bundle.yaml", "bundle: t\nsource: {connector: mparticle}\n")
    result = cli("validate", str(path))
    assert result.exit_code == 1
    assert any("missing required key 'destination'" in m for _, _, m in errors(result))


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ event.__class__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{% for x in range(10) %}{{ x }}{% endfor %}",
        "{{ event.data.items() }}",
        "{% include 'x' %}",
    ],
)
def test_sandbox_escape_templates_are_refused(
    cli: Callable[..., Result], write: Callable[..., Path], template: str
) -> None:
    bundle = MINIMAL_BUNDLE.replace('"{{ event.data.event_name }}"', repr(template))
    path = write("bundle.yaml", bundle)
    result = cli("validate", str(path))
    assert result.exit_code == 1
    ((line, col, msg),) = errors(result)
    assert (line, col) == (11, 17)
    assert "not allowed" in msg or "unknown variable" in msg


def test_sandbox_escape_is_never_evaluated(
    cli: Callable[..., Result], write: Callable[..., Path], tmp_path: Path
) -> None:
    bundle = MINIMAL_BUNDLE.replace(
        '"{{ event.data.event_name }}"', "\"{{ ''.__class__.__mro__[1].__subclasses__() }}\""
    )
    path = write("bundle.yaml", bundle)
    data = tmp_path / "in.jsonl"
    data.write_text(
        '{"user_identities": {"customer_id": "c1"}, "events": '
        '[{"event_type": "custom_event", "data": {"event_name": "x"}}]}\n'
    )
    result = cli("run", str(path), "--input", str(data), "--dry-run")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "subclasses" not in result.stdout


def test_alias_bomb_is_refused(cli: Callable[..., Result], write: Callable[..., Path]) -> None:
    rows = ['a: &a ["x","x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 9):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        rows.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 10) + "]")
    path = write("bomb.yaml", "bundle: t\n" + "\n".join(rows) + "\n")
    result = cli("validate", str(path))
    assert result.exit_code == 1
    assert "alias bomb" in result.stderr
    assert "Traceback" not in result.stderr


def test_huge_file_is_refused(cli: Callable[..., Result], tmp_path: Path) -> None:
    path = tmp_path / "bundle.yaml"
    path.write_text("bundle: t\n" + "# padding\n" * 120_000)
    result = cli("validate", str(path))
    assert result.exit_code == 1
    assert f"{path}:1:1: error: file is" in result.stderr
    assert "rule files are limited to 1048576 bytes" in result.stderr


def test_python_tags_are_refused(cli: Callable[..., Result], write: Callable[..., Path]) -> None:
    path = write("bundle.yaml", "bundle: !!python/object/apply:os.system [echo hacked]\n")
    result = cli("validate", str(path))
    assert result.exit_code == 1
    assert (
        ":1:9: error: tag 'tag:yaml.org,2002:python/object/apply:os.system' is not "
        "allowed" in result.stderr
    )


def test_routing_declarations_are_checked(
    cli: Callable[..., Result], write: Callable[..., Path]
) -> None:
    path = write(
        "bundle.yaml",
        MINIMAL_BUNDLE
        + """
routing:
  from: event.data.custom_attributes.moe_project_name
  projects:
    - {name: Brand A, code: P1}
    - {name: Brand A, code: P2}
    - {name: " Brand B", code: P1}
    - {name: "", code: P3}
  fallback: drop
""",
    )
    result = cli("validate", str(path))
    found = errors(result)
    msgs = [m for _, _, m in found]
    assert any("project 'Brand A' is declared twice" in m for m in msgs)
    assert any("project code 'P1' is used twice" in m for m in msgs)
    assert any("has surrounding spaces" in m for m in msgs)
    assert any("project name is blank" in m for m in msgs)
    assert any(line == 20 and "routing.fallback" in m for line, _, m in found)


def test_duplicate_yaml_keys(cli: Callable[..., Result], write: Callable[..., Path]) -> None:
    path = write("bundle.yaml", MINIMAL_BUNDLE + "bundle: again\n")
    result = cli("validate", str(path))
    assert (12, 1, "duplicate key 'bundle' (first at line 1)") in errors(result)


def test_missing_path_is_an_error(cli: Callable[..., Result], tmp_path: Path) -> None:
    result = cli("validate", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 1
    assert "no such file, directory or shipped bundle" in result.stderr


def test_deep_nesting_is_an_error_not_a_crash(
    moerules: Callable[..., object], tmp_path: Path
) -> None:
    # before: the C composer recursed into 50,000 `[` and the process died (SIGSEGV)
    path = tmp_path / "bundle.yaml"
    path.write_text("bundle: x\nsource: " + "[" * 50_000 + "\n")
    result = moerules("validate", str(path))
    assert (result.returncode, result.stdout, result.stderr) == (  # type: ignore[attr-defined]
        1,
        "",
        f"{path}:2:72: error: document nests deeper than 64 levels; refusing to load "
        "it\n1 problem found in 1 files\n",
    )
    deep_set = moerules(
        "run",
        "mparticle-to-moengage",
        "--input",
        "-",
        "--dry-run",
        "--set",
        "identity.precedence=" + "[" * 50_000,
        input="",
    )
    assert (deep_set.returncode, deep_set.stderr) == (  # type: ignore[attr-defined]
        1,
        "--set identity.precedence:1:63: error: value nests deeper than 64 levels (its "
        "KEY's included); refusing to load it\n1 problem found\n",
    )


def test_huge_integer_is_an_error(cli: Callable[..., Result], write: Callable[..., Path]) -> None:
    path = write("bundle.yaml", "bundle: " + "9" * 5000 + "\n")
    result = cli("validate", str(path))
    assert (result.exit_code, result.stderr) == (
        1,
        f"{path}:1:9: error: number has too many digits; write it as a string (in quotes) "
        "if it is an identifier\n1 problem found in 1 files\n",
    )


FLOW = (
    "{bundle: t, source: {connector: mparticle}, destination: {connector: moengage, "
    'settings: {workspace_id: WS, data_api_key: K, data_center: "99"}}}\n'
)
REST = (
    "source: {connector: mparticle}\ndestination: {connector: moengage, settings: "
    '{workspace_id: WS, data_api_key: K, data_center: "99"}}\n'
)


@pytest.mark.parametrize(
    "text",
    [
        FLOW,  # flow style
        '"bundle": t\n' + REST,  # a quoted key
        "# a comment first\n"
        + "".join(f"  {line}\n" for line in f"bundle: t\n{REST}".splitlines()),
        "? bundle\n: t\n" + REST,  # an explicit key
    ],
)
def test_validate_dir_finds_bundles_however_they_are_written(
    cli: Callable[..., Result], tmp_path: Path, text: str
) -> None:
    (tmp_path / "acme.yaml").write_text(text)
    (tmp_path / "ci.yml").write_text("name: not a rule file\non: [push]\n")  # skipped
    result = cli("validate", str(tmp_path))
    assert result.exit_code == 1
    assert result.stderr.endswith("1 problem found in 1 files\n")
    assert "unknown data center '99'" in result.stderr


def test_validate_dir_finds_overlays_without_a_bundle_key(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    (tmp_path / "o.yaml").write_text("extends: mparticle-to-moengage\nevents: 3\n")
    result = cli("validate", str(tmp_path))
    assert result.exit_code == 1
    assert f"{tmp_path / 'o.yaml'}:2:9: error: events: Input should be a valid list" in (
        result.stderr
    )


def test_validate_dir_reports_files_it_cannot_read(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    (tmp_path / "bad.yaml").write_text("bundle: [x\n")
    (tmp_path / "big.yaml").write_bytes(b"#" * (3 << 20))
    result = cli("validate", str(tmp_path))
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"{tmp_path / 'bad.yaml'}:2:1: error: invalid YAML: ")
    assert lines[1:] == [
        f"{tmp_path / 'big.yaml'}:1:1: error: file is larger than 1048576 bytes; rule files "
        "are limited to 1048576 bytes",
        "2 problems found in 0 files",
    ]
