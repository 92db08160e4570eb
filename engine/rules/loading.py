"""Safe YAML loading that remembers where every key and value came from.

Rule files come from customers, so this loader composes the YAML node graph itself instead of
letting a constructor build objects: only the standard scalar tags are accepted, aliases are
expanded with a budget (an alias bomb is refused, not evaluated), files have a size cap, and
every mapping and sequence keeps the file positions that error messages point at.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from moerules.engine.errors import Position, Problem, RuleError
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = ["MAX_FILE_BYTES", "MAX_NODES", "LDict", "LList", "load_yaml", "position_of"]

MAX_FILE_BYTES = 1024 * 1024
"""A rule file larger than this is refused: no hand-written bundle comes near it."""

MAX_NODES = 100_000
"""Nodes a document may expand to, aliases included; the bound that stops alias bombs."""

MAX_DEPTH = 64

_STR = "tag:yaml.org,2002:str"
_SAFE_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:map",
    "tag:yaml.org,2002:seq",
}


class LDict(dict[str, Any]):
    """A mapping from a rule file, with the positions of its keys and values."""

    __slots__ = ("key_pos", "pos", "val_pos")

    def __init__(self, pos: Position) -> None:
        super().__init__()
        self.pos = pos
        self.key_pos: dict[str, Position] = {}
        self.val_pos: dict[str, Position] = {}


class LList(list[Any]):
    """A sequence from a rule file, with the position of each item."""

    __slots__ = ("item_pos", "pos")

    def __init__(self, pos: Position) -> None:
        super().__init__()
        self.pos = pos
        self.item_pos: list[Position] = []


def _mark(path: str, node: Node) -> Position:
    return Position(path, node.start_mark.line + 1, node.start_mark.column + 1)


class _Builder:
    def __init__(self, path: str, yaml: YAML) -> None:
        self.path = path
        self.yaml = yaml
        self.nodes = 0
        self.problems: list[Problem] = []

    def build(self, node: Node, depth: int = 0, stack: frozenset[int] = frozenset()) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise RuleError([Problem(_mark(self.path, node),
                f"document expands to more than {MAX_NODES} nodes (an alias bomb?); "
                "refusing to load it")])
        if depth > MAX_DEPTH or id(node) in stack:
            raise RuleError([Problem(_mark(self.path, node),
                f"document nests deeper than {MAX_DEPTH} levels or refers to itself")])
        if node.tag not in _SAFE_TAGS:
            raise RuleError([Problem(_mark(self.path, node),
                f"tag {node.tag!r} is not allowed in rule files; "
                "use plain YAML scalars, mappings and lists")])
        inner = stack | {id(node)}
        if isinstance(node, MappingNode):
            out = LDict(_mark(self.path, node))
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise RuleError([Problem(_mark(self.path, key_node),
                        "YAML merge keys (<<) are not supported; use `extends:`")])
                key = self.build(key_node, depth + 1, inner)
                if not isinstance(key, str):
                    key = str(key)
                if key in out:
                    self.problems.append(Problem(_mark(self.path, key_node),
                        f"duplicate key {key!r} (first at line {out.key_pos[key].line})"))
                    continue
                out.key_pos[key] = _mark(self.path, key_node)
                out.val_pos[key] = _mark(self.path, value_node)
                out[key] = self.build(value_node, depth + 1, inner)
            return out
        if isinstance(node, SequenceNode):
            seq = LList(_mark(self.path, node))
            for item in node.value:
                seq.item_pos.append(_mark(self.path, item))
                seq.append(self.build(item, depth + 1, inner))
            return seq
        assert isinstance(node, ScalarNode)
        if node.tag == _STR:
            return node.value  # most scalars in a rule file; the constructor adds nothing
        return self.yaml.constructor.construct_object(node, deep=True)


def load_yaml(source: str | Path, text: str | None = None) -> Any:
    """Load one YAML document safely, returning plain data made of ``LDict``/``LList``.

    >>> doc = load_yaml("b.yaml", "bundle: x\\n")
    >>> doc["bundle"], doc.val_pos["bundle"].col
    ('x', 9)
    """
    path = str(source)
    if text is None:
        try:
            size = Path(path).stat().st_size
        except OSError as exc:
            problem = Problem(Position(path), f"cannot read file: {exc.strerror}")
            raise RuleError([problem]) from None
        if size > MAX_FILE_BYTES:
            raise RuleError([Problem(Position(path),
                f"file is {size} bytes; rule files are limited to {MAX_FILE_BYTES} bytes")])
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RuleError([Problem(Position(path), f"cannot read file: {exc}")]) from None
    elif len(text.encode()) > MAX_FILE_BYTES:
        raise RuleError([Problem(Position(path),
            f"document is larger than {MAX_FILE_BYTES} bytes; refusing to load it")])
    # The C parser (ruamel.yaml.clib) composes 8x faster with the same marks and the same
    # YAML 1.2 resolution; ruamel falls back to its pure-Python parser where it is missing.
    yaml = YAML(typ="safe")
    yaml.version = (1, 2)
    try:
        node = yaml.compose(io.StringIO(text))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        pos = Position(path, mark.line + 1, mark.column + 1) if mark else Position(path)
        message = " ".join(str(m) for m in (exc.context, exc.problem) if m)
        raise RuleError([Problem(pos, f"invalid YAML: {message}")]) from None
    except YAMLError as exc:
        raise RuleError([Problem(Position(path), f"invalid YAML: {exc}")]) from None
    if node is None:
        return LDict(Position(path))
    builder = _Builder(path, yaml)
    try:
        data = builder.build(node)
    except YAMLError as exc:
        raise RuleError([Problem(Position(path), f"invalid YAML value: {exc}")]) from None
    if builder.problems:
        raise RuleError(builder.problems)
    return data


def position_of(root: Any, loc: tuple[str | int, ...], *, key: bool = False) -> Position | None:
    """The position of the value at ``loc`` (or of its key), or of the nearest enclosing node."""
    node = root
    best: Position | None = getattr(root, "pos", None)
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, LDict) and isinstance(part, str) and part in node:
            best = node.key_pos[part] if (key and last) else node.val_pos[part]
            node = node[part]
        elif isinstance(node, LList) and isinstance(part, int) and 0 <= part < len(node):
            best = node.item_pos[part]
            node = node[part]
        else:
            break
    return best
