"""The service process: the app on uvicorn, one consumer per bundle, signals, reloads, stop.

Life cycle:

- start: open the spool (messages left by an earlier process, ``kill -9`` included, are ready
  again), start each bundle's consumer, start uvicorn; ``/readyz`` is ready once it listens;
- SIGHUP, or a watched rule file that changed: reload (engine/service/reload.py);
- SIGTERM or SIGINT: ``/readyz`` turns 503 and new ingest requests get 503 with
  ``Retry-After``; uvicorn stops listening and finishes the requests it has; each consumer
  stops claiming and drains what it holds within the drain timeout; whatever is not final
  stays in the spool for the next start. A second signal stops at once (the spool still
  holds everything not acknowledged).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import uvicorn
from moerules.engine.runtime.loop import DeliveryOptions
from moerules.engine.service.app import IngestLimits, IngestRoute, build_app
from moerules.engine.service.auth import RouteAuth
from moerules.engine.service.consumer import BundleConsumer
from moerules.engine.service.logs import LOGGER, Scrubber, log_event
from moerules.engine.service.metrics import ServiceMetrics
from moerules.engine.service.reload import ServedBundle
from moerules.engine.service.spool import SqliteSpool

__all__ = ["Service", "ServiceOptions"]

_log = logging.getLogger(LOGGER)


@dataclass(frozen=True)
class ServiceOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    state_dir: Path = Path(".moerules")
    limits: IngestLimits = field(default_factory=IngestLimits)
    delivery: DeliveryOptions = field(default_factory=lambda: DeliveryOptions(handle_signals=False))
    watch_interval: float = 1.0  # seconds between looks at the rule files; 0: no watching
    # nats://...: the spool is a shared JetStream stream and this process is ingress only;
    # `moerules worker` processes deliver (engine/distributed/)
    broker: str | None = None


def _open_spool(options: ServiceOptions) -> contextlib.AbstractAsyncContextManager[Any]:
    """The embedded SQLite spool, or the broker's stream when ``--broker`` names one."""
    if options.broker is None:
        return SqliteSpool(options.state_dir)
    from moerules.engine.distributed.jetstream import JetStreamSpool

    return JetStreamSpool(options.broker)


