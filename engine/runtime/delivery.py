"""Real delivery: the run's task graph, from input lines to acknowledged HTTP requests.

::

    input ──► reader+mapper ──► [bounded stream] ──► sender × concurrency ──► partner API
              (Pipeline.feed)    back-pressure        rate limits, retries,    │
                    │                                 413 splits, dead letters │
                    └────────── AckTracker ◄───────── acknowledgements ◄───────┘
                                    │
                       state.sqlite (acknowledgements, group-committed)

The reader maps one line at a time and blocks when the stream is full, so memory stays flat
on any input size. Senders share one ``httpx.AsyncClient`` and one ``RateLimiter``. Every item
ends delivered, dropped or dead-lettered; the checkpoint records which, so a rerun after a
crash (even ``kill -9``) skips what is done. SIGINT/SIGTERM stop reading, drain what was read
(within ``drain_timeout``), checkpoint and report; a second signal stops at once.

>>> report = deliver(load_bundle("mparticle-to-moengage"), "input.jsonl")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any

import anyio
import httpx
from anyio.lowlevel import checkpoint
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from moerules.engine.compile.compiler import CompiledBundle
from moerules.engine.connector import (
    EVENT,
    Delivered,
    Fatal,
    Item,
    Partial,
    Refused,
    Reject,
    Response,
    Retry,
    Sink,
    SinkEncoder,
    Split,
    Verdict,
    WireRequest,
)
from moerules.engine.runtime.deadletter import DeadLetterWriter
from moerules.engine.runtime.pipeline import Pipeline
from moerules.engine.runtime.progress import ProgressDisplay, Snapshot
from moerules.engine.runtime.ratelimit import RateLimiter
from moerules.engine.runtime.report import RunReport
from moerules.engine.runtime.retry import RetryPolicy
from moerules.engine.runtime.state import AckTracker, Checkpoint, CheckpointStore, input_fingerprint

__all__ = [
    "DEFAULT_STATE_DIR",
    "DeliveryOptions",
    "RunControl",
    "Sender",
    "deliver",
    "item_from_record",
    "item_record",
    "pump",
]

DEFAULT_STATE_DIR = Path(".moerules")
DEAD_LETTER_FILE = "dead-letter.jsonl"
STATE_FILE = "state.sqlite"
_READ_CHUNK = 1 << 16

_RETRY = RetryPolicy()


@dataclass(frozen=True, slots=True)
class DeliveryOptions:
    """How a run sends: parallelism, retries, timeouts. Defaults suit the MoEngage limits."""

    concurrency: int = 8
    # the retry settings, their defaults RetryPolicy's own
    max_attempts: int = _RETRY.max_attempts
    backoff_base: float = _RETRY.backoff_base
    backoff_cap: float = _RETRY.backoff_cap
    max_retry_after: float = _RETRY.max_retry_after
    request_timeout: float = 30.0
    drain_timeout: float = 30.0
    checkpoint_interval: float = 0.5  # commit this often when only mapping moved on
    queue_size: int | None = None  # requests between mapper and senders; 2 × concurrency
    progress_interval: float | None = None
    handle_signals: bool = True

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if self.request_timeout <= 0 or self.drain_timeout < 0:
            raise ValueError("request_timeout must be > 0 and drain_timeout >= 0")

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(self.max_attempts, self.backoff_base, self.backoff_cap,
                           self.max_retry_after)


class RunControl:
    """Whether the run should stop reading (``stopping``) or stop sending too (``aborted``)."""

    def __init__(self) -> None:
        self.stopping = False
        self.aborted = False
        self.reason = ""
        self._aborted = anyio.Event()
        self._on_stop: list[Callable[[], object]] = []

    def on_stop(self, callback: Callable[[], object]) -> None:
        self._on_stop.append(callback)

    def stop(self, reason: str) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.reason = reason
        for callback in self._on_stop:
            callback()

    def abort(self, reason: str) -> None:
        self.stop(reason)
        self.aborted = True
        self._aborted.set()

    async def sleep(self, seconds: float) -> bool:
        """Sleep; False when the run was aborted meanwhile."""
        with anyio.move_on_after(seconds):
            await self._aborted.wait()
        return not self.aborted


# -- items as dead letters -------------------------------------------------------------------
def item_record(item: Item) -> dict[str, Any]:
    """The mapped item as written to a dead letter; ``item_from_record`` reads it back."""
    record: dict[str, Any] = {"kind": item.kind, "identity": item.identity}
    if item.name:
        record["name"] = item.name
    record["attributes"] = item.attributes
    if item.fields:
        record["fields"] = item.fields
    if item.route is not None:
        record["project"] = item.route
    return record


def item_from_record(record: dict[str, Any], line: int, index: int | None,
                     rule: str | None) -> Item:
    ref = (line, -1 if index is None else index)
    return Item(str(record.get("kind") or EVENT), str(record["identity"]),
                str(record.get("name") or ""), dict(record["attributes"]),
                dict(record.get("fields") or {}), record.get("project"), ref, rule or "")


def _uncount(report: RunReport, item: Item) -> None:
    """The Pipeline counted the item delivered when it was encoded; take that back."""
    if item.kind == EVENT:
        report.delivered_events -= 1
    else:
        report.delivered_user_updates -= 1


# -- sending one request to its end ----------------------------------------------------------
class Sender:
    """Takes a request to a final outcome: delivered, dead-lettered, or left open on abort.

    Waits for the rate limiter, sends, and applies the sink's verdict on the answer: retries
    what is retryable (after the partner's Retry-After when it gives one, else backoff with
    jitter), resends in halves what is too large, dead-letters each item that cannot be
    delivered, stops the run on a fatal verdict. It knows no status codes. ``on_final(items,
    delivered)`` hears of every item that reached its outcome, after its dead letter is
    written.
    """

    def __init__(self, sink: Sink, client: httpx.AsyncClient, limiter: RateLimiter,
                 policy: RetryPolicy, report: RunReport, dead: DeadLetterWriter,
                 control: RunControl, *, on_final: Callable[[list[Item], int], None],
                 request_timeout: float = 30.0) -> None:
        self.sink = sink
        self.client = client
        self.limiter = limiter
        self.policy = policy
        self.report = report
        self.dead = dead
        self.control = control
        self.on_final = on_final
        self.request_timeout = request_timeout

    async def send(self, request: WireRequest, attempt: int = 0) -> None:
        """Send ``request`` until its items reach an outcome; ``attempt`` tries were made
        for them already (a partial retry carries its count on)."""
        while True:
            attempt += 1
            await self.limiter.acquire(request)
            if self.control.aborted:
                return
            answer, verdict = await self._attempt(request)
            if self.control.aborted and not isinstance(verdict, Delivered):
                return  # after an abort only successes are recorded; the rerun sends the rest
            if isinstance(verdict, Delivered):
                self.on_final(request.items, len(request.items))
                return
            if isinstance(verdict, Split):
                await self._split(request, verdict, answer, attempt)
                return
            if isinstance(verdict, Fatal):
                self.control.abort(verdict.reason if answer is None else
                                   f"the destination refused the request ({verdict.reason}): "
                                   f"{answer.excerpt[:200]}")
                return
            if isinstance(verdict, Reject):
                self._dead(request.items, f"rejected by the destination: {verdict.reason}",
                           verdict.reason, answer, attempt)
                return
            if isinstance(verdict, Partial):
                await self._partial(request, verdict, answer, attempt)
                return
            # Retry
            if verdict.throttled:
                self.limiter.widen(request.limit_key)
            if not await self._wait_to_retry(request, verdict.after, attempt):
                if not self.control.aborted:
                    self._dead(request.items, f"retries exhausted: {verdict.reason}",
                               verdict.reason, answer, attempt)
                return

    async def _wait_to_retry(self, request: WireRequest, after: float | None,
                             attempt: int) -> bool:
        """Wait before another try; False when none may follow (retries out, or aborted)."""
        if not self.policy.can_retry(attempt):
            return False
        self.report.retries += 1
        delay = self.policy.delay(attempt, after)
        if after is not None:
            # the partner speaks for the whole credential, not just this request
            self.limiter.pause(request.limit_key, delay)
        return await self.control.sleep(delay)

    async def _attempt(self, request: WireRequest) -> tuple[Response | None, Verdict]:
        """One try: the answer (None when there was none) and its verdict."""
        report = self.report
        report.requests += 1
        report.request_bytes += len(request.body)
        response: httpx.Response | None = None
        try:
            with anyio.move_on_after(self.request_timeout):
                response = await self.client.request(request.method, request.url,
                                                     headers=request.headers,
                                                     content=request.body)
        except httpx.TimeoutException:
            pass
        except httpx.UnsupportedProtocol as exc:
            return None, Fatal(f"cannot send to {request.url.split('?')[0]}: {exc}")
        except httpx.TransportError as exc:
            report.statuses["connection error"] += 1
            return None, Retry(f"connection failed ({type(exc).__name__}: {exc})")
        if response is None:
            report.statuses["timeout"] += 1
            return None, Retry(f"no answer within {self.request_timeout:g} s")
        report.statuses[str(response.status_code)] += 1
        answer = Response(response.status_code, response.headers, response.content)
        verdict = self.sink.classify(request, answer)
        if getattr(verdict, "throttled", False):
            report.throttled += 1
        return answer, verdict

    def _encode(self, items: list[Item]) -> list[WireRequest]:
        """``items`` as new requests of the sink (a part to send again); refused ones are
        dead-lettered (they were encodable once: only a changed sink refuses them)."""
        encoder: SinkEncoder = self.sink.encoder()
        requests, refused = encoder.add_all(items)
        for item, reason, error in refused:
            self._write_dead(item, reason, None, 0, error)
        if refused:
            self.on_final([r.item for r in refused], 0)
        return requests + encoder.flush()

    async def _split(self, request: WireRequest, verdict: Split, answer: Response | None,
                     attempt: int) -> None:
        """Too large for the partner: send each half again, re-encoded; alone, dead-letter."""
        items = request.items
        if len(items) <= 1:
            self._dead(items, f"too large for one request ({verdict.reason})", verdict.reason,
                       answer, attempt)
            return
        middle = len(items) // 2
        for half in (items[:middle], items[middle:]):
            for part in self._encode(half):
                await self.send(part)

    async def _partial(self, request: WireRequest, verdict: Partial, answer: Response | None,
                       attempt: int) -> None:
        """Rejected items dead-lettered, the ones to retry sent again, the rest delivered."""
        items = request.items
        rejected = {i: why for i, why in verdict.rejected.items() if 0 <= i < len(items)}
        again = sorted(i for i in verdict.retry if 0 <= i < len(items) and i not in rejected)
        reason = f"rejected by the destination: {verdict.reason or 'item refused'}"
        for index, why in rejected.items():
            self._write_dead(items[index], reason, answer, attempt, why)
        settled = [item for i, item in enumerate(items) if i not in verdict.retry or i in
                   rejected]
        self.on_final(settled, len(settled) - len(rejected))
        if not again:
            return
        retry = [items[i] for i in again]
        if verdict.throttled:
            self.limiter.widen(request.limit_key)
        if not await self._wait_to_retry(request, verdict.after, attempt):
            if not self.control.aborted:
                self._dead(retry, f"retries exhausted: {verdict.reason}", verdict.reason,
                           answer, attempt)
            return
        for part in self._encode(retry):
            await self.send(part, attempt)

    def _dead(self, items: list[Item], reason: str, error: str, answer: Response | None,
              attempt: int) -> None:
        for item in items:
            self._write_dead(item, reason, answer, attempt, error)
        self.on_final(items, 0)

    def _write_dead(self, item: Item, reason: str, answer: Response | None, attempt: int,
                    error: str) -> None:
        _uncount(self.report, item)
        self.report.dead_lettered[reason] += 1
        line, index = item.ref
        self.dead.write(reason, record=item_record(item), error=error, line=line,
                        rule=item.rule, event_index=None if index < 0 else index,
                        stage="delivery", status=None if answer is None else answer.status,
                        response="" if answer is None else answer.excerpt, attempts=attempt)


# -- the task graph --------------------------------------------------------------------------
Producer = Callable[[MemoryObjectSendStream[WireRequest]], Awaitable[None]]


async def pump(produce: Producer, sender: Sender, options: DeliveryOptions,
               control: RunControl, report: RunReport, *,
               progress: ProgressDisplay | None = None,
               background: Callable[[], Coroutine[Any, Any, None]] | None = None) -> None:
    """Run ``produce`` and ``options.concurrency`` senders until the stream is drained.

    ``produce`` sends requests into the stream and returns when done or ``control.stopping``.
    ``background`` (the checkpoint writer) runs beside them until the stream is drained.
    """
    queue = options.queue_size or 2 * options.concurrency
    send_stream, receive_stream = anyio.create_memory_object_stream[WireRequest](queue)
    work = anyio.CancelScope()

    async def producer() -> None:
        async with send_stream:
            with contextlib.suppress(anyio.BrokenResourceError):  # every sender left: aborted
                await produce(send_stream)

    async def send_loop(receive: MemoryObjectReceiveStream[WireRequest]) -> None:
        async with receive:
            async for request in receive:
                if control.aborted:
                    break
                await sender.send(request)

    async def drain_deadline() -> None:
        await anyio.sleep(options.drain_timeout)
        report.warnings.append(f"stopped sending after the {options.drain_timeout:g} s drain "
                               "timeout")
        work.cancel()

    async def signals() -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
            async for signum in received:
                if control.stopping:
                    report.warnings.append(f"second {signum.name}: stopped at once")
                    work.cancel()
                else:
                    control.stop(f"stopped by {signum.name}")

    async with anyio.create_task_group() as outer:
        if options.handle_signals and threading.current_thread() is threading.main_thread():
            outer.start_soon(signals)
        if progress is not None:
            outer.start_soon(progress.run)
        if background is not None:
            outer.start_soon(background)
        control.on_stop(partial(outer.start_soon, drain_deadline))
        with work:
            async with anyio.create_task_group() as tg:
                tg.start_soon(producer)
                for _ in range(options.concurrency):
                    tg.start_soon(send_loop, receive_stream.clone())
                receive_stream.close()
        outer.cancel_scope.cancel()


class _TrackingEncoder(SinkEncoder):
    """The sink's encoder, telling the tracker of each item; skips items acknowledged before."""

    def __init__(self, inner: SinkEncoder, tracker: AckTracker,
                 acked: set[tuple[int, int]]) -> None:
        self.inner = inner
        self.tracker = tracker
        self.acked = acked
        self.skipped = 0

    def _acked_before(self, item: Item) -> bool:
        """Acknowledged before a restart: not sent again (counted as skipped)."""
        if item.ref in self.acked:
            self.acked.discard(item.ref)
            self.skipped += 1
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


