"""The dead-letter file: JSON Lines, one record a line, with why it could not be delivered.

Two stages write dead letters. Mapping failures (a line that is not JSON, an event no
identity fits, a cast that failed, an item too large for the destination) carry the input
record as it was read: fix the input or the rules and run those lines again. Delivery
failures (``"stage": "delivery"``) carry the mapped item, in a format this module defines and
``moerules replay`` reads back: ``{"kind", "identity", "name"?, "attributes", "fields"?,
"project"?}`` (``project`` is the routing target the bundle chose). Those entries carry
``"format": 1``; an entry without it was written before formats were numbered and has the
same shape. A file from a newer moerules (``"format": 2``...) is refused as a whole with a
clear message, and replay checks every item it reads as strictly as a run makes them
(``replay_item``): a hand-edited entry that does not hold is dead-lettered again with why.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import IO, Any

import orjson
from moerules.engine.connector import EVENT, Item, Sink
from moerules.engine.errors import MoerulesError
from moerules.engine.secrets import scrubber

__all__ = [
    "DEAD_LETTER_FORMAT",
    "BadDeadLetter",
    "DeadLetterFormatError",
    "DeadLetterWriter",
    "dead_letter_format",
    "item_record",
    "replay_item",
]

DEAD_LETTER_FORMAT = 1


class DeadLetterFormatError(MoerulesError):
    """A dead-letter file written in a format this moerules does not read."""


class BadDeadLetter(ValueError):
    """A delivery dead letter whose item does not hold; ``str()`` says why."""


def item_record(item: Item) -> dict[str, Any]:
    """The mapped item as a delivery dead letter holds it; ``replay_item`` reads it back."""
    record: dict[str, Any] = {"kind": item.kind, "identity": item.identity}
    if item.name:
        record["name"] = item.name
    record["attributes"] = item.attributes
    if item.fields:
        record["fields"] = item.fields
    if item.route is not None:
        record["project"] = item.route
    return record


def dead_letter_format(entry: dict[str, Any], where: str) -> int:
    """The format of a delivery dead letter; DeadLetterFormatError when it is not one read
    here (``where`` names the file and line for the message)."""
    version = entry.get("format", DEAD_LETTER_FORMAT)
    if type(version) is not int or version < 1:
        raise DeadLetterFormatError(
            f"{where}: unknown dead-letter format {version!r}; this "
            f"moerules reads format {DEAD_LETTER_FORMAT}"
        )
    if version > DEAD_LETTER_FORMAT:
        raise DeadLetterFormatError(
            f"{where}: dead-letter format {version} was written by a newer moerules; this one "
            f"reads format {DEAD_LETTER_FORMAT}: replay the file with the moerules that wrote it"
        )
    return version


def replay_item(
    entry: dict[str, Any],
    sink: Sink,
    routes: Collection[str],
    refused_identities: Collection[str] = (),
) -> Item:
    """The item of a delivery dead letter, checked as strictly as a run makes items: the
    kind ``sink`` accepts, a string identity as the bundle's identity rules give one (trimmed,
    not empty, not one of ``refused_identities``, compared casefolded), a string name (events:
    not empty), object attributes, fields the sink knows, a route among ``routes``.

    Raises BadDeadLetter saying what does not hold.
    """
    record = entry.get("record")
    if not isinstance(record, dict):
        raise BadDeadLetter("`record` is not an object")
    kind = record.get("kind")
    if not isinstance(kind, str) or kind not in sink.accepts:
        raise BadDeadLetter(
            f"`kind` {kind!r} is not one destination {sink.name!r} takes "
            f"({', '.join(sorted(sink.accepts))})"
        )
    identity = record.get("identity")
    if not isinstance(identity, str) or not identity.strip():
        raise BadDeadLetter(f"`identity` must be a non-empty string, not {_shown(identity)}")
    if identity != identity.strip() or identity.casefold() in refused_identities:
        raise BadDeadLetter(
            f"`identity` {_shown(identity)} is not one the bundle's identity rules accept"
        )
    name = record.get("name", "")
    if not isinstance(name, str):
        raise BadDeadLetter(f"`name` must be a string, not {_shown(name)}")
    if kind == EVENT and not name:
        raise BadDeadLetter("an event needs a non-empty `name`")
    attributes = record.get("attributes")
    if not isinstance(attributes, dict):
        raise BadDeadLetter(f"`attributes` must be an object, not {_shown(attributes)}")
    fields = record.get("fields", {})
    if not isinstance(fields, dict):
        raise BadDeadLetter(f"`fields` must be an object, not {_shown(fields)}")
    unknown = sorted(k for k in fields if k not in sink.event_fields)
    if unknown:
        raise BadDeadLetter(
            f"`fields` has {', '.join(map(repr, unknown))}, which destination "
            f"{sink.name!r} does not take as a field (it takes: "
            f"{', '.join(sink.event_fields) or 'none'})"
        )
    route = record.get("project")
    if route is not None and (not isinstance(route, str) or route not in routes):
        raise BadDeadLetter(
            f"`project` {_shown(route)} is not a project code of the bundle's routing"
        )
    line, index, rule = entry.get("line"), entry.get("event_index"), entry.get("rule")
    if type(line) is not int or line < 0:
        raise BadDeadLetter(f"`line` must be a line number, not {_shown(line)}")
    if index is not None and (type(index) is not int or index < 0):
        raise BadDeadLetter(f"`event_index` must be an index or null, not {_shown(index)}")
    if rule is not None and not isinstance(rule, str):
        raise BadDeadLetter(f"`rule` must be a string or null, not {_shown(rule)}")
    return Item(
        kind,
        identity,
        name,
        attributes,
        fields,
        route,
        (line, -1 if index is None else index),
        rule or "",
    )


def _shown(value: Any) -> str:
    """A value as JSON (as it stands in the file), shortened."""
    text = orjson.dumps(value, default=str).decode()
    return text if len(text) <= 60 else text[:57] + "..."


class DeadLetterWriter:
    """Appends dead letters; the file is created only when the first one arrives.

    Each line holds ``record`` (the input, or the raw line when it was not JSON), ``reason``,
    ``error``, ``line``, ``bundle``, ``rule`` and, for delivery failures, ``status``,
    ``response`` (an excerpt) and ``attempts``. Secret values are scrubbed before writing.
    """

    def __init__(self, path: Path | None, bundle: str, secrets: frozenset[str] = frozenset()):
        self.path = path
        self.bundle = bundle
        self.secrets = secrets
        self.scrub = scrubber(secrets)  # every derived form (Basic tokens, URL-encoded...)
        self.count = 0
        self._file: IO[bytes] | None = None

    def write(
        self,
        reason: str,
        *,
        record: Any = None,
        raw: bytes | None = None,
        error: str = "",
        line: int | None = None,
        rule: str | None = None,
        **extra: Any,
    ) -> None:
        self.count += 1
        if self.path is None:
            return
        entry: dict[str, Any] = {
            "reason": reason,
            "error": error,
            "line": line,
            "bundle": self.bundle,
            "rule": rule,
        }
        if record is not None:
            entry["record"] = record
        elif raw is not None:
            entry["raw"] = raw.decode("utf-8", "replace")
        entry.update(extra)
        try:
            data = orjson.dumps(entry, default=str)
        except TypeError:  # an integer beyond 64 bits (orjson refuses): the stdlib writes it
            data = json.dumps(
                entry, default=str, ensure_ascii=False, separators=(",", ":")
            ).encode()
        data = self.scrub.bytes(data)
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("ab")
        self._file.write(data + b"\n")

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
