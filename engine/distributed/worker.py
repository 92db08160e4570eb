"""``moerules worker``: a stateless worker taking one or more bundles' payloads from the
JetStream spool and delivering them through the same runtime as ``serve`` and ``run``.

A worker is the service's consumer (engine/service/consumer.py: pipeline, encoder, sender,
verdicts, retries, dead letters) with two things swapped: the spool is the shared
``JetStreamSpool`` (a durable consumer per bundle: any number of workers take from it, and
what a dead worker held is redelivered), and the rate limiter is the workspace's shared one in
Redis (``SharedRateLimiter``), so all workers together keep the partner's limits. A worker
keeps nothing that another cannot take over: kill it, start another.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from moerules.engine.compile.compiler import CompiledBundle
from moerules.engine.connector import Sink
from moerules.engine.runtime.loop import DeliveryOptions
from moerules.engine.runtime.ratelimit import Limiter
from moerules.engine.runtime.shared_limits import SharedRateLimiter, connect, workspace_scope
from moerules.engine.service.consumer import FATAL_BACKOFF, BundleConsumer, _Pass
from moerules.engine.service.logs import LOGGER, log_event
from moerules.engine.service.spool import Spool

__all__ = ["SharedLimits", "Worker", "WorkerConsumer"]

_log = logging.getLogger(LOGGER)


@dataclass
class SharedLimits:
    """Makes each pass's limiter: the sink's limits in the Redis at ``url``, scoped to the
    sink's workspace. Keeps the limiters made, for their counts."""

    url: str
    made: list[SharedRateLimiter] = field(default_factory=list)

    def __call__(self, sink: Sink) -> Limiter:
        limiter = SharedRateLimiter(connect(self.url), workspace_scope(sink), sink.rate_limits())
        self.made.append(limiter)
        return limiter


class _WorkerPass(_Pass):
    """A consumer pass whose rate limiter is the shared one."""

    limits: Callable[[Sink], Limiter]

    def _limiter(self) -> Limiter:  # type: ignore[override]
        return self.limits(self.compiled.sink)


class WorkerConsumer(BundleConsumer):
    """The service's ``BundleConsumer`` delivering with the workspace's shared limits."""

    def __init__(
        self,
        name: str,
        compiled: CompiledBundle,
        spool: Spool,
        options: DeliveryOptions,
        state_dir: Path,
        limits: Callable[[Sink], Limiter],
    ) -> None:
        super().__init__(name, compiled, spool, options, state_dir)
        self.limits = limits

    async def run(self) -> None:
        # the consumer's loop of passes, each a _WorkerPass
        backoff = FATAL_BACKOFF[0]
        while not self.stopping:
            live = _WorkerPass(
                self.name, self.compiled, self.spool, self.options, self.dead_path, self.totals
            )
            live.limits = self.limits
            self.live = live
            try:
                await live.run()
            finally:
                self.totals.add(live.report)
                self.live = None
            if self.stopping:
                break
            if not live.control.aborted:
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


class Worker:
    """One worker process: a consumer per bundle on the shared spool, until SIGTERM/SIGINT."""

    def __init__(
        self,
        bundles: Sequence[tuple[str, CompiledBundle]],
        spool: Spool,
        options: DeliveryOptions,
        state_dir: Path,
        limits: Callable[[Sink], Limiter],
    ) -> None:
        self.consumers = [
            WorkerConsumer(name, compiled, spool, options, state_dir, limits)
            for name, compiled in bundles
        ]

    def stop(self) -> None:
        for consumer in self.consumers:
            consumer.stop()

    async def run(self, *, handle_signals: bool = True) -> None:
        async with anyio.create_task_group() as tasks:
            if handle_signals:
                tasks.start_soon(self._signals, tasks.cancel_scope)
            async with anyio.create_task_group() as work:
                for consumer in self.consumers:
                    work.start_soon(consumer.run)
            tasks.cancel_scope.cancel()

    async def _signals(self, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as got:
            first = True
            async for _ in got:
                if not first:
                    scope.cancel()  # a second signal: at once (JetStream redelivers)
                    return
                first = False
                log_event(_log, "stopping", note="draining what is in flight")
                self.stop()
