"""Scale benchmark: three workers, one JetStream stream, one Redis limit, faults mid-run.

    python -m moerules.benchmarks.scale [--seconds 40] [--per-second 40] [--per-minute 150]
                                        [--minute 5]

Starts its own ``nats-server -js`` and ``redis-server`` on free ports of 127.0.0.1, a MoEngage
emulator whose per-second and per-minute limits are scaled down (the "minute" lasts
``--minute`` seconds, and the workers' limits are scaled the same way), publishes generated
mParticle batches to the stream, and runs three workers (each with its own NATS and Redis
connections, in this process) delivering them. During the run it kills:

1. one worker (cancelled mid-flight: what it held is redelivered to the others after the ack
   wait);
2. the broker (``kill -9``, restarted on the same store a second later);
3. Redis (``kill -9``, restarted empty a second later).

It prints: payloads published, items expected and delivered (each at least once), duplicates
(an item accepted more than once: bounded by what was in flight at a fault), the most requests
the partner saw in any of its sliding windows against its limits, 429s, and the aggregate
rate in windows of 5 s outside the seconds just after each fault, against the binding limit.
``check`` returns the problems (an empty list when every claim holds); the bounded test
(tests/distributed/test_scale.py) runs it small.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

WS, KEY = "SCALE_WS", "scale-benchmark-data-api-key"
BUNDLE = "mparticle-to-moengage"
# seconds after a fault not judged: a dead worker's payloads wait out the ack wait; the broker
# is back after 1 s; an empty Redis counts the window full for one span (the "minute")
RECOVERY = {"worker": 3.0, "broker": 4.0, "redis": 2.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Server:
    def __init__(self, argv: list[str], port: int) -> None:
        self.argv, self.port = argv, port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.argv[0]} did not listen on {self.port}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _binary(path: str) -> str:
    found = path if os.access(path, os.X_OK) else shutil.which(Path(path).name)
    if not found:
        raise SystemExit(f"{path} is missing: apt-get install -y nats-server redis-server")
    return found


def _batch(line: int) -> dict[str, Any]:
    return {
        "environment": "production",
        "mpid": 5000 + line,
        "user_identities": {"customer_id": f"c-{line}"},
        "user_attributes": {"$FirstName": f"N{line}"},
        "events": [
            {
                "event_type": "custom_event",
                "data": {
                    "event_name": "Scaled",
                    "timestamp_unixtime_ms": 1700000000000,
                    "custom_attributes": {"msg": f"{line}-{i}"},
                },
            }
            for i in range(2)
        ],
    }


def _item_ids(body: Any) -> list[str]:
    elements = body["elements"] if body.get("type") == "transition" else [body]
    ids: list[str] = []
    for element in elements:
        if element["type"] == "customer":
            ids.append(f"user:{element['customer_id']}")
        else:
            ids += [f"event:{a['attributes']['msg']}" for a in element["actions"]]
    return ids


@dataclass
class Figures:
    published: int = 0
    expected: int = 0
    delivered: int = 0
    duplicates: int = 0
    lost: list[str] = field(default_factory=list)
    requests: int = 0
    throttled: int = 0
    busiest_second: int = 0
    busiest_minute: int = 0
    per_second: int = 0
    per_minute: int = 0
    minute: float = 60.0
    binding_rate: float = 0.0
    window_rates: list[tuple[float, float]] = field(default_factory=list)  # (start, req/s)
    faults: list[tuple[str, float]] = field(default_factory=list)  # (what, at), from start
    in_flight_at_faults: int = 0
    seconds: float = 0.0

    def lowest_rate(self) -> float:
        return min((rate for _, rate in self.window_rates), default=0.0)

    def check(self) -> list[str]:
        problems = []
        if self.lost:
            problems.append(f"{len(self.lost)} items lost, e.g. {self.lost[:3]}")
        if self.busiest_second > self.per_second:
            problems.append(f"{self.busiest_second} requests in one second > {self.per_second}")
        if self.busiest_minute > self.per_minute:
            problems.append(
                f"{self.busiest_minute} requests in one minute window > {self.per_minute}"
            )
        if self.throttled:
            problems.append(f"the partner throttled {self.throttled} requests")
        if not self.window_rates:
            problems.append("no 5 s window outside the faults to judge the rate by")
        elif self.lowest_rate() < 0.95 * self.binding_rate:
            problems.append(
                f"a 5 s window ran at {self.lowest_rate():.1f} req/s < 95 % of "
                f"{self.binding_rate:.1f}"
            )
        return problems

    def show(self) -> str:
        lines = [
            f"payloads published        {self.published}",
            f"items expected/delivered  {self.expected} / {self.delivered} (lost {len(self.lost)})",
            f"duplicates                {self.duplicates} (items in flight at the faults: "
            f"{self.in_flight_at_faults})",
            f"requests accepted         {self.requests}, throttled (429) {self.throttled}",
            f"busiest 1 s window        {self.busiest_second} / {self.per_second}",
            f"busiest {self.minute:g} s window        {self.busiest_minute} / {self.per_minute}",
            f"binding limit             {self.binding_rate:.2f} req/s",
            "faults (s from start)     " + ", ".join(f"{w} {at:.1f}" for w, at in self.faults),
        ]
        for start, rate in self.window_rates:
            lines.append(
                f"  window {start:5.1f}-{start + 5:5.1f} s  {rate:6.2f} req/s "
                f"({rate / self.binding_rate:.1%})"
            )
        lines.append(
            f"lowest window outside faults {self.lowest_rate():.2f} req/s "
            f"({self.lowest_rate() / max(self.binding_rate, 1e-9):.1%} of binding)"
        )
        return "\n".join(lines)


async def run(
    *,
    seconds: float = 40.0,
    per_second: int = 40,
    per_minute: int = 150,
    minute: float = 5.0,
    faults: Sequence[tuple[str, float]] | None = None,
    workdir: Path | None = None,
) -> Figures:
    """The scenario of the module docstring; ``faults`` (what, seconds from the start)."""
    import anyio
    from moerules.connectors.emulation import serve
    from moerules.connectors.moengage.emulator import MoEngageEmulator, MoEngageLimits
    from moerules.engine.api import load_bundle
    from moerules.engine.connector import Sink
    from moerules.engine.distributed.jetstream import JetStreamSpool
    from moerules.engine.distributed.worker import Worker
    from moerules.engine.runtime.loop import DeliveryOptions
    from moerules.engine.runtime.shared_limits import (
        SharedRateLimiter,
        connect,
        workspace_scope,
    )

    faults = list(
        faults
        if faults is not None
        else [("worker", seconds * 0.2), ("broker", seconds * 0.4), ("redis", seconds * 0.65)]
    )
    tmp = Path(workdir or tempfile.mkdtemp(prefix="moerules-scale-"))
    nats_port, redis_port = _free_port(), _free_port()
    nats = _Server(
        [
            _binary("/usr/sbin/nats-server"),
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            str(nats_port),
            "-sd",
            str(tmp / "js"),
        ],
        nats_port,
    )
    redis = _Server(
        [
            _binary("/usr/bin/redis-server"),
            "--port",
            str(redis_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        redis_port,
    )
    nats.start()
    redis.start()
    figures = Figures(
        per_second=per_second,
        per_minute=per_minute,
        minute=minute,
        binding_rate=min(per_second / 1.0, per_minute / minute),
    )

    class TimedEmulator(MoEngageEmulator):
        """Notes when each Data API request arrives (the partner's windows count them)."""

        arrivals: list[float]

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http" and str(scope.get("path", "")).startswith("/v1/"):
                self.arrivals.append(time.monotonic())
            await super().__call__(scope, receive, send)

    emu = TimedEmulator(
        WS,
        KEY,
        limits=MoEngageLimits(
            requests_per_second=per_second,
            requests_per_minute=per_minute,
            minute=minute,
            bulk_users_per_minute=None,
            bulk_events_per_minute=None,
            events_per_minute=None,
            users_per_minute=None,
            devices_per_minute=None,
        ),
    )
    emu.arrivals = []
    broker = f"nats://127.0.0.1:{nats_port}"
    try:
        with serve(emu) as url:
            bundle = load_bundle(
                BUNDLE,
                [
                    f"destination.endpoint={url}",
                    f"destination.requests_per_second={per_second}",
                    f"destination.requests_per_minute={per_minute}",
                    "destination.max_request_bytes=1024",
                ],
                env={"MOENGAGE_WORKSPACE_ID": WS, "MOENGAGE_DATA_API_KEY": KEY},
            )
            # enough payloads to keep the binding limit busy for the whole run
            lines = int(figures.binding_rate * seconds * 4) + 50
            async with JetStreamSpool(broker) as ingress:
                for line in range(1, lines + 1):
                    await ingress.put(BUNDLE, orjson.dumps(_batch(line)))
            figures.published = lines
            expected = {f"user:c-{n}" for n in range(1, lines + 1)}
            expected |= {f"event:{n}-{i}" for n in range(1, lines + 1) for i in range(2)}
            figures.expected = len(expected)

            def limits(sink: Sink) -> SharedRateLimiter:
                scaled = [
                    replace(limit, per_seconds=minute) if limit.per_seconds == 60.0 else limit
                    for limit in sink.rate_limits()
                ]
                return SharedRateLimiter(
                    connect(f"redis://127.0.0.1:{redis_port}"), workspace_scope(sink), scaled
                )

            options = DeliveryOptions(
                handle_signals=False,
                backoff_base=0.05,
                backoff_cap=0.5,
                drain_timeout=5.0,
                max_attempts=20,
            )
            scopes: list[anyio.CancelScope] = []
            started = time.monotonic()

            async def worker(n: int) -> None:
                with anyio.CancelScope() as scope:
                    scopes.append(scope)
                    async with JetStreamSpool(broker, ack_wait=3.0, refresh=0.5) as spool:
                        await Worker([(BUNDLE, bundle)], spool, options, tmp / f"w{n}", limits).run(
                            handle_signals=False
                        )

            def accepted() -> Counter[str]:
                return Counter(
                    i for r in emu.received if r.status == 200 for i in _item_ids(r.body)
                )

            async def chaos() -> None:
                for what, at in sorted(faults, key=lambda f: f[1]):
                    await anyio.sleep(max(0.0, started + at - time.monotonic()))
                    figures.faults.append((what, time.monotonic() - started))
                    figures.in_flight_at_faults += 3 * 8 * 4  # senders x items a request
                    if what == "worker":
                        scopes[-1].cancel()
                    elif what == "broker":
                        nats.kill()
                        await anyio.sleep(1.0)
                        nats.start()
                    elif what == "redis":
                        redis.kill()
                        await anyio.sleep(1.0)
                        redis.start()

            async with anyio.create_task_group() as tg:
                for n in range(3):
                    tg.start_soon(worker, n)
                tg.start_soon(chaos)
                deadline = started + seconds * 3
                while time.monotonic() < deadline:
                    await anyio.sleep(0.25)
                    if time.monotonic() - started > seconds and expected <= set(accepted()):
                        break
                tg.cancel_scope.cancel()
            figures.seconds = time.monotonic() - started
            got = accepted()
            figures.delivered = len(expected & set(got))
            figures.lost = sorted(expected - set(got))
            figures.duplicates = sum(n - 1 for n in got.values() if n > 1)
            arrivals = sorted(at - started for at in emu.arrivals)
            figures.requests = len(arrivals)
            figures.throttled = sum(1 for r in emu.received if r.status == 429)
            figures.busiest_second = _busiest(arrivals, 1.0)
            figures.busiest_minute = _busiest(arrivals, minute)
            figures.window_rates = _rates(arrivals, figures.faults, seconds, minute)
    finally:
        nats.kill()
        redis.kill()
    return figures


def _busiest(arrivals: Sequence[float], window: float) -> int:
    most, j = 0, 0
    for i, at in enumerate(arrivals):
        while arrivals[j] <= at - window:
            j += 1
        most = max(most, i - j + 1)
    return most


def _rates(
    arrivals: Sequence[float], faults: Sequence[tuple[str, float]], seconds: float, minute: float
) -> list[tuple[float, float]]:
    """Requests/s in 5 s windows from 2 s in to the last arrival, leaving out windows that
    touch a fault or the seconds of recovery after it."""
    if not arrivals:
        return []
    end = min(arrivals[-1], seconds * 3)
    blocked = [
        (
            at,
            at
            + RECOVERY[what]
            + (1.0 if what != "worker" else 0.0)
            + (minute * 1.03 if what == "redis" else 0.0),
        )
        for what, at in faults
    ]
    out = []
    start = 2.0
    while start + 5.0 <= end:
        stop = start + 5.0
        if any(a < stop and start < b for a, b in blocked):
            start += 0.5
            continue
        count = sum(1 for t in arrivals if start <= t < stop)
        out.append((start, count / 5.0))
        start = stop
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moerules.benchmarks.scale")
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--per-second", type=int, default=40)
    parser.add_argument("--per-minute", type=int, default=150)
    parser.add_argument("--minute", type=float, default=5.0)
    args = parser.parse_args(argv)
    figures = asyncio.run(
        run(
            seconds=args.seconds,
            per_second=args.per_second,
            per_minute=args.per_minute,
            minute=args.minute,
        )
    )
    print(figures.show())
    problems = figures.check()
    for problem in problems:
        print(f"FAILED: {problem}")
    print("ok: every claim holds" if not problems else f"{len(problems)} claims failed")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
