"""Real delivery: ``moerules run`` without ``--dry-run``, resumable after a crash.

The run is the delivery loop (engine/runtime/loop.py: reader, Pipeline, senders, verdicts,
ledger) plus checkpoints::

    input ──► Pipeline ──► _TrackingEncoder ──► senders ──► partner API
                               │                   │
                               └──► AckTracker ◄───┘ acknowledgements
                                        │
                           state.sqlite (acknowledgements, group-committed)

The reader maps one line at a time and blocks when the stream is full, so memory stays flat
on any input size. Every item ends delivered, dropped or dead-lettered; the checkpoint records
which, so a rerun after a crash (even ``kill -9``) skips what is done. SIGINT/SIGTERM stop
reading, drain what was read (within ``drain_timeout``), checkpoint and report; a second signal
stops at once.

>>> report = deliver(load_bundle("mparticle-to-moengage"), "input.jsonl")  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from moerules.engine.compile.compiler import CompiledBundle
from moerules.engine.connector import Item, Refused, Sink, SinkEncoder, WireRequest
from moerules.engine.runtime.cohorts import feed_for
from moerules.engine.runtime.deadletter import DeadLetterWriter, item_record
from moerules.engine.runtime.input import is_regular
from moerules.engine.runtime.ledger import Ledger
from moerules.engine.runtime.loop import DeliveryLoop, DeliveryOptions, Input, pump
from moerules.engine.runtime.ratelimit import Limiter
from moerules.engine.runtime.report import RunReport
from moerules.engine.runtime.sender import RunControl, Sender
from moerules.engine.runtime.state import AckTracker, Checkpoint, CheckpointStore

__all__ = [
    "DEFAULT_STATE_DIR",
    "DeliveryOptions",
    "RunControl",
    "Sender",
    "deliver",
    "item_record",
    "pump",
]

DEFAULT_STATE_DIR = Path(".moerules")
DEAD_LETTER_FILE = "dead-letter.jsonl"
STATE_FILE = "state.sqlite"


class _TrackingEncoder(SinkEncoder):
    """The sink's encoder, telling the tracker of each item; skips items acknowledged before."""

    def __init__(
        self, inner: SinkEncoder, tracker: AckTracker, acked: set[tuple[int, int]], ledger: Ledger
    ) -> None:
        self.inner = inner
        self.tracker = tracker
        self.acked = acked
        self.ledger = ledger
        self.skipped = 0

    def _acked_before(self, item: Item) -> bool:
        """Acknowledged before a restart: not sent again; its outcome was "delivered"."""
        if item.ref in self.acked:
            self.acked.discard(item.ref)
            self.skipped += 1
            self.ledger.settle((item,), None)
            return True
        return False

    def add(self, item: Item) -> list[WireRequest]:
        if self.acked and self._acked_before(item):
            return []
        requests = self.inner.add(item)  # raises for an item it cannot encode: not tracked
        self.tracker.add(item)
        return requests

    def add_all(self, items: Sequence[Item]) -> tuple[list[WireRequest], list[Refused]]:
        if self.acked:
            items = [item for item in items if not self._acked_before(item)]
            if not items:
                return [], []
        requests, failed = self.inner.add_all(items)
        refused = {id(r.item) for r in failed}  # dead-lettered by the pipeline instead
        add = self.tracker.add
        for item in items:
            if not refused or id(item) not in refused:
                add(item)
        return requests, failed

    def flush(self) -> list[WireRequest]:
        return self.inner.flush()

    def until_next(self, now: float | None = None) -> float | None:
        return self.inner.until_next(now)


class _ResumedDeadLetters(DeadLetterWriter):
    """Counts but does not write again the mapping dead letters of lines mapped before."""

    def __init__(
        self, path: Path | None, bundle: str, secrets: frozenset[str], written_through: int
    ) -> None:
        super().__init__(path, bundle, secrets)
        self.written_through = written_through

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
        if extra.get("stage") != "delivery" and line is not None and line <= self.written_through:
            self.count += 1
            return
        super().write(reason, record=record, raw=raw, error=error, line=line, rule=rule, **extra)


