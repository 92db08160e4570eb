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
import stat
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import IO, Any, Protocol

import anyio
import httpx
from anyio.lowlevel import checkpoint
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from moerules.engine.compile.compiler import CompiledBundle
from moerules.engine.connector import Item, SinkEncoder, WireRequest
from moerules.engine.runtime.deadletter import DeadLetterWriter
from moerules.engine.runtime.progress import ProgressDisplay, Snapshot
from moerules.engine.runtime.ratelimit import RateLimiter
from moerules.engine.runtime.report import RunReport
from moerules.engine.runtime.retry import RetryPolicy
from moerules.engine.runtime.sender import RunControl, Sender

__all__ = ["DeliveryLoop", "DeliveryOptions", "Feed", "Input", "pump"]

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


class Feed(Protocol):
    """Turns input lines into requests through a sink encoder (the Pipeline, replay's reader)."""

    encoder: SinkEncoder

    def feed(self, line_no: int, line: bytes) -> list[WireRequest]: ...

    def finish(self) -> list[WireRequest]: ...

    def stopped(self) -> None: ...


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


class Input:
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


class DeliveryLoop:
    """One pass of input lines through a feed to the partner, with progress and signals.

    ``deliver_lines`` runs the loop; subclasses decide where lines come from, which feed maps
    them, and what ``_final`` (every item that reached its outcome) and ``_line``
    (a line about to be fed, a line done) do.
    """

    def __init__(self, compiled: CompiledBundle, report: RunReport, options: DeliveryOptions,
                 quiet: bool) -> None:
        self.compiled = compiled
        self.report = report
        self.ledger = report.ledger
        self.options = options
        self.quiet = quiet
        self.lines_read = 0
        self.reached_end = False
        self.input: Input | None = None
        self.control: RunControl  # made in deliver_lines: anyio objects need the event loop

    # -- hooks -----------------------------------------------------------------------------
    def _final(self, items: list[Item], delivered: int) -> None:
        """``items`` reached their outcome (already in the ledger and the dead letters)."""

    def _line_started(self, offset: int) -> None:
        """A non-blank line starting at ``offset`` is about to be fed."""

    def _line_done(self, line_no: int, end_offset: int) -> None:
        """Line ``line_no`` (blank or not) is done; the next one starts at ``end_offset``."""

    def _snapshot(self) -> Snapshot:
        ledger, report = self.ledger, self.report
        return Snapshot(self.lines_read, self.input.position if self.input else 0,
                        sum(ledger.delivered.values()), sum(ledger.dead.values()),
                        report.retries, report.throttled)

    # -- the loop --------------------------------------------------------------------------
    async def _produce(self, feed: Feed, first_line: int,
                       stream: MemoryObjectSendStream[WireRequest]) -> None:
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
            lines: list[bytes] = []
            with anyio.move_on_after(math.inf if wait is None else wait):
                lines = await source.lines()
            for raw in lines:
                line_no += 1
                start = source.position
                source.position += len(raw)
                requests: list[WireRequest] = []
                if raw.strip():
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

    async def deliver_lines(self, feed: Feed, dead: DeadLetterWriter, *, first_line: int = 0,
                            total_bytes: int | None = None,
                            background: Callable[[], Coroutine[Any, Any, None]] | None = None
                            ) -> None:
        """Read ``self.input`` to its end (or a stop) through ``feed``; send everything."""
        assert self.input is not None
        options, sink = self.options, self.compiled.sink
        self.control = RunControl()
        self.control.on_stop(self.input.cancel_read)
        progress = ProgressDisplay(self._snapshot, total_bytes=total_bytes, quiet=self.quiet,
                                   interval=options.progress_interval)
        limiter = RateLimiter(sink.rate_limits())
        async with httpx.AsyncClient(timeout=options.request_timeout, limits=httpx.Limits(
                max_connections=options.concurrency,
                max_keepalive_connections=options.concurrency)) as client:
            sender = Sender(sink, client, limiter, options.retry_policy(), self.report, dead,
                            self.control, on_final=self._final,
                            request_timeout=options.request_timeout)
            await pump(partial(self._produce, feed, first_line), sender, options, self.control,
                       self.report, progress=progress, background=background)

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
            report.warnings.append(f"{unsent} items were read but not sent; a rerun of the "
                                   "same command sends them")
