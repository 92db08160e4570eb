"""``moerules replay``: send the dead letters of delivery failures again, after a fix.

A delivery dead letter (``"stage": "delivery"``) carries the mapped item, so it is re-encoded by
the bundle's sink as it is configured *now* (a corrected key, endpoint or project code) and sent
with the same rate limits and retries as a run, without mapping the input again. Dead letters
of mapping failures (a cast that failed, no usable identity...) hold only part of their input
record: fix the input or the rules and run those lines again instead.

The file is rewritten at the end, atomically: re-sent entries leave it, entries that failed
again are replaced by their new dead letter, the rest stay as they were. A replay killed
midway leaves the file untouched, so the next replay may send some items a second time.

>>> report = replay_file(load_bundle("mparticle-to-moengage"), Path("dead.jsonl"))  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
from anyio.streams.memory import MemoryObjectSendStream
from moerules.engine.compile.compiler import CompiledBundle
from moerules.engine.connector import EVENT, Item, WireRequest
from moerules.engine.runtime.deadletter import DeadLetterWriter
from moerules.engine.runtime.delivery import (
    DeliveryOptions,
    RunControl,
    Sender,
    item_from_record,
    pump,
)
from moerules.engine.runtime.progress import ProgressDisplay, Snapshot
from moerules.engine.runtime.ratelimit import RateLimiter
from moerules.engine.runtime.report import RunReport

__all__ = ["DeadLetter", "bundles_named", "read_dead_letters", "replay_file"]

@dataclass(slots=True)
class DeadLetter:
    """One line of a dead-letter file: the raw bytes, and the item when it can be re-sent."""

    raw: bytes
    entry: dict[str, Any] | None
    item: Item | None = None


def read_dead_letters(path: Path) -> list[DeadLetter]:
    letters: list[DeadLetter] = []
    with path.open("rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            try:
                entry = orjson.loads(raw)
            except orjson.JSONDecodeError:
                entry = None
            if not isinstance(entry, dict):
                letters.append(DeadLetter(raw, None))
                continue
            letters.append(DeadLetter(raw, entry, _item(entry)))
    return letters


def _item(entry: dict[str, Any]) -> Item | None:
    record = entry.get("record")
    if entry.get("stage") != "delivery" or not isinstance(record, dict):
        return None
    try:
        return item_from_record(record, int(entry.get("line") or 0), entry.get("event_index"),
                                entry.get("rule"))
    except (KeyError, TypeError, ValueError):
        return None


def bundles_named(letters: list[DeadLetter]) -> set[str]:
    """The bundles whose delivery failures the file holds."""
    return {str(letter.entry.get("bundle")) for letter in letters
            if letter.item is not None and letter.entry is not None}


def replay_file(compiled: CompiledBundle, path: Path, *, options: DeliveryOptions | None = None,
                quiet: bool = False) -> RunReport:
    """Send the delivery dead letters in ``path`` again; rewrites ``path`` with what is left."""
    return anyio.run(_Replay(compiled, path, options or DeliveryOptions(), quiet).run)


class _Replay:
    def __init__(self, compiled: CompiledBundle, path: Path, options: DeliveryOptions,
                 quiet: bool) -> None:
        self.compiled = compiled
        self.path = path
        self.options = options
        self.quiet = quiet
        self.report = RunReport(bundle=compiled.model.bundle, dry_run=False)
        self.letters = read_dead_letters(path)
        self.index = {id(letter.item): n for n, letter in enumerate(self.letters)
                      if letter.item is not None}
        self.resolved: set[int] = set()
        self.delivered = 0
        self.counted: list[Item] = []
        self.new_path = path.with_name(path.name + ".replay")
        self.control: RunControl

    def _final(self, items: list[Item], delivered: int) -> None:
        self.delivered += delivered
        self.resolved.update(self.index[id(item)] for item in items)

    def _snapshot(self) -> Snapshot:
        report = self.report
        return Snapshot(len(self.counted), 0, self.delivered, sum(report.dead_lettered.values()),
                        report.retries, report.throttled)

    async def _produce(self, stream: MemoryObjectSendStream[WireRequest]) -> None:
        encoder = self.compiled.sink.encoder()
        report = self.report
        for letter in self.letters:
            if self.control.stopping:
                break
            item = letter.item
            if item is None:
                continue
            self.counted.append(item)
            report.lines_in += 1
            if item.kind == EVENT:
                report.events_in += 1
                report.delivered_events += 1
            else:
                report.user_updates_in += 1
                report.delivered_user_updates += 1
            for request in encoder.add(item):
                await stream.send(request)
        if not self.control.aborted:
            for request in encoder.flush():
                await stream.send(request)

    async def run(self) -> RunReport:
        started = time.perf_counter()
        report, options = self.report, self.options
        self.control = RunControl()
        dead = DeadLetterWriter(self.new_path, report.bundle, self.compiled.secrets)
        self.new_path.unlink(missing_ok=True)
        progress = ProgressDisplay(self._snapshot, quiet=self.quiet,
                                   interval=options.progress_interval)
        try:
            async with httpx.AsyncClient(timeout=options.request_timeout) as client:
                sender = Sender(self.compiled.sink, client,
                                RateLimiter(self.compiled.sink.rate_limits()),
                                options.retry_policy(), report, dead, self.control,
                                on_final=self._final, request_timeout=options.request_timeout)
                await pump(self._produce, sender, options, self.control, report,
                           progress=progress)
        finally:
            dead.close()
            self._rewrite()
            report.elapsed_seconds = time.perf_counter() - started
        self._settle()
        return report

    def _settle(self) -> None:
        report = self.report
        report.interrupted = self.control.stopping
        if self.control.reason:
            report.warnings.append(self.control.reason)
        for item in self.counted:
            if self.index[id(item)] in self.resolved:
                continue
            # counted when encoded but never sent (stopped): it stays in the file
            if item.kind == EVENT:
                report.events_in -= 1
                report.delivered_events -= 1
            else:
                report.user_updates_in -= 1
                report.delivered_user_updates -= 1
        kept = sum(1 for letter in self.letters if letter.item is None)
        if kept:
            report.warnings.append(
                f"{kept} dead letters are mapping failures, not delivery failures: they stay in "
                f"{self.path}; fix the input or the rules and run those lines again")

    def _rewrite(self) -> None:
        """Keep what was not re-sent, add what failed again; replace the file atomically."""
        fresh = self.new_path.read_bytes() if self.new_path.exists() else b""
        kept = b"".join(letter.raw if letter.raw.endswith(b"\n") else letter.raw + b"\n"
                        for n, letter in enumerate(self.letters) if n not in self.resolved)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_bytes(kept + fresh)
        os.replace(tmp, self.path)
        self.new_path.unlink(missing_ok=True)
