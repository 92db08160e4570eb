"""``moerules replay``: send the dead letters of delivery failures again, after a fix.

Replay is the run's delivery loop (engine/runtime/loop.py) with another feed: the lines of a
dead-letter file instead of input records. A delivery dead letter (``"stage": "delivery"``)
carries the mapped item; it is checked as strictly as a run makes items (engine/runtime/
deadletter.py ``replay_item``: a hand-edited ``null`` identity, an object where a string
belongs, a field that would override the event name are refused, each entry on its own),
re-encoded by the bundle's sink as it is configured *now* (a corrected key, endpoint or
project code) and sent with the same rate limits, verdicts and retries as a run. An entry
that does not hold is dead-lettered again with why; the good ones are still sent. Dead
letters of mapping failures (a cast that failed, no usable identity...) hold only part of
their input record: fix the input or the rules and run those lines again instead.

The file is rewritten at the end, atomically: re-sent entries leave it, entries that failed
again are replaced by their new dead letter, the rest stay as they were. A replay killed
midway leaves the file untouched, so the next replay may send some items a second time. A
file written in a dead-letter format this moerules does not read is refused before anything
is sent (``DeadLetterFormatError``).

>>> report = replay_file(load_bundle("mparticle-to-moengage"), Path("dead.jsonl"))  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import orjson
from moerules.engine.cohorts import CohortSource
from moerules.engine.compile.compiler import CompiledBundle
from moerules.engine.connector import Item, WireRequest
from moerules.engine.errors import SetupError
from moerules.engine.runtime.deadletter import (
    DEAD_LETTER_FORMAT,
    BadDeadLetter,
    DeadLetterWriter,
    dead_letter_format,
    replay_item,
)
from moerules.engine.runtime.input import LongLine
from moerules.engine.runtime.ledger import Ledger
from moerules.engine.runtime.loop import DeliveryLoop, DeliveryOptions, Input
from moerules.engine.runtime.pipeline import CANNOT_ENCODE
from moerules.engine.runtime.report import RunReport

__all__ = [
    "CANNOT_REPLAY",
    "DeadLetter",
    "ReplayRefused",
    "bundles_named",
    "read_dead_letters",
    "replay_file",
]

CANNOT_REPLAY = "dead letter cannot be replayed"


@dataclass(slots=True)
class DeadLetter:
    """One line of a dead-letter file: its number, the raw bytes, the entry when it is JSON."""

    line: int
    raw: bytes
    entry: dict[str, Any] | None

    @property
    def delivery(self) -> bool:
        """A delivery failure (holds a mapped item), which replay sends again."""
        return self.entry is not None and self.entry.get("stage") == "delivery"


def read_dead_letters(path: Path) -> list[DeadLetter]:
    """Every non-blank line of a dead-letter file; DeadLetterFormatError when a delivery
    dead letter is in a format this moerules does not read."""
    letters: list[DeadLetter] = []
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                entry = orjson.loads(raw)
            except orjson.JSONDecodeError:
                entry = None
            letter = DeadLetter(number, raw, entry if isinstance(entry, dict) else None)
            if letter.delivery and letter.entry is not None:
                dead_letter_format(letter.entry, f"{path}:{number}")
            letters.append(letter)
    return letters


def bundles_named(letters: list[DeadLetter]) -> set[str]:
    """The bundles whose delivery failures the file holds."""
    return {
        str(letter.entry.get("bundle"))
        for letter in letters
        if letter.delivery and letter.entry is not None
    }


class ReplayRefused(SetupError):
    """A bundle whose dead letters are not replayed (a cohort flow)."""


def replay_file(
    compiled: CompiledBundle,
    path: Path,
    *,
    options: DeliveryOptions | None = None,
    quiet: bool = False,
) -> RunReport:
    """Send the delivery dead letters in ``path`` again; rewrites ``path`` with what is left.

    A cohort flow's changes are not replayed (ReplayRefused): one sent out of its turn could
    undo a later change, and the membership state already holds every change MoEngage did not
    acknowledge; a rerun of the input with ``--from-start`` sends what is still different.
    """
    if isinstance(compiled.source, CohortSource):
        raise ReplayRefused(
            f"{compiled.model.bundle} does not replay dead letters: a cohort change sent out "
            "of its turn could undo a later one. The membership state keeps every change "
            "MoEngage has not acknowledged: run the bundle again over its input with "
            "--from-start, and only what MoEngage still lacks is sent"
        )
    read_dead_letters(path)  # refuse a format this moerules does not read, before any send
    return anyio.run(_Replay(compiled, path, options or DeliveryOptions(), quiet).run)


class _ReplayFeed:
    """Dead-letter lines in, requests out: the replay's side of the delivery loop."""

    def __init__(
        self, compiled: CompiledBundle, ledger: Ledger, dead: DeadLetterWriter, resolved: set[int]
    ) -> None:
        self.sink = compiled.sink
        self.encoder = compiled.sink.encoder()
        self.ledger = ledger
        self.dead = dead
        self.resolved = resolved  # dead-letter lines that reached an outcome
        self.routes = {code for _, code in compiled.projects}
        identity = compiled.model.identity
        self.refused_identities = frozenset(
            v.strip().casefold() for v in (identity.reject if identity else ())
        )
        self.line_of: dict[int, int] = {}  # id(item) -> its dead-letter line
        self.kept = 0  # lines left as they are: mapping failures, lines that are not JSON

    def feed(self, line_no: int, line: bytes | LongLine) -> list[WireRequest]:
        try:  # (its Input has no line limit: a LongLine never comes, and would be kept)
            entry = orjson.loads(line) if isinstance(line, bytes) else None
        except orjson.JSONDecodeError:
            entry = None
        if not isinstance(entry, dict) or entry.get("stage") != "delivery":
            self.kept += 1
            return []
        ledger = self.ledger
        ledger.lines += 1
        try:
            item = replay_item(entry, self.sink, self.routes, self.refused_identities)
        except BadDeadLetter as exc:
            ledger.unreadable_line(CANNOT_REPLAY)
            self._again(line_no, entry, CANNOT_REPLAY, str(exc))
            return []
        from_event = item.ref[1] >= 0
        if from_event:
            ledger.events_in += 1
        else:
            ledger.user_updates_in += 1
        try:
            requests = self.encoder.add(item)
        except (TypeError, ValueError) as exc:  # too large for the sink as configured now...
            reason = getattr(exc, "reason", CANNOT_ENCODE)
            ledger.dead_letter(reason)
            self._again(line_no, entry, reason, str(exc))
            return []
        self.line_of[id(item)] = line_no
        ledger.take(item.kind, from_event)
        return requests

    def _again(self, line_no: int, entry: dict[str, Any], reason: str, error: str) -> None:
        """Dead-letter an entry again, as it was, with the new reason."""
        self.dead.write(
            reason,
            record=entry.get("record"),
            error=error,
            line=entry.get("line"),
            rule=entry.get("rule"),
            event_index=entry.get("event_index"),
            stage="delivery",
            format=DEAD_LETTER_FORMAT,
            previous_reason=entry.get("reason"),
        )
        self.resolved.add(line_no)

    def finish(self) -> list[WireRequest]:
        return self.encoder.flush()

    def stopped(self) -> None:
        """Nothing to settle: what was not sent stays in the file."""


