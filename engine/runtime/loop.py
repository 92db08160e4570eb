"""The delivery loop ``run`` and ``replay`` both go through: lines in, requests out, answers
applied, every outcome in the ledger.

::

    input ──► reader + feed ──► [bounded stream] ──► Sender × concurrency ──► partner API
              (lines -> items    back-pressure        rate limits, verdicts:
               -> requests)                           retry, split, reject, fatal
                  │  ▲
                  │  └── time flush: the encoder's ``until_next`` (a batch policy's max_age)
                  └──► ledger ◄──── outcomes ◄────────────────────────────┘

A *feed* turns input lines into requests: the run's ``Pipeline`` (mapping records with the
bundle's rules) or replay's reader of delivery dead letters. The loop reads lines, feeds them,
sends the requests the feed's encoder filled, flushes the encoder when what it holds has waited
``max_age`` (an input that never ends still sends on time), and at the end flushes the rest.
Subclasses add what differs: the run keeps checkpoints, replay rewrites its file.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import IO, Any, Protocol

import anyio
import httpx
from anyio.lowlevel import checkpoint
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from moerules.engine.compile.compiler import CompiledBundle
from moerules.engine.connector import Item, Sink, SinkEncoder, WireRequest
from moerules.engine.errors import InputError
from moerules.engine.runtime.deadletter import DeadLetterWriter
from moerules.engine.runtime.input import (
    DEFAULT_MAX_LINE_BYTES,
    LineCutter,
    LongLine,
    is_pollable,
    open_input,
    read_error,
)
from moerules.engine.runtime.progress import ProgressDisplay, Snapshot
from moerules.engine.runtime.ratelimit import Limiter, RateLimiter
from moerules.engine.runtime.report import RunReport
from moerules.engine.runtime.retry import RetryPolicy
from moerules.engine.runtime.sender import RunControl, Sender

__all__ = ["DeliveryLoop", "DeliveryOptions", "Feed", "Input", "LineSource", "pump"]

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
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES  # a longer line is dead-lettered, not read

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if self.request_timeout <= 0 or self.drain_timeout < 0:
            raise ValueError("request_timeout must be > 0 and drain_timeout >= 0")

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            self.max_attempts, self.backoff_base, self.backoff_cap, self.max_retry_after
        )


class Feed(Protocol):
    """Turns input lines into requests through a sink encoder (the Pipeline, replay's reader,
    a cohort flow's CohortFeed). A feed may also have ``settled(items, delivered)``, told of
    every item that reached its outcome before anything else is (the cohort flow records
    what the destination acknowledged), and ``reconciles = True`` when its items are
    recomputed from stored state on every read (a rerun must not skip them by position)."""

    encoder: SinkEncoder

    def feed(self, line_no: int, line: bytes | LongLine) -> list[WireRequest]: ...

    def finish(self) -> list[WireRequest]: ...

    def stopped(self) -> None: ...


class LineSource(Protocol):
    """Where the loop reads lines: a file or stdin (``Input``), or the service's spool."""

    position: int
    eof: bool

    async def lines(self) -> Sequence[bytes | LongLine]: ...

    def cancel_read(self) -> None: ...

    def close(self) -> None: ...


# -- the task graph --------------------------------------------------------------------------
Producer = Callable[[MemoryObjectSendStream[WireRequest]], Awaitable[None]]


async def pump(
    produce: Producer,
    sender: Sender,
    options: DeliveryOptions,
    control: RunControl,
    report: RunReport,
    *,
    progress: ProgressDisplay | None = None,
    background: Callable[[], Coroutine[Any, Any, None]] | None = None,
) -> None:
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
        report.warnings.append(
            f"stopped sending after the {options.drain_timeout:g} s drain timeout"
        )
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
                sender.hold_in(tg)  # items held by a partner's throttle wait here
                tg.start_soon(producer)
                for _ in range(options.concurrency):
                    tg.start_soon(send_loop, receive_stream.clone())
                receive_stream.close()
            sender.hold_in(None)
        outer.cancel_scope.cancel()


class Input:
    """Input lines with their byte offsets: a file (seekable, resumable), a pipe or stdin.

    Lines are cut by the same LineCutter as the dry run's: a line over ``max_line_bytes``
    comes as a LongLine (None: no limit, for files moerules wrote itself), a BOM before line
    1 is skipped, a read that fails is an InputError.
    """

    def __init__(self, source: str, offset: int, max_line_bytes: int | None = None) -> None:
        self.source = source
        self.stream: IO[bytes] = open_input(source)
        if offset:
            self.stream.seek(offset)
        self.position = offset  # where the next line handed out starts
        # a pipe may wait for its writer; a regular file or a device never blocks (and the
        # event loop cannot watch one)
        self._pollable = is_pollable(self.stream)
        self.eof = False
        self._cutter = LineCutter(
            sys.maxsize if max_line_bytes is None else max_line_bytes, at_start=offset == 0
        )
        self._read_scope: anyio.CancelScope | None = None

    def cancel_read(self) -> None:
        if self._read_scope is not None:
            self._read_scope.cancel()

    async def _chunk(self) -> bytes | None:
        """The next bytes; b"" at the end, None when a stop abandoned the wait."""
        try:
            if not self._pollable:
                return self.stream.read(_READ_CHUNK)
            # wait on the event loop (no thread to hang the exit), so that a stop request
            # can abandon the wait
            with anyio.CancelScope() as scope:
                self._read_scope = scope
                fd = self.stream.fileno()
                await anyio.wait_readable(fd)
                return os.read(fd, _READ_CHUNK)
        except OSError as exc:
            raise read_error(self.source, exc, self.position) from None
        return None

    async def lines(self) -> list[bytes | LongLine]:
        """The next complete lines, each with its newline (as file iteration gives them); a
        line over the limit as its LongLine.

        Empty at the end of the input (``eof`` is then set) or when a stop cut the wait short.
        InputError when a read fails.
        """
        cutter = self._cutter
        while True:
            chunk = await self._chunk()
            if chunk is None:
                return []
            if not chunk:
                self.eof = True
                lines = cutter.end()
            else:
                lines = cutter.feed(chunk)
                if not lines:
                    continue
            self.position += cutter.take_skipped()  # a BOM before line 1
            return lines

    def close(self) -> None:
        if self.stream is not sys.stdin.buffer:
            self.stream.close()


class DeliveryLoop:
    """One pass of input lines through a feed to the partner, with progress and signals.

    ``deliver_lines`` runs the loop; subclasses decide where lines come from, which feed maps
    them, and what ``_final`` (every item that reached its outcome) and ``_line``
    (a line about to be fed, a line done) do.
    """

    def __init__(
        self, compiled: CompiledBundle, report: RunReport, options: DeliveryOptions, quiet: bool
    ) -> None:
        self.compiled = compiled
        self.report = report
        self.ledger = report.ledger
        if compiled.sink.ordered:  # one request at a time, in order (engine/connector.py)
            options = replace(options, concurrency=1)
        self.options = options
        self.quiet = quiet
        self.lines_read = 0
        self.reached_end = False
        self.input: LineSource | None = None
        self.control: RunControl  # made in deliver_lines: anyio objects need the event loop
        # the limiter of a sink when not this process's own (workers share one in Redis)
        self.make_limiter: Callable[[Sink], Limiter] | None = None

    # the service logs and counts each try (engine/service/consumer.py)
    sender_class: type[Sender] = Sender

    # -- hooks -----------------------------------------------------------------------------
    def _final(self, items: list[Item], delivered: int) -> None:
        """``items`` reached their outcome (already in the ledger and the dead letters)."""

    def _line_started(self, offset: int) -> None:
        """A non-blank line starting at ``offset`` is about to be fed."""

    def _line_done(self, line_no: int, end_offset: int) -> None:
        """Line ``line_no`` (blank or not) is done; the next one starts at ``end_offset``."""

    def _limiter(self) -> Limiter:
        """The rate limiter of the sink's limits (the service counts its waits)."""
        if self.make_limiter is not None:
            return self.make_limiter(self.compiled.sink)
        return RateLimiter(self.compiled.sink.rate_limits())

    def _snapshot(self) -> Snapshot:
        ledger, report = self.ledger, self.report
        return Snapshot(
            self.lines_read,
            self.input.position if self.input else 0,
            sum(ledger.delivered.values()),
            sum(ledger.dead.values()),
            report.retries,
            report.throttled,
        )

    # -- the loop --------------------------------------------------------------------------
    async def _produce(
        self, feed: Feed, first_line: int, stream: MemoryObjectSendStream[WireRequest]
    ) -> None:
        source, control = self.input, self.control
        assert source is not None
        encoder = feed.encoder
        line_no = first_line
        quiet_lines = 0
        while not control.stopping and not source.eof:
            wait = encoder.until_next()
            if wait is not None and wait <= 0:  # held long enough: send it, full or not
                for request in encoder.flush():
                    await stream.send(request)
                continue
            lines: Sequence[bytes | LongLine] = ()
            try:
                with anyio.move_on_after(math.inf if wait is None else wait):
                    lines = await source.lines()
            except InputError as exc:  # stop reading; what was read is still sent
                control.stop(str(exc))
                break
            for raw in lines:
                line_no += 1
                start = source.position
                if isinstance(raw, LongLine):  # dead-lettered, its size still read past
                    size, blank = raw.size, False
                else:
                    size, blank = len(raw), not raw.strip()
                source.position += size
                requests: list[WireRequest] = []
                if not blank:
                    self.lines_read += 1
                    self._line_started(start)
                    requests = feed.feed(line_no, raw)
                self._line_done(line_no, source.position)
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
            feed.stopped()
            return
        for request in feed.finish():
            await stream.send(request)

    async def deliver_lines(
        self,
        feed: Feed,
        dead: DeadLetterWriter,
        *,
        first_line: int = 0,
        total_bytes: int | None = None,
        background: Callable[[], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        """Read ``self.input`` to its end (or a stop) through ``feed``; send everything."""
        assert self.input is not None
        options, sink = self.options, self.compiled.sink
        self.control = RunControl()
        self.control.on_stop(self.input.cancel_read)
        progress = ProgressDisplay(
            self._snapshot,
            total_bytes=total_bytes,
            quiet=self.quiet,
            interval=options.progress_interval,
        )
        limiter = self._limiter()
        async with httpx.AsyncClient(
            timeout=options.request_timeout,
            limits=httpx.Limits(
                max_connections=options.concurrency, max_keepalive_connections=options.concurrency
            ),
        ) as client:
            settled = getattr(feed, "settled", None)  # a cohort flow: what MoEngage holds
            sender = self.sender_class(
                sink,
                client,
                limiter,
                options.retry_policy(),
                self.report,
                dead,
                self.control,
                on_final=self._final if settled is None else partial(_both, settled, self._final),
                request_timeout=options.request_timeout,
            )
            try:
                await pump(
                    partial(self._produce, feed, first_line),
                    sender,
                    options,
                    self.control,
                    self.report,
                    progress=progress,
                    background=background,
                )
            finally:
                with anyio.CancelScope(shield=True):
                    await limiter.aclose()

    def _account(self) -> None:
        """The report's account of the stop and of what was read but not sent."""
        report, control = self.report, self.control
        report.interrupted = control.stopping
        if control.reason:
            report.warnings.append(control.reason)
        unsent = self.ledger.open()
        if unsent:
            # read but not sent: not this run's items after all (the report leaves them out)
            report.interrupted = True
            report.warnings.append(
                f"{unsent} items were read but not sent; a rerun of the same command sends them"
            )


def _both(
    first: Callable[[list[Item], int], None],
    then: Callable[[list[Item], int], None],
    items: list[Item],
    delivered: int,
) -> None:
    first(items, delivered)
    then(items, delivered)
