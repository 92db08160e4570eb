"""Delivery from the spool, through the same runtime as ``moerules run``.

A ``BundleConsumer`` owns one bundle's deliveries. It runs *passes*: each pass is a
``DeliveryLoop`` (engine/runtime/loop.py) whose input is the spool instead of a file, so the
mapping (``Pipeline``), batching (the sink's encoder, flushed when its batch policy's
``max_age`` is reached: a quiet stream still delivers on time), rate limits, retries, verdicts,
dead letters and the ledger are exactly those of a run::

    Spool.claim ──► SpoolInput ──► _SpoolFeed ──► Pipeline ──► encoder ──► Sender ──► partner
                        │             (message id           │                 │
                        │              as the line)    MessageTracker ◄──── outcomes
                        └──────────────── Spool.ack ◄── every item of a message final

A message is acknowledged to the spool once each of its items reached its outcome (delivered,
dropped by a rule, or dead-lettered, with the dead letter flushed to its file first). A pass
ends on a stop (service shutdown, a reload: the new bundle's pass follows) or on a fatal
verdict (a refused key): what it had not finished is released to the spool (``nack``) and the
next pass sends it again. A pass after a fatal verdict waits first, longer each time, or
until a reload brings a new bundle.

Dead letters go to ``<state dir>/dead-letters/<bundle>.jsonl``; their ``line`` is the spool
message id.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from anyio.lowlevel import checkpoint
from anyio.streams.memory import MemoryObjectSendStream
from moerules.engine.compile.compiler import CompiledBundle
from moerules.engine.connector import Item, Refused, Response, SinkEncoder, Verdict, WireRequest
from moerules.engine.runtime.cohorts import feed_for
from moerules.engine.runtime.deadletter import DeadLetterWriter
from moerules.engine.runtime.input import LongLine
from moerules.engine.runtime.loop import DeliveryLoop, DeliveryOptions, Feed
from moerules.engine.runtime.pipeline import Pipeline
from moerules.engine.runtime.ratelimit import RateLimiter
from moerules.engine.runtime.report import RunReport
from moerules.engine.runtime.sender import Sender
from moerules.engine.service.logs import LOGGER, log_event
from moerules.engine.service.spool import Message, Spool

__all__ = ["BundleConsumer", "DeliveryTotals", "dead_letter_path"]

# messages claimed at once: mapping them runs without a pause, so few enough that the ingest
# routes sharing the event loop are not held up long
CLAIM_BATCH = 16
ACK_INTERVAL = 0.05  # seconds between acknowledgement commits, at most
FATAL_BACKOFF = (1.0, 60.0)  # first and longest wait after a fatal verdict

_log = logging.getLogger(LOGGER)


def dead_letter_path(state_dir: Path, bundle: str) -> Path:
    return state_dir / "dead-letters" / f"{bundle}.jsonl"


@dataclass
class DeliveryTotals:
    """What one bundle's passes did, added up (the metrics read it with the live pass)."""

    delivered: dict[str, int] = field(default_factory=dict)  # item kind -> items
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> units
    dead: dict[str, int] = field(default_factory=dict)  # reason -> dead letters
    statuses: dict[str, int] = field(default_factory=dict)  # answer -> tries
    retries: int = 0
    throttled: int = 0
    limiter_waits: int = 0
    limiter_wait_seconds: float = 0.0
    messages_acked: int = 0
    messages_released: int = 0

    def add(self, report: RunReport) -> None:
        ledger = report.ledger
        for target, source in (
            (self.delivered, ledger.delivered),
            (self.dropped, ledger.dropped),
            (self.dead, ledger.dead),
            (self.statuses, report.statuses),
        ):
            for key, n in source.items():
                target[key] = target.get(key, 0) + n
        self.retries += report.retries
        self.throttled += report.throttled


# -- the spool as the loop's input -----------------------------------------------------------
class SpoolInput:
    """Messages of one bundle as input lines (``LineSource``), one message a line."""

    def __init__(self, spool: Spool, bundle: str, batch: int = CLAIM_BATCH) -> None:
        self.spool = spool
        self.bundle = bundle
        self.batch = batch
        self.position = 0
        self.eof = False
        self.pending: deque[Message] = deque()  # handed to the loop, not fed yet
        self._scope: anyio.CancelScope | None = None
        self._stopped = False

    async def lines(self) -> list[bytes]:
        if self._stopped:
            return []
        with anyio.CancelScope() as scope:
            self._scope = scope
            await checkpoint()  # a claim of ready messages never waits: let requests in first
            # cancelled while waiting (a stop, a time flush), nothing is claimed
            messages = await self.spool.claim(self.bundle, self.batch)
            self.pending.extend(messages)
            return [message.body + b"\n" for message in messages]
        return []

    def cancel_read(self) -> None:
        self._stopped = True
        if self._scope is not None:
            self._scope.cancel()

    def close(self) -> None:
        """Nothing to close: what was claimed and not fed is released by the pass."""


