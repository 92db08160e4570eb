"""The run report: every item's outcome, counted by reason and by routing target.

The item counts are read from the run's ``Ledger`` (engine/runtime/ledger.py), where each
outcome is recorded once; the report adds what the run did on the wire (requests, statuses,
retries), routing, warnings and notes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from moerules.engine.items import EVENT, KINDS, USER
from moerules.engine.runtime.ledger import Ledger

__all__ = ["ReportPart", "RunReport"]


class ReportPart(Protocol):
    """A section a feed adds to the report (the cohorts of a cohort flow): under its name in
    the JSON, and as lines of the summary."""

    def to_dict(self) -> Any: ...

    def summary_lines(self) -> list[str]: ...


@dataclass
class RunReport:
    """Counts a run's items. Invariant: items_in == delivered + dropped + dead_lettered.

    An item is one event, one user-attribute update (an entry a bundle's ``user.drop`` counts
    is one too), or one input line that could not be read as a record (its events are
    unknown, so it counts once). Items the sink took whose outcome never came are "would
    deliver" in a dry run; in a real run they were read but not sent (a stop), and are left
    out: the rerun reads them again.
    """

    bundle: str = ""
    dry_run: bool = True
    ledger: Ledger = field(default_factory=Ledger, repr=False, compare=False)
    routing: Counter[str] = field(default_factory=Counter)
    fallback: Counter[str] = field(default_factory=Counter)
    unknown_projects: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    request_bytes: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    throttled: int = 0
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what a runner should know; not a problem
    interrupted: bool = False
    elapsed_seconds: float = 0.0
    # what the source's input units are, when they are not events (a cohort flow's words
    # about users), and sections a feed adds; both absent from the output when unused
    units: str = "events"
    parts: dict[str, ReportPart] = field(default_factory=dict, repr=False, compare=False)

    # -- counts, from the ledger ------------------------------------------------------------
    @property
    def lines_in(self) -> int:
        return self.ledger.lines

    @property
    def events_in(self) -> int:
        unsent = 0 if self.dry_run else self.ledger.open(from_event=True)
        return self.ledger.events_in - unsent

    @property
    def user_updates_in(self) -> int:
        unsent = 0 if self.dry_run else self.ledger.open(from_event=False)
        return self.ledger.user_updates_in - unsent

    @property
    def unreadable_lines(self) -> int:
        return self.ledger.unreadable

    @property
    def dropped(self) -> Counter[str]:
        return self.ledger.dropped

    @property
    def dead_lettered(self) -> Counter[str]:
        return self.ledger.dead

    def delivered_of(self, kind: str) -> int:
        """Items of ``kind`` delivered (in a dry run: that would be delivered)."""
        would = self.ledger.open(kind) if self.dry_run else 0
        return self.ledger.delivered[kind] + would

    @property
    def delivered_events(self) -> int:
        return self.delivered_of(EVENT)

    @property
    def delivered_user_updates(self) -> int:
        return self.delivered_of(USER)

    @property
    def other_kinds(self) -> dict[str, int]:
        """Delivered items of kinds other than events and user updates, by kind."""
        return {
            kind: self.delivered_of(kind)
            for kind in self.ledger.kinds()
            if kind not in (EVENT, USER)
        }

    @property
    def items_in(self) -> int:
        return self.events_in + self.user_updates_in + self.unreadable_lines

    @property
    def delivered(self) -> int:
        return self.delivered_events + self.delivered_user_updates + sum(self.other_kinds.values())

    def balanced(self) -> bool:
        return self.items_in == self.delivered + sum(self.dropped.values()) + sum(
            self.dead_lettered.values()
        )

    def to_dict(self) -> dict[str, Any]:
        extra: dict[str, Any] = {} if self.units == "events" else {"units": self.units}
        extra.update((name, part.to_dict()) for name, part in self.parts.items())
        return {
            "bundle": self.bundle,
            "dry_run": self.dry_run,
            "lines_in": self.lines_in,
            "items_in": self.items_in,
            "events_in": self.events_in,
            "user_updates_in": self.user_updates_in,
            "unreadable_lines": self.unreadable_lines,
            "delivered": self.delivered,
            "delivered_events": self.delivered_events,
            "delivered_user_updates": self.delivered_user_updates,
            **({"delivered_by_kind": self.other_kinds} if self.other_kinds else {}),
            "dropped": dict(sorted(self.dropped.items())),
            "dropped_total": sum(self.dropped.values()),
            "dead_lettered": dict(sorted(self.dead_lettered.items())),
            "dead_lettered_total": sum(self.dead_lettered.values()),
            "routing": dict(sorted(self.routing.items())),
            "routing_fallback": dict(sorted(self.fallback.items())),
            "unknown_projects": dict(self.unknown_projects.most_common()),
            "requests": self.requests,
            "request_bytes": self.request_bytes,
            "statuses": dict(sorted(self.statuses.items())),
            "retries": self.retries,
            "throttled": self.throttled,
            "warnings": list(self.warnings),
            "notes": list(self.notes),
            "interrupted": self.interrupted,
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "balanced": self.balanced(),
            **extra,
        }

    def summary(self) -> str:
        """The human summary printed to stderr."""
        verb = "would deliver" if self.dry_run else "delivered"
        if self.units == "events":
            read = f"{self.events_in} events, {self.user_updates_in} user updates"
            kinds = (
                f"{self.delivered_events} events, {self.delivered_user_updates} user "
                "updates" + "".join(f", {n} {kind}" for kind, n in self.other_kinds.items())
            )
        else:  # a source of other units (a cohort flow's words about users)
            read = f"{self.events_in} {self.units}"
            kinds = (
                ", ".join(f"{n} {KINDS.get(kind, kind)}" for kind, n in self.other_kinds.items())
                or "nothing"
            )
        lines = [
            f"moerules: {self.bundle}{' (dry run)' if self.dry_run else ''}",
            f"  read      {self.lines_in} lines: {read}, {self.unreadable_lines} unreadable",
            f"  {verb:<9} {self.delivered} ({kinds}) in {self.requests} requests",
            f"  dropped   {sum(self.dropped.values())}",
        ]
        lines += [f"    {n:>7}  {reason}" for reason, n in self.dropped.most_common()]
        lines.append(f"  dead-lettered {sum(self.dead_lettered.values())}")
        lines += [f"    {n:>7}  {reason}" for reason, n in self.dead_lettered.most_common()]
        if self.routing:
            lines.append("  routing")
            lines += [f"    {n:>7}  {target}" for target, n in self.routing.most_common()]
            lines += [
                f"    {n:>7}  portfolio level: {why}" for why, n in self.fallback.most_common()
            ]
        for part in self.parts.values():
            lines += part.summary_lines()
        if self.statuses:
            lines.append(
                "  responses "
                + ", ".join(f"{code}: {n}" for code, n in sorted(self.statuses.items()))
            )
            lines.append(f"  retries   {self.retries} ({self.throttled} after 429)")
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  warning: {w}" for w in self.warnings]
        if self.interrupted:
            lines.append("  interrupted: stopped before the end of the input")
        return "\n".join(lines)
