"""Safe YAML loading that remembers where every key and value came from.

Rule files come from customers, so nothing recursive ever sees their text unbounded. The
parser (libyaml through ruamel.yaml.clib, or ruamel's own) is a state machine that yields
events without recursing; this module builds the data from those events itself, with an
explicit stack, and refuses a document at the first node that nests deeper than
``MAX_DEPTH`` (50,000 nested ``[`` stop at the 65th, with its line and column, instead of
crashing a recursive composer). Only the standard scalar tags are accepted, aliases are
expanded with a budget (an alias bomb is refused, not evaluated), files are read up to a cap
on the bytes actually read (``/proc`` files report a size of 0), and every mapping and
sequence keeps the file positions that error messages point at.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from typing import Any

from moerules.engine.errors import Position, Problem, RuleError
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import (
    AliasEvent,
    CollectionStartEvent,
    DocumentStartEvent,
    Event,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
)
from ruamel.yaml.nodes import ScalarNode

__all__ = [
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_NODES",
    "LDict",
    "LList",
    "load_value",
    "load_yaml",
    "position_of",
    "read_rule_text",
    "top_level_keys",
]

MAX_FILE_BYTES = 1024 * 1024
"""A rule file larger than this is refused: no hand-written bundle comes near it."""

MAX_NODES = 100_000
"""Nodes a document may expand to, aliases included; the bound that stops alias bombs."""

MAX_DEPTH = 64
"""Levels of nesting a document may have; the shipped bundles use 7."""

_TOO_DEEP = f"document nests deeper than {MAX_DEPTH} levels; refusing to load it"
_STR = "tag:yaml.org,2002:str"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MERGE = "tag:yaml.org,2002:merge"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_SAFE_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    _MAP,
    _SEQ,
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


def read_rule_text(path: str | Path) -> str:
    """The text of a rule file, reading at most ``MAX_FILE_BYTES`` + 1 bytes of it.

    Only regular files are read: a FIFO, a device or a directory is refused before a byte is
    read (``O_NONBLOCK`` keeps ``open`` itself from waiting on a FIFO's writer).
    """
    name = str(path)
    try:
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise RuleError([Problem(Position(name), f"cannot read file: {exc.strerror}")]) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RuleError(
                [Problem(Position(name), "not a regular file; rule files are plain YAML files")]
            )
        chunks: list[bytes] = []
        budget = MAX_FILE_BYTES + 1
        while budget > 0:
            chunk = os.read(fd, min(budget, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            budget -= len(chunk)
    except OSError as exc:
        raise RuleError([Problem(Position(name), f"cannot read file: {exc.strerror}")]) from None
    finally:
        os.close(fd)
    if budget <= 0:
        raise RuleError(
            [
                Problem(
                    Position(name),
                    f"file is larger than {MAX_FILE_BYTES} bytes; "
                    f"rule files are limited to {MAX_FILE_BYTES} "
                    "bytes",
                )
            ]
        )
    data = b"".join(chunks)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RuleError(
            [
                Problem(
                    Position(name),
                    f"cannot read file: not UTF-8 text (byte "
                    f"0x{data[exc.start]:02x} at offset "
                    f"{exc.start})",
                )
            ]
        ) from None


class _Collection:
    """A mapping or sequence being built, with what its next event completes."""

    __slots__ = ("anchor", "key", "key_mark", "nodes_before", "value")

    def __init__(self, value: LDict | LList, anchor: str | None, nodes_before: int) -> None:
        self.value = value
        self.anchor = anchor
        self.nodes_before = nodes_before
        self.key: str | None = None  # a mapping's key, once read, until its value is
        self.key_mark: Position | None = None


class _Builder:
    """Plain data (``LDict``/``LList``/scalars) from parser events, with an explicit stack."""

    def __init__(
        self, path: str, yaml: YAML, max_depth: int, col_shift: int = 0, too_deep: str = _TOO_DEEP
    ) -> None:
        self.path = path
        self.yaml = yaml
        self.max_depth = max_depth
        self.too_deep = too_deep
        self.col_shift = col_shift  # `--set` values are parsed after a 3-character prefix
        self.nodes = 0
        self.problems: list[Problem] = []
        # anchor -> (value, where it is, nodes it expands to, levels it spans), once complete
        self.anchors: dict[str, tuple[Any, Position, int, int]] = {}
        self.open_anchors: set[str] = set()

    def mark(self, event: Event) -> Position:
        mark = event.start_mark
        col = mark.column + 1 - (self.col_shift if mark.line == 0 else 0)
        return Position(self.path, mark.line + 1, max(col, 1))

    def fail(self, event: Event, message: str) -> RuleError:
        return RuleError([Problem(self.mark(event), message)])

    def count(self, event: Event, nodes: int = 1) -> None:
        self.nodes += nodes
        if self.nodes > MAX_NODES:
            raise self.fail(
                event,
                f"document expands to more than {MAX_NODES} nodes (an "
                "alias bomb?); refusing to load it",
            )

    def check_tag(self, event: Event, tag: str) -> None:
        if tag not in _SAFE_TAGS:
            raise self.fail(
                event,
                f"tag {tag!r} is not allowed in rule files; use plain "
                "YAML scalars, mappings and lists",
            )

    def build(self, events: Any) -> Any:
        stack: list[_Collection] = []
        result: Any = None
        documents = 0
        for event in events:
            if isinstance(event, DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise self.fail(
                        event, "a rule file holds one YAML document; found a second (`---`)"
                    )
                continue
            if isinstance(event, ScalarEvent):
                value, pos = self.scalar(event, stack), self.mark(event)
            elif isinstance(event, AliasEvent):
                value, pos = self.alias(event, len(stack))
            elif isinstance(event, CollectionStartEvent):
                self.count(event)
                if len(stack) + 1 > self.max_depth:
                    raise self.fail(event, self.too_deep)
                is_map = isinstance(event, MappingStartEvent)
                tag = str(event.tag) if event.tag not in (None, "!") else (_MAP if is_map else _SEQ)
                self.check_tag(event, tag)
                pos = self.mark(event)
                stack.append(
                    _Collection(LDict(pos) if is_map else LList(pos), event.anchor, self.nodes)
                )
                if event.anchor is not None:
                    self.open_anchors.add(event.anchor)
                continue
            elif isinstance(event, MappingEndEvent | SequenceEndEvent):
                top = stack.pop()
                value, pos = top.value, top.value.pos  # positioned where it began
                if top.anchor is not None:
                    self.open_anchors.discard(top.anchor)
                    self.anchors[top.anchor] = (
                        value,
                        pos,
                        self.nodes - top.nodes_before,
                        _height(value),
                    )
            else:
                continue  # stream and document ends
            if stack:
                self.attach(stack[-1], value, pos)
            else:
                result = value
        return result

    def scalar(self, event: ScalarEvent, stack: list[_Collection]) -> Any:
        self.count(event)
        tag = str(event.tag)
        if event.tag is None or tag == "!":
            tag = str(self.yaml.resolver.resolve(ScalarNode, event.value, event.implicit))
            if tag == _TIMESTAMP:  # YAML 1.2 has no implicit dates: `2024-01-31` is text
                tag = _STR
        if (
            tag == _MERGE
            and stack
            and isinstance(stack[-1].value, LDict)
            and stack[-1].key_mark is None
        ):
            raise self.fail(event, "YAML merge keys (<<) are not supported; use `extends:`")
        self.check_tag(event, tag)
        if tag == _STR:
            value: Any = event.value  # most scalars in a rule file; the constructor adds nothing
        else:
            node = ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
            try:
                value = self.yaml.constructor.construct_object(node, deep=True)
            except ValueError as exc:  # int('1' * 5000): past Python's digit limit
                reason = "has too many digits" if "digits" in str(exc) else f"is invalid: {exc}"
                raise self.fail(
                    event,
                    f"number {reason}; write it as a string (in quotes) if it is an identifier",
                ) from None
        if event.anchor is not None:
            self.anchors[event.anchor] = (value, self.mark(event), 1, 0)
        return value

    def alias(self, event: AliasEvent, depth: int) -> tuple[Any, Position]:
        """A copy of the anchored value, positioned where the anchor is (as a composer would)."""
        name = event.anchor
        if name in self.open_anchors:
            raise self.fail(event, f"alias *{name} refers to a node that contains it")
        if name not in self.anchors:
            raise self.fail(event, f"alias *{name} names no anchor defined before it")
        value, pos, nodes, height = self.anchors[name]
        self.count(event, nodes)
        if depth + height > self.max_depth:
            raise self.fail(event, self.too_deep)
        return _copy(value), pos

    def attach(self, parent: _Collection, value: Any, pos: Position) -> None:
        container = parent.value
        if isinstance(container, LList):
            container.append(value)
            container.item_pos.append(pos)
            return
        if parent.key_mark is None:  # this is the key
            parent.key = value if isinstance(value, str) else str(value)
            parent.key_mark = pos
            return
        key, key_pos = parent.key, parent.key_mark
        parent.key = parent.key_mark = None
        assert key is not None
        if key in container:
            self.problems.append(
                Problem(
                    key_pos, f"duplicate key {key!r} (first at line {container.key_pos[key].line})"
                )
            )
            return
        container[key] = value
        container.key_pos[key] = key_pos
        container.val_pos[key] = pos


def _height(value: LDict | LList) -> int:
    """Levels a completed collection spans (bounded by the depth check, so recursion is safe)."""
    children = value.values() if isinstance(value, LDict) else value
    return 1 + max((_height(c) for c in children if isinstance(c, LDict | LList)), default=0)


def _copy(value: Any) -> Any:
    """A fresh copy of an anchored value for each alias (depth already bounded)."""
    if isinstance(value, LDict):
        out = LDict(value.pos)
        for k, v in value.items():
            out[k] = _copy(v)
        out.key_pos.update(value.key_pos)
        out.val_pos.update(value.val_pos)
        return out
    if isinstance(value, LList):
        seq = LList(value.pos)
        seq.extend(_copy(v) for v in value)
        seq.item_pos.extend(value.item_pos)
        return seq
    return value


def _yaml() -> YAML:
    # The C parser (ruamel.yaml.clib) parses 8x faster with the same marks and the same
    # YAML 1.2 resolution; ruamel falls back to its pure-Python parser where it is missing.
    yaml = YAML(typ="safe")
    yaml.version = (1, 2)
    return yaml


def _load(
    path: str, text: str, max_depth: int, col_shift: int = 0, too_deep: str = _TOO_DEEP
) -> Any:
    if len(text) > MAX_FILE_BYTES or len(text.encode()) > MAX_FILE_BYTES:
        raise RuleError(
            [
                Problem(
                    Position(path),
                    f"document is larger than {MAX_FILE_BYTES} bytes; refusing to load it",
                )
            ]
        )
    yaml = _yaml()
    builder = _Builder(path, yaml, max_depth, col_shift, too_deep)
    try:
        data = builder.build(yaml.parse(io.StringIO(text)))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        pos = Position(path)
        if mark is not None:
            line, column = mark.line, mark.column
            lines = text.split("\n")
            if line >= len(lines):  # the end of the stream: just after the last character
                line, column = len(lines) - 1, len(lines[-1])
            col = column + 1 - (col_shift if line == 0 else 0)
            pos = Position(path, line + 1, max(col, 1))
        message = " ".join(str(m) for m in (exc.context, exc.problem) if m)
        raise RuleError([Problem(pos, f"invalid YAML: {message}")]) from None
    except YAMLError as exc:
        raise RuleError([Problem(Position(path), f"invalid YAML: {exc}")]) from None
    if builder.problems:
        raise RuleError(builder.problems)
    return data


def load_yaml(source: str | Path, text: str | None = None) -> Any:
    """Load one YAML document safely, returning plain data made of ``LDict``/``LList``.

    >>> doc = load_yaml("b.yaml", "bundle: x\\n")
    >>> doc["bundle"], doc.val_pos["bundle"].col
    ('x', 9)
    """
    path = str(source)
    if text is None:
        text = read_rule_text(path)
    data = _load(path, text, MAX_DEPTH)
    return LDict(Position(path)) if data is None else data


def load_value(label: str, text: str, max_depth: int = MAX_DEPTH) -> Any:
    """One YAML value given on the command line (``--set``), positioned within ``text``;
    ``max_depth`` is what the levels of its KEY leave of ``MAX_DEPTH``.

    >>> load_value("--set a.b", "[1, {x: y}]")
    [1, {'x': 'y'}]
    """
    # parsed as a mapping's value, so `a: b` is an error here as it would be in a file
    too_deep = (
        f"value nests deeper than {MAX_DEPTH} levels (its KEY's included); refusing to load it"
    )
    doc = _load(label, f"v: {text}", max_depth + 1, 3, too_deep)
    return doc["v"] if isinstance(doc, LDict) else None


def top_level_keys(path: str | Path) -> set[str]:
    """The keys of a YAML file's top-level mapping (empty when it is not a mapping).

    Reads the file with the same caps as ``load_yaml`` and parses only as deep as needed to
    skip nested values (no tag checks, no values built): used to find rule files by what
    they say, not by their name or a regular expression.
    """
    name = str(path)
    text = read_rule_text(name)
    yaml = _yaml()
    builder = _Builder(name, yaml, MAX_DEPTH)
    keys: set[str] = set()
    depth = 0
    expect_key = True  # inside the top mapping: whether its next child is a key
    try:
        for event in yaml.parse(io.StringIO(text)):
            if isinstance(event, CollectionStartEvent):
                if depth == 0 and not isinstance(event, MappingStartEvent):
                    return set()
                depth += 1
                if depth > MAX_DEPTH:
                    raise builder.fail(event, _TOO_DEEP)
            elif isinstance(event, MappingEndEvent | SequenceEndEvent):
                depth -= 1
                if depth == 1:  # a collection child of the top mapping is complete
                    expect_key = not expect_key
            elif isinstance(event, ScalarEvent | AliasEvent):
                if depth == 0:
                    return set()
                if depth == 1:
                    if expect_key and isinstance(event, ScalarEvent):
                        keys.add(event.value)
                    expect_key = not expect_key
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        pos = Position(name, mark.line + 1, mark.column + 1) if mark else Position(name)
        message = " ".join(str(m) for m in (exc.context, exc.problem) if m)
        raise RuleError([Problem(pos, f"invalid YAML: {message}")]) from None
    except YAMLError as exc:
        raise RuleError([Problem(Position(name), f"invalid YAML: {exc}")]) from None
    return keys


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
