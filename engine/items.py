"""Items: what a bundle hands a sink, each saying what it is.

An ``Item`` is one thing to deliver, of a ``kind``: an event, a user profile update, a cohort
membership change, ... The kinds are an open set of names, not a closed union of classes: a
sink declares the kinds it accepts (``Sink.accepts``), and ``moerules validate`` refuses a
bundle whose rules emit a kind its destination cannot take. The runtime (delivery loop,
replay, checkpoints, the run report) never looks at an item's kind to decide what to do; only
a sink's encoder does, to build the partner's wire format.

>>> item = Item(EVENT, "customer-1", "Purchased", {"total": 12.5}, {}, None, (3, 0), "purchase")
>>> item.kind, item.name
('event', 'Purchased')

The well-known kinds are below. A connector may use a kind of its own (a plain string such as
``"group"``); the rule language emits ``event`` and ``user`` today.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["COHORT_MEMBERSHIP", "EVENT", "KINDS", "USER", "Item"]

EVENT = "event"
"""Something a user did: ``name`` is the event name, ``attributes`` its properties."""

USER = "user"
"""A user profile update: ``attributes`` to set on the user ``identity``; ``name`` is empty."""

COHORT_MEMBERSHIP = "cohort_membership"
"""A user joining or leaving a cohort: ``name`` is the cohort, ``fields`` say how
(e.g. ``{"member": true}``); ``attributes`` stay empty unless the partner takes any."""

KINDS: dict[str, str] = {
    EVENT: "events",
    USER: "user profile updates",
    COHORT_MEMBERSHIP: "cohort membership changes",
}
"""The kinds this distribution knows, with what each means (docs and error messages)."""


@dataclass(slots=True)
class Item:
    """One thing on its way to a sink.

    ``identity`` is the user it concerns; ``name`` the event (or cohort) name, empty for a
    kind without one; ``attributes`` the properties to send; ``fields`` the destination-level
    fields a rule set (time, platform, ...: the sink's ``event_fields``); ``route`` the target
    the bundle's routing chose (MoEngage: a project code) or None for the destination's
    default. ``ref`` is (input line, index of the event in its record, -1 for the record
    itself): checkpoints acknowledge by it and dead letters point back with it. ``rule`` names
    the rule that made the item.
    """

    kind: str
    identity: str
    name: str
    attributes: dict[str, Any]
    fields: dict[str, Any]
    route: str | None
    ref: tuple[int, int]
    rule: str
