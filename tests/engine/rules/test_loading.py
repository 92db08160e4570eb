"""Loading rule files safely: nesting, numbers, aliases, documents and read caps."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from moerules.engine.errors import RuleError
from moerules.engine.rules.loading import MAX_FILE_BYTES, load_value, load_yaml, read_rule_text

DEEP = 50_000


def problems(text: str) -> list[str]:
    with pytest.raises(RuleError) as info:
        load_yaml("b.yaml", text)
    return [str(p) for p in info.value.problems]


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("bundle: x\nsource: " + "[" * DEEP, "2:72"),  # the 64th `[` is level 65
        ("bundle: x\nsource: " + "{a: " * DEEP, "2:261"),
        ("bundle: x\nsource:\n  " + "- " * DEEP + "x", "3:129"),
    ],
)
def test_deep_nesting_is_refused_where_it_starts(text: str, where: str) -> None:
    assert problems(text) == [
        f"b.yaml:{where}: error: document nests deeper than 64 levels; refusing to load it"
    ]


def test_nesting_up_to_the_limit_loads() -> None:
    doc = load_yaml("b.yaml", "a: " + "[" * 63 + "]" * 63 + "\n")
    levels, node = 1, doc["a"]  # the top mapping, then each list
    while isinstance(node, list):
        levels, node = levels + 1, node[0] if node else None
    assert levels == 64


def test_an_alias_that_would_nest_too_deep_is_refused() -> None:
    text = "a: &a " + "[" * 40 + "]" * 40 + "\nb: " + "[" * 30 + "*a" + "]" * 30 + "\n"
    assert problems(text) == [
        "b.yaml:2:34: error: document nests deeper than 64 levels; refusing to load it"
    ]


def test_a_5000_digit_integer_is_an_error() -> None:
    assert problems("bundle: " + "1" * 5000 + "\n") == [
        "b.yaml:1:9: error: number has too many digits; write it as a string (in quotes) if "
        "it is an identifier"
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: *nope\n", "1:4: error: alias *nope names no anchor defined before it"),
        ("a: &a [*a]\n", "1:8: error: alias *a refers to a node that contains it"),
        (
            "a: 1\n---\nb: 2\n",
            "2:1: error: a rule file holds one YAML document; found a second (`---`)",
        ),
        ("<<: {a: 1}\n", "1:1: error: YAML merge keys (<<) are not supported; use `extends:`"),
        (
            "a: !foo x\n",
            "1:4: error: tag '!foo' is not allowed in rule files; use plain YAML "
            "scalars, mappings and lists",
        ),
        (
            # implicit dates are text; an explicit timestamp tag is refused
            "d: 2001-12-14\nt: !!timestamp 2001-12-14\n",
            "2:4: error: tag 'tag:yaml.org,2002:timestamp' is not allowed in rule files; use plain "
            "YAML scalars, mappings and lists",
        ),
        ("a: b\na: c\n", "2:1: error: duplicate key 'a' (first at line 1)"),
    ],
)
def test_refused_documents(text: str, message: str) -> None:
    assert problems(text) == [f"b.yaml:{message}"]


def test_positions_and_aliases_as_a_composer_gives_them() -> None:
    doc = load_yaml("b.yaml", "k: &a [1, {x: y}]\nm: *a\nn: 0o17\nyes: yes\nd: 2024-01-31\n")
    assert doc == {
        "k": [1, {"x": "y"}],
        "m": [1, {"x": "y"}],
        "n": 15,
        "yes": "yes",
        "d": "2024-01-31",
    }
    assert doc["m"] is not doc["k"]  # each alias is its own copy
    assert str(doc.key_pos["m"]) == "b.yaml:2:1"
    assert str(doc.val_pos["m"]) == "b.yaml:1:4"  # where the anchored value is
    assert str(doc["m"].item_pos[1]) == "b.yaml:1:11"


def test_set_values_are_positioned_within_the_value() -> None:
    assert load_value("--set a", "[1, {x: y}]") == [1, {"x": "y"}]
    with pytest.raises(RuleError) as info:
        load_value("--set a", "[1, 2")
    (problem,) = info.value.problems
    assert str(problem).startswith("--set a:1:6: error: invalid YAML:")


def test_reads_stop_at_the_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (5 * MAX_FILE_BYTES))
    read: list[int] = []
    real_read = os.read

    def counting_read(fd: int, n: int) -> bytes:
        data = real_read(fd, n)
        read.append(len(data))
        return data

    monkeypatch.setattr(os, "read", counting_read)
    with pytest.raises(RuleError) as info:
        read_rule_text(big)
    assert str(info.value) == (
        f"{big}:1:1: error: file is larger than 1048576 bytes; rule "
        "files are limited to 1048576 bytes"
    )
    assert sum(read) == MAX_FILE_BYTES + 1


def test_proc_files_are_read_by_their_content_not_their_size() -> None:
    status = Path("/proc/self/status")
    if not status.exists():
        pytest.skip("no /proc")
    assert status.stat().st_size == 0
    assert "Name:" in read_rule_text(status)


@pytest.mark.parametrize("special", ["/dev/zero", "fifo"])
def test_only_regular_files_are_read(special: str, tmp_path: Path) -> None:
    path = Path(special)
    if special == "fifo":
        path = tmp_path / "fifo.yaml"
        os.mkfifo(path)  # no writer: opening it blocking would wait forever
    if not path.exists():
        pytest.skip(f"no {path}")
    with pytest.raises(RuleError) as info:
        read_rule_text(path)
    assert str(info.value) == (
        f"{path}:1:1: error: not a regular file; rule files are plain YAML files"
    )


def test_not_utf8(write: Callable[..., Path], tmp_path: Path) -> None:
    path = tmp_path / "b.yaml"
    path.write_bytes(b"bundle: \xff\n")
    with pytest.raises(RuleError) as info:
        read_rule_text(path)
    assert str(info.value) == (
        f"{path}:1:1: error: cannot read file: not UTF-8 text (byte 0xff at offset 8)"
    )