class _DeliveryRun(DeliveryLoop):
    """One ``moerules run`` without ``--dry-run``."""

    def __init__(
        self,
        compiled: CompiledBundle,
        source: str,
        dead_letter: Path,
        state_dir: Path,
        from_start: bool,
        quiet: bool,
        options: DeliveryOptions,
    ) -> None:
        super().__init__(
            compiled, RunReport(bundle=compiled.model.bundle, dry_run=False), options, quiet
        )
        self.source = source
        self.dead_path = dead_letter
        self.state_dir = state_dir
        self.from_start = from_start
        self.bundle = compiled.model.bundle
        self.store: CheckpointStore | None = None
        self.run_id = 0
        self.saved_line = -1
        self.acked: list[tuple[int, int]] = []  # acknowledged, not yet committed
        self.tracker = AckTracker()
        self.closing: Callable[[], None] | None = None
        # made in run(): anyio objects need the event loop, the rest needs the checkpoint
        self.wake: anyio.Event
        self.dead: DeadLetterWriter

    # -- checkpoints -----------------------------------------------------------------------
    def _open_state(self) -> Checkpoint | None:
        """The checkpoint to resume from; None when the input is already complete."""
        report = self.report
        if self.source == "-":
            report.notes.append("input is stdin: no checkpoint is kept, a rerun cannot resume")
            return Checkpoint()
        if not is_regular(self.source):
            report.notes.append(
                f"input {self.source} is a pipe or a device, not a file: no "
                "checkpoint is kept, a rerun cannot resume"
            )
            return Checkpoint()
        # the checkpoint applies only to the input it was made from (a prefix hash says)
        self.store = CheckpointStore(self.state_dir / STATE_FILE)
        resumed = self.store.resume(
            self.bundle,
            Path(self.source).resolve(),
            from_start=self.from_start,
            shown_as=self.source,
        )
        self.run_id = resumed.run
        report.notes += resumed.notes
        report.warnings += resumed.warnings
        return resumed.checkpoint

    def _final(self, items: list[Item], delivered: int) -> None:
        self.tracker.resolve(items, delivered)
        if self.store is not None:
            self.acked.extend(item.ref for item in items)
            self.wake.set()

    def _next_commit(self) -> Callable[[], None]:
        """The next commit, taken on the event loop where the tracker lives."""
        assert self.store is not None
        self.dead.flush()  # dead letters reach the file before the checkpoint says "done"
        refs, self.acked = self.acked, []
        line, offset = self.tracker.watermark
        prune = line > self.saved_line
        self.saved_line = line
        return partial(
            self.store.save,
            self.run_id,
            refs,
            line,
            offset,
            self.tracker.fed_line,
            prune=prune,
            fed_offset=self.tracker.fed_offset,
        )

    async def _checkpoints(self) -> None:
        """Group commit: one transaction for whatever was acknowledged since the last one.

        Commits run in a worker thread (a WAL checkpoint may fsync) so the senders' pace does
        not stutter; one task, so they land in order.
        """
        if self.store is None:
            return
        while True:
            with anyio.move_on_after(self.options.checkpoint_interval):
                await self.wake.wait()
            self.wake = anyio.Event()
            if self.acked or self.tracker.watermark[0] != self.saved_line:
                await anyio.to_thread.run_sync(self._next_commit())

    def _line_started(self, offset: int) -> None:
        self.tracker.begin_line(offset)

    def _line_done(self, line_no: int, end_offset: int) -> None:
        self.tracker.end_line(line_no, end_offset)

    # -- the run ---------------------------------------------------------------------------
    async def run(self) -> RunReport:
        started = time.perf_counter()
        report = self.report
        saved = self._open_state()
        self.dead = _ResumedDeadLetters(
            self.dead_path, self.bundle, self.compiled.secrets, saved.fed if saved else 0
        )
        try:
            if saved is None:
                return report
            self.tracker = AckTracker(saved.line, saved.offset)
            self.input = Input(self.source, saved.offset, self.options.max_line_bytes)
            self.wake = anyio.Event()
            pipeline = feed_for(self.compiled, report, self.dead, dry_run=False)
            # items recomputed from stored state (a cohort flow) are never skipped by position
            acked = set() if getattr(pipeline, "reconciles", False) else set(saved.acked)
            encoder = _TrackingEncoder(pipeline.encoder, self.tracker, acked, self.ledger)
            pipeline.encoder = encoder
            self.closing = getattr(pipeline, "close", None)  # a cohort flow's state
            await self.deliver_lines(
                pipeline,
                self.dead,
                first_line=self.tracker.fed_line,
                total_bytes=self._size(),
                background=self._checkpoints,
            )
            self._settle(encoder.skipped)
        finally:
            report.elapsed_seconds = time.perf_counter() - started
            if self.input is not None:
                self.input.close()
            self.dead.close()
            if self.store is not None:
                self.store.close()
            if self.closing is not None:
                self.closing()
        return report

    def _size(self) -> int | None:
        return Path(self.source).stat().st_size if is_regular(self.source) else None

    def _settle(self, skipped: int) -> None:
        """Final checkpoint, and the report's account of what was not sent."""
        report = self.report
        if skipped:
            report.notes.append(
                f"{skipped} items were acknowledged before the restart and were not sent again"
            )
        self._account()
        if self.store is None:
            return
        if self.reached_end and not report.interrupted and not self.tracker.open_items:
            self.dead.flush()
            self.store.complete(
                self.run_id, self.tracker.fed_line, self.tracker.fed_offset, self.tracker.fed_offset
            )
        else:
            self._next_commit()()


def deliver(
    compiled: CompiledBundle,
    input_: str,
    *,
    dead_letter: Path | None = None,
    state_dir: Path | None = None,
    from_start: bool = False,
    quiet: bool = False,
    options: DeliveryOptions | None = None,
    limiter: Callable[[Sink], Limiter] | None = None,
) -> RunReport:
    """Deliver every line of ``input_`` (a path, or ``-`` for stdin); returns the report.

    ``limiter`` makes the sink's rate limiter (default: this process's own ``RateLimiter``;
    ``shared_limits.SharedRateLimiter`` shares one workspace's limits across processes).

    Dead letters go to ``dead_letter`` (default ``<state_dir>/dead-letter.jsonl``), the
    checkpoint to ``<state_dir>/state.sqlite`` (``state_dir`` defaults to ``.moerules``).
    """
    state_dir = state_dir or DEFAULT_STATE_DIR
    run = _DeliveryRun(
        compiled,
        input_,
        dead_letter or state_dir / DEAD_LETTER_FILE,
        state_dir,
        from_start,
        quiet,
        options or DeliveryOptions(),
    )
    if limiter is not None:
        run.make_limiter = limiter
    return anyio.run(run.run)
