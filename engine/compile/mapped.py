"""What a compiled bundle's functions return: typed records, read by name.

The generated ``event`` function returns a ``MappedEvent`` for every event it is given: the
index of the rule that matched (or ``NO_RULE``), and for an event or user-update rule what it
made. ``identity`` returns the ``ChosenIdentity``. Both are ``msgspec`` structs: built in C,
about as cheap as the tuples they replace, and their fields are slots.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "NO_RULE",
    "ROUTE_BLANK",
    "ROUTE_MISSING",
    "ROUTE_NONE",
    "ROUTE_UNKNOWN",
    "ChosenIdentity",
    "MappedEvent",
]

NO_RULE = -1
"""``MappedEvent.rule`` when no rule matched the event."""

# ``MappedEvent.route`` is a project's index (>= 0) or one of these
ROUTE_MISSING, ROUTE_BLANK, ROUTE_UNKNOWN, ROUTE_NONE = -1, -2, -3, -4
"""Portfolio level because the project name was missing, blank or unknown; or not routed (no
projects declared, a user update, a drop)."""


class MappedEvent(msgspec.Struct, frozen=True, gc=False):
    """What the rules made of one event.

    ``rule`` indexes the bundle's rules (``NO_RULE``: none matched). A drop rule's record has
    nothing else; an event rule's has the event's ``name``, ``attributes`` and destination
    ``fields``, and where it routes: ``route`` (a project's index or a ``ROUTE_*`` code) and
    ``route_value`` (what the routing field held); a user-update rule's has ``attributes``.
    """

    rule: int
    name: str | None = None
    attributes: dict[str, Any] = {}  # (msgspec gives each record its own)
    fields: dict[str, Any] | None = None
    route: int = ROUTE_NONE
    route_value: Any = None


class ChosenIdentity(msgspec.Struct, frozen=True, gc=False):
    """The identity a record goes out under: the first usable candidate's ``value`` (trimmed)
    and that ``candidate``'s name; both None when no candidate was usable."""

    value: str | None = None
    candidate: str | None = None