class _Server(uvicorn.Server):
    """uvicorn, leaving the signals to the service (it would re-raise them on exit)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Service:
    """Serves ``bundles`` (see the module docstring); ``run`` returns the exit code."""

    def __init__(
        self,
        bundles: list[ServedBundle],
        auths: Mapping[str, RouteAuth],
        options: ServiceOptions,
        scrubber: Scrubber | None = None,
    ) -> None:
        self.bundles = bundles
        self.auths = auths
        self.options = options
        self.scrubber = scrubber or Scrubber()
        self.started = False
        self.stopping = False
        self.url = ""
        self.metrics: ServiceMetrics | None = None
        self._stop: anyio.Event | None = None
        self._force: anyio.Event | None = None

    def ready(self) -> bool:
        return self.started and not self.stopping

    def request_stop(self, why: str) -> None:
        """Stop gracefully (a second call: at once)."""
        if self._stop is None or self._force is None:
            return
        if self._stop.is_set():
            log_event(_log, "stopping at once", logging.WARNING, reason=why)
            self._force.set()
        else:
            log_event(
                _log, "stopping", reason=why, drain_timeout_s=self.options.delivery.drain_timeout
            )
            self._stop.set()

    def reload(self, why: str, bundles: list[ServedBundle] | None = None) -> None:
        """Load ``bundles`` (default: all) again; each swaps in only when valid."""
        for served in self.bundles if bundles is None else bundles:
            applied = served.reload(why)
            if self.metrics is not None:
                self.metrics.reloads.labels(served.name, "applied" if applied else "rejected").inc()

    async def run(self) -> int:
        options = self.options
        self._stop, self._force = anyio.Event(), anyio.Event()
        for served in self.bundles:
            self.scrubber.update(served.compiled.secrets)
            served.on_swap.append(lambda compiled: self.scrubber.update(compiled.secrets))
        for auth in self.auths.values():
            self.scrubber.update(auth.secrets())
        async with _open_spool(options) as spool:
            consumers = {
                served.name: BundleConsumer(
                    served.name, served.compiled, spool, options.delivery, options.state_dir
                )
                for served in self.bundles
            }
            for served in self.bundles:
                served.on_swap.append(consumers[served.name].swap)
            routes = {
                served.name: IngestRoute(served, self.auths[served.name]) for served in self.bundles
            }
            metrics = self.metrics = ServiceMetrics(consumers, spool, self.ready)
            app = build_app(
                routes,
                spool,
                metrics,
                options.limits,
                ready=self.ready,
                stopping=lambda: self.stopping,
            )
            server = _Server(
                uvicorn.Config(
                    app,
                    host=options.host,
                    port=options.port,
                    lifespan="off",
                    ws="none",
                    log_config=None,
                    access_log=False,
                    server_header=False,
                    timeout_graceful_shutdown=max(1, int(options.delivery.drain_timeout)),
                )
            )
            if spool.redelivered_at_open:
                log_event(
                    _log,
                    "spool recovered",
                    messages=spool.redelivered_at_open,
                    note="acknowledged before the last stop and not yet delivered: delivering now",
                )
            async with anyio.create_task_group() as tasks:
                async with anyio.create_task_group() as work:
                    for consumer in consumers.values():
                        if options.broker is None:  # with a broker the workers deliver
                            work.start_soon(consumer.run)
                    work.start_soon(self._serve, server)
                    if not await self._started(server):
                        self.stopping = True
                        for consumer in consumers.values():
                            consumer.stop()
                        return 2
                    self.started = True
                    tasks.start_soon(self._watch)
                    if threading.current_thread() is threading.main_thread():
                        tasks.start_soon(self._signals)
                    tasks.start_soon(self._forced, work)
                    await self._stop.wait()
                    self.stopping = True
                    server.should_exit = True
                    for consumer in consumers.values():
                        consumer.stop()
                tasks.cancel_scope.cancel()
            left = {name: spool.depth(name) for name in consumers}
            log_event(
                _log,
                "stopped",
                spooled=left,
                note="what is spooled is delivered after the next start"
                if any(left.values())
                else "nothing left to deliver",
            )
        return 0

    async def _serve(self, server: _Server) -> None:
        with contextlib.suppress(SystemExit):  # uvicorn exits when it cannot bind
            await server.serve()
        if not server.started:
            log_event(
                _log,
                "could not listen",
                logging.ERROR,
                host=self.options.host,
                port=self.options.port,
            )
        if self._stop is not None:
            self._stop.set()

    async def _started(self, server: _Server) -> bool:
        while not server.started:
            if self._stop is not None and self._stop.is_set():
                return False
            await anyio.sleep(0.01)
        sockname = server.servers[0].sockets[0].getsockname()
        self.url = f"http://{self.options.host}:{sockname[1]}"
        log_event(
            _log,
            "listening",
            url=self.url,
            bundles={s.name: f"{self.url}/ingest/{s.name}" for s in self.bundles},
            state_dir=str(self.options.state_dir),
        )
        return True

    async def _forced(self, work: anyio.abc.TaskGroup) -> None:
        assert self._force is not None
        await self._force.wait()
        work.cancel_scope.cancel()

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as got:
            async for signum in got:
                if signum == signal.SIGHUP:
                    self.reload("SIGHUP")
                else:
                    self.request_stop(signal.Signals(signum).name)

    async def _watch(self) -> None:
        interval = self.options.watch_interval
        if interval <= 0:
            return
        while True:
            await anyio.sleep(interval)
            self.reload("file changed", [s for s in self.bundles if s.changed()])