class _ResumedDeadLetters(DeadLetterWriter):
    """Counts but does not write again the mapping dead letters of lines mapped before."""

    def __init__(self, path: Path | None, bundle: str, secrets: frozenset[str],
                 written_through: int) -> None:
        super().__init__(path, bundle, secrets)
        self.written_through = written_through

    def write(self, reason: str, *, record: Any = None, raw: bytes | None = None,
              error: str = "", line: int | None = None, rule: str | None = None,
              **extra: Any) -> None:
        if extra.get("stage") != "delivery" and line is not None and \
                line <= self.written_through:
            self.count += 1
            return
        super().write(reason, record=record, raw=raw, error=error, line=line, rule=rule,
                      **extra)


class _Input:
    """Input lines with their byte offsets: a file (seekable, resumable) or stdin."""

    def __init__(self, source: str, offset: int) -> None:
        self.source = source
        self.stream: IO[bytes] = sys.stdin.buffer if source == "-" else open(source, "rb")  # noqa: SIM115
        if offset:
            self.stream.seek(offset)
        self.position = offset  # where the next line handed out starts
        # a regular file never blocks (and the event loop cannot watch one)
        self._regular = True
        with contextlib.suppress(OSError, ValueError):  # no descriptor: an in-memory stream
            self._regular = stat.S_ISREG(os.fstat(self.stream.fileno()).st_mode)
        self.eof = False
        self._parts: list[bytes] = []  # the start of a line not complete yet
        self._read_scope: anyio.CancelScope | None = None

    def cancel_read(self) -> None:
        if self._read_scope is not None:
            self._read_scope.cancel()

    async def _chunk(self) -> bytes | None:
        """The next bytes; b"" at the end, None when a stop abandoned the wait."""
        if self.source != "-" or self._regular:
            return self.stream.read(_READ_CHUNK)
        # a pipe may wait for its writer indefinitely: wait on the event loop (no thread to
        # hang the exit), so that a stop request can abandon the wait
        with anyio.CancelScope() as scope:
            self._read_scope = scope
            fd = self.stream.fileno()
            await anyio.wait_readable(fd)
            return os.read(fd, _READ_CHUNK)
        return None

    async def lines(self) -> list[bytes]:
        """The next complete lines, each with its newline (as file iteration gives them).

        Empty at the end of the input (``eof`` is then set) or when a stop cut the wait short.
        """
        while True:
            chunk = await self._chunk()
            if chunk is None:
                return []
            if not chunk:
                self.eof = True
                rest, self._parts = b"".join(self._parts), []
                return [rest] if rest else []
            cut = chunk.rfind(b"\n") + 1
            if not cut:
                self._parts.append(chunk)  # a long line: join once, when it ends
                continue
            data = b"".join([*self._parts, chunk[:cut]])
            self._parts = [chunk[cut:]] if cut < len(chunk) else []
            return [line + b"\n" for line in data[:-1].split(b"\n")]

    def close(self) -> None:
        if self.stream is not sys.stdin.buffer:
            self.stream.close()