class MessageTracker:
    """Items not yet at their outcome, per message; messages whose items are all final."""

    def __init__(self) -> None:
        self.open: dict[int, int] = {}  # message id -> items not final
        self.feeding: int | None = None
        self.done: list[int] = []  # final, not yet acknowledged

    def begin(self, message: int) -> None:
        self.open[message] = 0
        self.feeding = message

    def add(self, item: Item) -> None:
        self.open[item.ref[0]] += 1

    def fed(self, message: int) -> None:
        self.feeding = None
        if self.open.get(message) == 0:
            del self.open[message]
            self.done.append(message)

    def resolve(self, items: Sequence[Item]) -> None:
        for item in items:
            message = item.ref[0]
            left = self.open[message] - 1
            if left or message == self.feeding:
                self.open[message] = left
            else:
                del self.open[message]
                self.done.append(message)


class _TrackingEncoder(SinkEncoder):
    """The sink's encoder, telling the tracker of each item it took."""

    def __init__(self, inner: SinkEncoder, tracker: MessageTracker) -> None:
        self.inner = inner
        self.tracker = tracker

    def add(self, item: Item) -> list[WireRequest]:
        requests = self.inner.add(item)  # raises for an item it cannot encode: not tracked
        self.tracker.add(item)
        return requests

    def add_all(self, items: Sequence[Item]) -> tuple[list[WireRequest], list[Refused]]:
        requests, failed = self.inner.add_all(items)
        refused = {id(r.item) for r in failed}  # dead-lettered by the pipeline instead
        for item in items:
            if id(item) not in refused:
                self.tracker.add(item)
        return requests, failed

    def flush(self) -> list[WireRequest]:
        return self.inner.flush()

    def until_next(self, now: float | None = None) -> float | None:
        return self.inner.until_next(now)


class _SpoolFeed:
    """Feeds each message to the pipeline with its spool id as the line number."""

    def __init__(self, pipeline: Pipeline, source: SpoolInput, tracker: MessageTracker) -> None:
        self.pipeline = pipeline
        self.source = source
        self.tracker = tracker
        self.encoder: SinkEncoder = pipeline.encoder
        settled = getattr(pipeline, "settled", None)
        if settled is not None:  # a cohort flow records what MoEngage acknowledged
            self.settled = settled

    def feed(self, line_no: int, line: bytes | LongLine) -> list[WireRequest]:
        message = self.source.pending.popleft()
        self.tracker.begin(message.id)
        try:
            return self.pipeline.feed(message.id, line)
        finally:
            self.tracker.fed(message.id)

    def finish(self) -> list[WireRequest]:
        return self.pipeline.finish()

    def stopped(self) -> None:
        self.pipeline.stopped()


# -- sending, counted and logged -------------------------------------------------------------
class _CountingLimiter(RateLimiter):
    """The sink's rate limiter, adding up how often and how long it held requests back."""

    totals: DeliveryTotals

    async def acquire(self, target: WireRequest | str) -> None:
        started = time.monotonic()
        await super().acquire(target)
        waited = time.monotonic() - started
        if waited > 0.001:
            self.totals.limiter_waits += 1
            self.totals.limiter_wait_seconds += waited


class LoggingSender(Sender):
    """The runtime's Sender; each try (one request to the partner) is one log line."""

    async def _attempt(self, request: WireRequest) -> tuple[Response | None, Verdict]:
        started = time.perf_counter()
        answer, verdict = await super()._attempt(request)
        fields: dict[str, object] = {
            "bundle": self.report.bundle,
            "url": request.url.split("?")[0],
            "items": len(request.items),
            "bytes": len(request.body),
            "status": answer.status if answer is not None else None,
            "verdict": type(verdict).__name__.lower(),
            "ms": round((time.perf_counter() - started) * 1000, 2),
        }
        reason = getattr(verdict, "reason", "")
        if reason:
            fields["reason"] = reason
        log_event(
            _log,
            "delivery",
            logging.INFO if answer is not None and answer.status < 400 else logging.WARNING,
            **fields,
        )
        return answer, verdict