class _Replay(DeliveryLoop):
    def __init__(
        self, compiled: CompiledBundle, path: Path, options: DeliveryOptions, quiet: bool
    ) -> None:
        super().__init__(
            compiled, RunReport(bundle=compiled.model.bundle, dry_run=False), options, quiet
        )
        self.path = path
        self.new_path = path.with_name(path.name + ".replay")
        self.resolved: set[int] = set()
        self.feed: _ReplayFeed

    def _final(self, items: list[Item], delivered: int) -> None:
        line_of = self.feed.line_of
        self.resolved.update(line_of[id(item)] for item in items)

    async def run(self) -> RunReport:
        started = time.perf_counter()
        report = self.report
        dead = DeadLetterWriter(self.new_path, report.bundle, self.compiled.secrets)
        self.new_path.unlink(missing_ok=True)
        self.feed = _ReplayFeed(self.compiled, self.ledger, dead, self.resolved)
        self.input = Input(str(self.path), 0)
        try:
            await self.deliver_lines(self.feed, dead, total_bytes=self.path.stat().st_size)
        finally:
            self.input.close()
            dead.close()
            self._rewrite()
            report.elapsed_seconds = time.perf_counter() - started
        self._account()
        if self.feed.kept:
            report.warnings.append(
                f"{self.feed.kept} dead letters are mapping failures, not delivery failures: "
                f"they stay in {self.path}; fix the input or the rules and run those lines "
                "again"
            )
        return report

    def _rewrite(self) -> None:
        """Keep what was not re-sent, add what failed again; replace the file atomically."""
        fresh = self.new_path.read_bytes() if self.new_path.exists() else b""
        kept: list[bytes] = []
        with self.path.open("rb") as f:
            for number, raw in enumerate(f, 1):
                if number not in self.resolved and raw.strip():
                    kept.append(raw if raw.endswith(b"\n") else raw + b"\n")
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_bytes(b"".join(kept) + fresh)
        os.replace(tmp, self.path)
        self.new_path.unlink(missing_ok=True)
