"""What a source's records can hold: a JSON Schema, asked which paths can exist.

A source declares the shape of the record its ``decode`` returns as a JSON Schema
(``Source.record_schema``); ``moerules validate`` uses it to warn about a rule path that no
record can ever contain. This module reads the schema as a set of *nodes* (sub-schemas) and
follows a path through them: ``child`` for a field, ``items`` for a list's elements, ``values``
for an object's entries. Alternatives (``oneOf``, ``anyOf``, a ``type`` list) are followed all
at once, so ``event.data.product_action`` is looked up in the data of every event type.

Closed or open: an object whose schema lists ``properties`` is taken to have just those
(unless ``additionalProperties`` says what else it may hold), even where the JSON Schema
leaves extra keys allowed: for catching a typo, "not among the documented fields" is the
useful reading. An object that lists no properties (``custom_attributes``) may hold any key,
and nothing under such a key is checked.

>>> shape = RecordShape({"properties": {"mpid": {"type": "integer"}}}, None)
>>> shape.child([shape.batch], "mpd")
[]
>>> shape.names([shape.batch])
['mpid']
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["ANY", "RecordShape"]

Node = Mapping[str, Any]
ANY: Node = {}  # anything at all: a schema that says nothing (its identity marks it)


class RecordShape:
    """A record schema with the rule scope on top: ``batch`` (the record) and ``event``
    (one element of ``events_key``)."""

    def __init__(
        self, schema: Mapping[str, Any], events_key: str | None, title: str = "record"
    ) -> None:
        self.schema = schema
        self.title = title
        self._definitions = schema.get("definitions", schema.get("$defs", {}))
        self.batch: Node = schema
        event: list[Node] = []
        if events_key is not None:
            event = self.items(self.child([schema], events_key))
        self.event: Node = {"anyOf": event} if event else ANY
        self.scope: Node = {"properties": {"batch": self.batch, "event": self.event}}

    # -- reading the schema ------------------------------------------------------------------
    def resolve(self, node: Node) -> Node:
        """Follow ``$ref`` (local ``#/definitions/...`` or ``#/$defs/...``)."""
        seen = 0
        while "$ref" in node and seen < 32:
            ref = str(node["$ref"])
            name = ref.rsplit("/", 1)[-1]
            target = self._definitions.get(name) if ref.startswith("#/") else None
            if target is None:
                return ANY
            node = target
            seen += 1
        return node

    def alternatives(self, nodes: Iterable[Node]) -> list[Node]:
        """The nodes with every ``oneOf``/``anyOf`` opened and ``allOf`` merged."""
        out: list[Node] = []
        stack = list(nodes)
        while stack:
            node = self.resolve(stack.pop(0))
            if node is ANY:
                out.append(ANY)
                continue
            choices = node.get("oneOf") or node.get("anyOf")
            if choices:
                stack[:0] = list(choices)
                continue
            if "allOf" in node:
                node = self._merge([self.resolve(n) for n in node["allOf"]])
            out.append(node)
        return out

    def _merge(self, parts: list[Node]) -> Node:
        """``allOf``: an object with every part's properties."""
        properties: dict[str, Any] = {}
        extra: Any = False
        types: set[str] = set()
        for part in self.alternatives(parts):
            if part is ANY:
                return ANY
            properties.update(part.get("properties", {}))
            more = part.get("additionalProperties")
            if isinstance(more, dict) or more is True:
                extra = more
            if (
                "properties" not in part
                and "additionalProperties" not in part
                and not (part.get("type"))
            ):
                extra = True  # a part that says nothing allows anything
            types |= set(_types(part))
        merged: dict[str, Any] = {"properties": properties, "additionalProperties": extra}
        if types:
            merged["type"] = sorted(types)
        return merged

    # -- following a path --------------------------------------------------------------------
    def child(self, nodes: Iterable[Node], key: str) -> list[Node]:
        """What field ``key`` of an object can be; [] when no alternative has it."""
        out: list[Node] = []
        for node in self.alternatives(nodes):
            if node is ANY:
                out.append(ANY)
                continue
            if not _may_be(node, "object"):
                continue
            properties = node.get("properties")
            more = node.get("additionalProperties")
            if properties is not None and key in properties:
                out.append(properties[key])
            elif isinstance(more, dict):
                out.append(more if more else ANY)
            elif more is True or (properties is None and more is None):
                out.append(ANY)
        return out

    def items(self, nodes: Iterable[Node]) -> list[Node]:
        """What the elements of a list can be."""
        out: list[Node] = []
        for node in self.alternatives(nodes):
            if node is ANY:
                out.append(ANY)
            elif _may_be(node, "array"):
                items = node.get("items")
                out.append(items if isinstance(items, dict) and items else ANY)
        return out

    def values(self, nodes: Iterable[Node]) -> list[Node]:
        """What the entries of an object can be (``*``, a spread's entries)."""
        out: list[Node] = []
        for node in self.alternatives(nodes):
            if node is ANY:
                out.append(ANY)
                continue
            if not _may_be(node, "object"):
                continue
            out += list(node.get("properties", {}).values())
            more = node.get("additionalProperties")
            if isinstance(more, dict):
                out.append(more if more else ANY)
            elif more is True or (more is None and "properties" not in node):
                out.append(ANY)
        return out

    def names(self, nodes: Iterable[Node]) -> list[str]:
        """The documented field names of the objects among ``nodes`` (for did-you-mean)."""
        found: dict[str, None] = {}
        for node in self.alternatives(nodes):
            if node is not ANY:
                found.update(dict.fromkeys(node.get("properties", {})))
        return sorted(found)

    def describe(self, nodes: Iterable[Node]) -> str:
        """What the nodes are, in a word or two: "a string", "a list", "a number or null"."""
        kinds: list[str] = []
        for node in self.alternatives(nodes):
            for kind in _types(node) or (["object"] if "properties" in node else []):
                word = _WORDS.get(kind, kind)
                if word not in kinds:
                    kinds.append(word)
        return " or ".join(kinds) if kinds else "not an object"

    @staticmethod
    def unknown(nodes: Iterable[Node]) -> bool:
        """True when anything at all may be here (nothing under it can be checked)."""
        return any(node is ANY for node in nodes)


_WORDS = {
    "string": "a string",
    "integer": "a number",
    "number": "a number",
    "boolean": "a boolean",
    "null": "null",
    "array": "a list",
    "object": "an object",
}


def _types(node: Node) -> list[str]:
    kind = node.get("type")
    if isinstance(kind, str):
        return [kind]
    if isinstance(kind, list):
        return [str(k) for k in kind]
    if "enum" in node:
        return sorted({_json_type(v) for v in node["enum"]})
    return []


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return (
        "string" if isinstance(value, str) else "array" if isinstance(value, list) else ("object")
    )


def _may_be(node: Node, kind: str) -> bool:
    """Whether a node may be of JSON type ``kind`` (an untyped node may be anything)."""
    types = _types(node)
    if not types:
        if kind == "object":
            return "items" not in node
        if kind == "array":
            return "properties" not in node and "additionalProperties" not in node
        return True
    return kind in types or (kind == "number" and "integer" in types)
