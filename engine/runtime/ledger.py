"""The ledger: every item's outcome, recorded once; the run report reads its counts from it.

What comes in is counted by input unit: lines, the events of each record, each record's own
user update, lines that could not be read. Every unit ends in exactly one outcome:

::

    read ──► dropped (reason)                        a rule said so
         ──► dead-lettered (reason)                  mapping failed, or the sink refused it
         ──► taken by the sink (encoded) ──► delivered (by item kind)
                                         ──► dead-lettered (reason)   delivery failed
                                         ──► open                     still in flight

Each outcome is written here once, by whoever decided it (the pipeline, the sender, replay's
reader); nothing is counted early and taken back later. What ``open`` means at the end is
the report's business (``RunReport``): in a dry run the sink took the item and nothing is sent,
so it "would be delivered"; in a real run it was read but not sent (a stop), and the rerun
reads it again, so it is not this run's.

>>> ledger = Ledger()
>>> ledger.events_in += 2
>>> ledger.take(EVENT, True, 2)                                  # doctest: +SKIP
>>> ledger.settle([sent], None)                                   # doctest: +SKIP
>>> ledger.settle([failed], "retries exhausted: HTTP 503")        # doctest: +SKIP
>>> ledger.open()                                                 # doctest: +SKIP
0
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from moerules.engine.items import Item

__all__ = ["Ledger"]


class Ledger:
    """Counts of what came in and of each outcome. ``from_event`` tells where an item came
    from: an input event (True), or a record's own user update (False); a stopped run takes
    its open items back from the matching input count."""

    __slots__ = (
        "dead",
        "delivered",
        "dropped",
        "events_in",
        "lines",
        "settled",
        "taken",
        "unreadable",
        "user_updates_in",
    )

    def __init__(self) -> None:
        self.lines = 0  # non-blank input lines
        self.events_in = 0  # events of the records read
        self.user_updates_in = 0  # records' own user updates (the bundle's ``user`` section)
        self.unreadable = 0  # lines that were not a record (dead-lettered whole)
        self.dropped: Counter[str] = Counter()  # reason -> units a rule dropped
        self.dead: Counter[str] = Counter()  # reason -> dead letters
        self.delivered: Counter[str] = Counter()  # item kind -> items delivered
        self.taken: Counter[tuple[str, bool]] = Counter()  # (kind, from_event) -> encoded
        self.settled: Counter[tuple[str, bool]] = Counter()  # of those, reached an outcome

    # -- outcomes --------------------------------------------------------------------------
    def drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] += count

    def dead_letter(self, reason: str) -> None:
        """A unit that never reached the sink was dead-lettered."""
        self.dead[reason] += 1

    def unreadable_line(self, reason: str) -> None:
        self.unreadable += 1
        self.dead[reason] += 1

    def take(self, kind: str, from_event: bool, count: int = 1) -> None:
        """The sink took ``count`` items of ``kind``: their outcome comes with ``settle``."""
        self.taken[kind, from_event] += count

    def settle(self, items: Iterable[Item], dead_reason: str | None) -> None:
        """Taken items reached their outcome: delivered, or dead-lettered with the reason."""
        settled, delivered, dead = self.settled, self.delivered, self.dead
        for item in items:
            settled[item.kind, item.ref[1] >= 0] += 1
            if dead_reason is None:
                delivered[item.kind] += 1
            else:
                dead[dead_reason] += 1

    # -- what is still open ----------------------------------------------------------------
    def open(self, kind: str | None = None, from_event: bool | None = None) -> int:
        """Items taken whose outcome has not come (filtered by kind and/or origin)."""
        return sum(
            n - self.settled[key]
            for key, n in self.taken.items()
            if (kind is None or key[0] == kind) and (from_event is None or key[1] == from_event)
        )

    def kinds(self) -> list[str]:
        """Every item kind the sink took or delivered, sorted."""
        return sorted({kind for kind, _ in self.taken} | set(self.delivered))