class _DeliveryRun:
    """One ``moerules run`` without ``--dry-run``."""

    def __init__(self, compiled: CompiledBundle, source: str, dead_letter: Path,
                 state_dir: Path, from_start: bool, quiet: bool,
                 options: DeliveryOptions) -> None:
        self.compiled = compiled
        self.source = source
        self.dead_path = dead_letter
        self.state_dir = state_dir
        self.from_start = from_start
        self.quiet = quiet
        self.options = options
        self.bundle = compiled.model.bundle
        self.report = RunReport(bundle=self.bundle, dry_run=False)
        self.store: CheckpointStore | None = None
        self.run_id = 0
        self.saved_line = -1
        self.acked: list[tuple[int, int]] = []  # acknowledged, not yet committed
        self.tracker = AckTracker()
        self.lines_read = 0
        self.reached_end = False
        self.input: _Input | None = None
        # made in run(): anyio objects need the event loop, the rest needs the checkpoint
        self.control: RunControl
        self.wake: anyio.Event
        self.pipeline: Pipeline
        self.dead: DeadLetterWriter

    # -- checkpoints -----------------------------------------------------------------------
    def _open_state(self) -> Checkpoint | None:
        """The checkpoint to resume from; None when the input is already complete."""
        report = self.report
        if self.source == "-":
            report.notes.append("input is stdin: no checkpoint is kept, a rerun cannot "
                                   "resume")
            return Checkpoint()
        path = Path(self.source).resolve()
        self.store = CheckpointStore(self.state_dir / STATE_FILE)
        self.run_id = self.store.open_run(self.bundle, str(path), input_fingerprint(path))
        if self.from_start:
            self.store.reset(self.run_id)
        saved = self.store.load(self.run_id)
        size = path.stat().st_size
        if saved.complete and saved.size == size:
            report.notes.append(
                f"already complete: {self.source} was fully delivered by an earlier run "
                f"(checkpoint in {self.state_dir / STATE_FILE}); nothing sent. Use "
                "--from-start to send it again")
            return None
        if saved.offset > size:
            report.warnings.append(f"{self.source} is shorter than its checkpoint: reading "
                                   "from line 1")
            self.store.reset(self.run_id)
            return Checkpoint()
        if saved.line:
            report.notes.append(f"resumed after line {saved.line} (checkpoint in "
                                   f"{self.state_dir / STATE_FILE})")
        return saved

    def _acknowledge(self, items: list[Item], delivered: int) -> None:
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
        return partial(self.store.save, self.run_id, refs, line, offset, self.tracker.fed_line,
                       prune=prune)

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

    def _snapshot(self) -> Snapshot:
        report = self.report
        return Snapshot(self.lines_read, self.input.position if self.input else 0,
                        self.tracker.delivered, sum(report.dead_lettered.values()),
                        report.retries, report.throttled)

    # -- reading and mapping ---------------------------------------------------------------
    async def _produce(self, stream: MemoryObjectSendStream[WireRequest]) -> None:
        source, pipeline, tracker, control = self.input, self.pipeline, self.tracker, self.control
        assert source is not None
        line_no = tracker.fed_line
        quiet_lines = 0
        while not control.stopping and not source.eof:
            for raw in await source.lines():
                line_no += 1
                start = source.position
                source.position += len(raw)
                requests: list[WireRequest] = []
                if raw.strip():
                    self.lines_read += 1
                    tracker.begin_line(start)
                    requests = pipeline.feed(line_no, raw)
                tracker.end_line(line_no, source.position)
                for request in requests:
                    await stream.send(request)  # waits while the senders are behind
                quiet_lines = 0 if requests else quiet_lines + 1
                if quiet_lines >= 64:  # mapping alone never yields: let the senders run
                    quiet_lines = 0
                    await checkpoint()
                if control.stopping:
                    break
        self.reached_end = source.eof and not control.stopping
        if control.aborted:
            pipeline.warn_routing()
            return
        for request in pipeline.finish():
            await stream.send(request)

    # -- the run ---------------------------------------------------------------------------
    async def run(self) -> RunReport:
        started = time.perf_counter()
        report, options = self.report, self.options
        saved = self._open_state()
        self.dead = _ResumedDeadLetters(self.dead_path, self.bundle, self.compiled.secrets,
                                        saved.fed if saved else 0)
        try:
            if saved is None:
                return report
            self.tracker = AckTracker(saved.line, saved.offset)
            self.input = _Input(self.source, saved.offset)
            self.control = RunControl()
            self.wake = anyio.Event()
            self.control.on_stop(self.input.cancel_read)
            self.pipeline = Pipeline(self.compiled, report, self.dead)
            encoder = _TrackingEncoder(self.pipeline.encoder, self.tracker, set(saved.acked))
            self.pipeline.encoder = encoder
            progress = ProgressDisplay(self._snapshot, total_bytes=self._size(),
                                       quiet=self.quiet, interval=options.progress_interval)
            limiter = RateLimiter(self.compiled.sink.rate_limits())
            async with httpx.AsyncClient(timeout=options.request_timeout, limits=httpx.Limits(
                    max_connections=options.concurrency,
                    max_keepalive_connections=options.concurrency)) as client:
                sender = Sender(self.compiled.sink, client, limiter, options.retry_policy(),
                                report, self.dead, self.control, on_final=self._acknowledge,
                                request_timeout=options.request_timeout)
                await pump(self._produce, sender, options, self.control, report,
                           progress=progress, background=self._checkpoints)
            self._settle(encoder.skipped)
        finally:
            report.elapsed_seconds = time.perf_counter() - started
            if self.input is not None:
                self.input.close()
            self.dead.close()
            if self.store is not None:
                self.store.close()
        return report

    def _size(self) -> int | None:
        return None if self.source == "-" else Path(self.source).stat().st_size

    def _settle(self, skipped: int) -> None:
        """Final checkpoint, and the report's account of what was not sent."""
        report, tracker, control = self.report, self.tracker, self.control
        report.interrupted = control.stopping
        if control.reason:
            report.warnings.append(control.reason)
        if skipped:
            report.notes.append(f"{skipped} items were acknowledged before the restart and "
                                   "were not sent again")
        open_events, open_users = tracker.open_events, tracker.open_users
        if open_events or open_users:
            # read but not sent: not this run's items after all; the rerun reads them again
            from_events = tracker.open_users_from_events
            report.delivered_events -= open_events
            report.events_in -= open_events + from_events
            report.delivered_user_updates -= open_users
            report.user_updates_in -= open_users - from_events
            report.interrupted = True
            report.warnings.append(f"{open_events + open_users} items were read but not sent; "
                                   "a rerun of the same command sends them")
        if self.store is None:
            return
        if self.reached_end and not report.interrupted and not tracker.open_items:
            self.dead.flush()
            self.store.complete(self.run_id, tracker.fed_line, tracker.fed_offset,
                                tracker.fed_offset)
        else:
            self._next_commit()()


def deliver(compiled: CompiledBundle, input_: str, *, dead_letter: Path | None = None,
            state_dir: Path | None = None, from_start: bool = False, quiet: bool = False,
            options: DeliveryOptions | None = None) -> RunReport:
    """Deliver every line of ``input_`` (a path, or ``-`` for stdin); returns the report.

    Dead letters go to ``dead_letter`` (default ``<state_dir>/dead-letter.jsonl``), the
    checkpoint to ``<state_dir>/state.sqlite`` (``state_dir`` defaults to ``.moerules``).
    """
    state_dir = state_dir or DEFAULT_STATE_DIR
    run = _DeliveryRun(compiled, input_, dead_letter or state_dir / DEAD_LETTER_FILE,
                       state_dir, from_start, quiet, options or DeliveryOptions())
    return anyio.run(run.run)