class _Pass(DeliveryLoop):
    """One pass of a bundle's deliveries from the spool (see the module docstring)."""

    sender_class = LoggingSender

    def __init__(
        self,
        name: str,
        compiled: CompiledBundle,
        spool: Spool,
        options: DeliveryOptions,
        dead_path: Path,
        totals: DeliveryTotals,
    ) -> None:
        super().__init__(compiled, RunReport(bundle=name, dry_run=False), options, quiet=True)
        self.name = name
        self.spool = spool
        self.dead_path = dead_path
        self.totals = totals
        self.tracker = MessageTracker()
        self.source = SpoolInput(spool, name)
        self.stop_reason = ""
        self.started = False
        self.wake: anyio.Event  # made in run(): anyio objects need the event loop
        self.dead: DeadLetterWriter

    def stop(self, reason: str) -> None:
        self.stop_reason = self.stop_reason or reason
        if self.started:
            self.control.stop(reason)
        else:
            self.source.cancel_read()

    def _limiter(self) -> RateLimiter:
        limiter = _CountingLimiter(self.compiled.sink.rate_limits())
        limiter.totals = self.totals
        return limiter

    def _final(self, items: list[Item], delivered: int) -> None:
        self.tracker.resolve(items)
        self.wake.set()

    async def _produce(
        self, feed: Feed, first_line: int, stream: MemoryObjectSendStream[WireRequest]
    ) -> None:
        self.started = True  # the control exists from here on
        if self.stop_reason:
            self.control.stop(self.stop_reason)
        await super()._produce(feed, first_line, stream)

    def _ack_done(self) -> None:
        done = self.tracker.done
        if not done:
            return
        self.dead.flush()  # dead letters reach their file before the spool forgets the message
        self.tracker.done = []
        self.spool.ack(done)
        self.totals.messages_acked += len(done)

    async def _acks(self) -> None:
        while True:
            with anyio.move_on_after(ACK_INTERVAL):
                await self.wake.wait()
            self.wake = anyio.Event()
            self._ack_done()

    async def run(self) -> None:
        self.wake = anyio.Event()
        self.dead = DeadLetterWriter(self.dead_path, self.name, self.compiled.secrets)
        self.input = self.source
        pipeline = feed_for(self.compiled, self.report, self.dead, dry_run=False)
        pipeline.encoder = _TrackingEncoder(pipeline.encoder, self.tracker)
        try:
            await self.deliver_lines(
                _SpoolFeed(pipeline, self.source, self.tracker), self.dead, background=self._acks
            )
        finally:
            self._ack_done()
            self.dead.close()
            if hasattr(pipeline, "close"):  # a cohort flow's membership state
                pipeline.close()
            # not final (a stop's drain ran out, a fatal verdict) or never fed: ready again
            leftover = sorted({*self.tracker.open, *(m.id for m in self.source.pending)})
            if leftover:
                self.spool.nack(leftover)
                self.totals.messages_released += len(leftover)


class BundleConsumer:
    """Runs one bundle's passes until the service stops (see the module docstring)."""

    def __init__(
        self,
        name: str,
        compiled: CompiledBundle,
        spool: Spool,
        options: DeliveryOptions,
        state_dir: Path,
    ) -> None:
        self.name = name
        self.compiled = compiled
        self.spool = spool
        self.options = options
        self.dead_path = dead_letter_path(state_dir, name)
        self.totals = DeliveryTotals()
        self.live: _Pass | None = None
        self.stopping = False
        self.up = True  # False while waiting after a fatal verdict
        self.last_error = ""
        self._changed: anyio.Event | None = None

    @property
    def report(self) -> RunReport | None:
        """The live pass's report (its counts are not in ``totals`` yet)."""
        return self.live.report if self.live is not None else None

    def swap(self, compiled: CompiledBundle) -> None:
        """Deliver with ``compiled`` from now on: the live pass drains and a new one starts."""
        self.compiled = compiled
        if self.live is not None:
            self.live.stop("reloaded")
        if self._changed is not None:
            self._changed.set()

    def stop(self) -> None:
        """Stop claiming; the live pass drains within the drain timeout."""
        self.stopping = True
        if self.live is not None:
            self.live.stop("the service is stopping")
        if self._changed is not None:
            self._changed.set()

    async def run(self) -> None:
        backoff = FATAL_BACKOFF[0]
        while not self.stopping:
            live = self.live = _Pass(
                self.name, self.compiled, self.spool, self.options, self.dead_path, self.totals
            )
            try:
                await live.run()
            finally:
                self.totals.add(live.report)
                self.live = None
            if self.stopping:
                break
            if not live.control.aborted:  # a reload: the next pass starts at once
                backoff = FATAL_BACKOFF[0]
                continue
            self.up = False
            self.last_error = live.control.reason
            log_event(
                _log,
                "delivery stopped",
                logging.ERROR,
                bundle=self.name,
                reason=live.control.reason,
                retry_in_s=backoff,
            )
            self._changed = anyio.Event()
            with anyio.move_on_after(backoff):
                await self._changed.wait()
            self._changed = None
            backoff = min(backoff * 2, FATAL_BACKOFF[1])
            self.up = True
