"""The transform vocabulary, applied through compiled fields."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from moerules.engine.api import dry_run, load_bundle
from moerules.engine.errors import RuleError

BUNDLE = """
bundle: t
source: {connector: mparticle}
destination: {connector: moengage, settings: {workspace_id: WS, data_api_key: K}}
identity: {candidates: {cid: batch.user_identities.customer_id}}
events:
  - name: all
    event_name: E
    attributes:
      out: {from: event.v, transform: %s}
tables:
  colors: {values: {red: R, Blue: B}, default: other, ignore_case: true}
"""


def apply(write: Callable[..., Path], transform: str, value: Any) -> Any:
    path = write("bundle.yaml", BUNDLE % transform)
    compiled = load_bundle(path)
    line = orjson.dumps({"user_identities": {"customer_id": "c"}, "events": [{"v": value}]})
    out = io.BytesIO()
    report = dry_run(compiled, [(1, line)], out)
    if report.dead_lettered:
        return ("dead", *report.dead_lettered)
    (request,) = [json.loads(x) for x in out.getvalue().splitlines()]
    attributes = request["body"]["elements"][0]["actions"][0]["attributes"]
    return attributes.get("out", "<absent>")


@pytest.mark.parametrize(
    ("transform", "value", "expected"),
    [
        ("[string]", 12.0, "12"),
        ("[string]", True, "true"),
        ("[string]", {"a": 1}, '{"a":1}'),
        ("[int]", "42", 42),
        ("[int]", 42.0, 42),
        ("[int]", "7.0", 7),
        ("[int]", 42.9, ("dead", "out: cannot convert to int")),
        ("[int]", "x", ("dead", "out: cannot convert to int")),
        ("[float]", "19.99", 19.99),
        ("[float]", 3, 3.0),
        ("[float]", "abc", ("dead", "out: cannot convert to float")),
        ("[bool]", "yes", True),
        ("[bool]", 0, False),
        ("[lower]", "AbC", "abc"),
        ("[upper]", "abc", "ABC"),
        ("[title]", "ab cd", "Ab Cd"),
        ("[trim]", "  x ", "x"),
        ("[empty_to_null]", "", "<absent>"),
        ("[{default: none}]", None, "none"),
        ("[{default: none}]", "", "none"),
        ("[{default: none}]", "v", "v"),
        ("[lower, {default: unknown}]", None, "unknown"),
        ("[{hash: md5}]", "a", "0cc175b9c0f1b6a831c399e269772661"),
        ("[sha256]", "a", "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"),
        ("[{lookup: colors}]", "RED", "R"),
        ("[{lookup: colors}]", "green", "other"),
        ("[epoch_ms_to_s]", 1700000000999, 1700000000),
        ("[epoch_s_to_ms]", 1700000000, 1700000000000),
        ("[epoch_s_to_iso]", 0, "1970-01-01T00:00:00Z"),
        ("[epoch_ms_to_iso]", 1700000000000, "2023-11-14T22:13:20Z"),
        ("[iso_to_epoch_s]", "2023-11-14T22:13:20Z", 1700000000),
        ("[iso_to_epoch_ms]", "2023-11-14T22:13:20+00:00", 1700000000000),
        ("[{round: 1}]", 2.345, 2.3),
        ("[{truncate: 2}]", "abcdef", "ab"),
        ("[{prefix: 'p_'}]", "x", "p_x"),
        ("[{suffix: '_s'}]", "x", "x_s"),
        ("[{replace: {old: a, new: b}}]", "banana", "bbnbnb"),
        ("[{split: ','}]", "a,b", ["a", "b"]),
        ("[{join: '|'}]", ["a", 1, None], "a|1"),
        ("[json]", [1, 2], "[1,2]"),
        ("[lower]", None, "<absent>"),
        ("[int]", None, "<absent>"),
    ],
)
def test_transform(write: Callable[..., Path], transform: str, value: Any, expected: Any) -> None:
    assert apply(write, transform, value) == expected


@pytest.mark.parametrize(
    ("transform", "message"),
    [
        ("[lowercase]", "unknown transform 'lowercase' (did you mean 'lower'?)"),
        ("[default]", "transform 'default' needs an argument"),
        ("[{lower: x}]", "transform 'lower' takes no argument"),
        ("[{hash: sha512}]", "hash algorithm must be one of sha256, sha1, md5"),
        ("[{lookup: colours}]", "unknown table 'colours' (did you mean 'colors'?)"),
        ("[{round: x}]", "round takes a whole number"),
        ("[{replace: x}]", "replace takes {old: ..., new: ...}"),
    ],
)
def test_bad_transforms_are_rule_errors(
    write: Callable[..., Path], transform: str, message: str
) -> None:
    with pytest.raises(RuleError) as info:
        apply(write, transform, 1)
    assert message in str(info.value)
    assert ":9:" in str(info.value)  # the line of the field that uses it


def test_every_transform_is_tested_here() -> None:
    """A transform added to the registry without a case above fails here."""
    from moerules.engine.compile.transforms import TRANSFORMS

    cases = test_transform.pytestmark[0].args[1]
    tested = {
        step.strip(" []{}").split(":")[0]
        for transform, _, _ in cases
        for step in transform.strip("[]").split(", ")
    }
    assert set(TRANSFORMS) <= tested | {"hash"}, set(TRANSFORMS) - tested


def test_the_readme_and_the_schema_take_transform_docs_from_the_registry(
    cli: Callable[..., Any],
) -> None:
    from moerules.engine.compile.transforms import TRANSFORMS, transforms_table

    readme = (Path(__file__).parents[3] / "README.md").read_text(encoding="utf-8")
    assert transforms_table() in readme, (
        f"README.md's transforms table should be:\n{transforms_table()}"
    )
    schema = cli("schema").stdout
    for spec in TRANSFORMS.values():
        assert json.dumps(f"{spec.name}: {spec.doc}")[1:-1] in schema


@pytest.mark.parametrize(
    ("transform", "message"),
    [
        ("[{round: true}]", "round takes a whole number"),
        ("[{truncate: -1}]", "truncate takes a whole number"),
        ("[{lower: x, upper: y}]", "a transform is a name (`lower`) or a one-key mapping"),
    ],
)
def test_transform_arguments_are_checked(
    write: Callable[..., Path], transform: str, message: str
) -> None:
    with pytest.raises(RuleError) as info:
        apply(write, transform, 1)
    assert message in str(info.value)
