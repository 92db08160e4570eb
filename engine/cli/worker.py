"""``moerules worker BUNDLE... --broker nats://... --limits redis://...``: a stateless worker
(engine/distributed/worker.py) delivering what the ingress put on NATS JetStream."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from moerules.engine.errors import RuleError

__all__ = ["worker"]


@click.command()
@click.argument("bundles", nargs=-1, required=True)
@click.option(
    "--broker",
    required=True,
    metavar="nats://HOST:PORT",
    help="the NATS JetStream server holding the ingested payloads",
)
@click.option(
    "--limits",
    "limits_url",
    required=True,
    metavar="redis://HOST:PORT",
    help="the Redis holding each workspace's rate limits, shared by all workers",
)
@click.option("--stream", default="MOERULES", show_default=True, help="the JetStream stream")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".moerules"),
    show_default=True,
    help="dead letters (dead-letters/BUNDLE.jsonl; `moerules replay` reads them)",
)
@click.option(
    "--set", "sets", multiple=True, metavar="KEY=VALUE", help="override a bundle key (repeatable)"
)
@click.option(
    "--concurrency",
    default=8,
    show_default=True,
    type=click.IntRange(min=1),
    help="requests in flight at once, per bundle",
)
@click.option(
    "--max-attempts",
    default=6,
    show_default=True,
    type=click.IntRange(min=1),
    help="tries per request (429, 5xx, timeouts)",
)
@click.option(
    "--drain-timeout",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="on SIGTERM/SIGINT, seconds to finish what is in flight",
)
@click.option(
    "--ack-wait",
    default=300.0,
    show_default=True,
    type=click.FloatRange(min=1),
    help="seconds before JetStream hands a payload a dead worker held to another",
)
@click.option(
    "--log-format",
    type=click.Choice(["auto", "json", "text"]),
    default="auto",
    show_default=True,
    help="auto: text on a terminal, JSON lines otherwise",
)
def worker(
    bundles: tuple[str, ...],
    broker: str,
    limits_url: str,
    stream: str,
    state_dir: Path,
    sets: tuple[str, ...],
    ack_wait: float,
    log_format: str,
    **delivery: Any,
) -> None:
    """Deliver each BUNDLE's payloads from the NATS JetStream spool that `moerules serve
    --broker` fills, with the workspace's rate limits shared in Redis. Run as many as needed;
    SIGTERM/SIGINT drains and stops. See README, Beyond one machine."""
    import anyio
    from moerules.engine.api import load_bundle
    from moerules.engine.runtime.loop import DeliveryOptions

    try:
        from moerules.engine.distributed.jetstream import JetStreamSpool
        from moerules.engine.distributed.worker import SharedLimits, Worker
    except ImportError as exc:
        raise click.UsageError(
            f"workers need the distributed extra ({exc.name} is missing): "
            "pip install 'moerules[distributed]'"
        ) from None
    from moerules.engine.service.logs import service_logger

    if not broker.startswith(("nats://", "tls://")):
        raise click.UsageError(f"--broker takes a nats:// URL, not {broker!r}")
    if not limits_url.startswith(("redis://", "rediss://", "unix://")):
        raise click.UsageError(f"--limits takes a redis:// URL, not {limits_url!r}")
    compiled = []
    problems = 0
    for ref in bundles:
        try:
            bundle = load_bundle(ref, list(sets))
        except RuleError as exc:
            for problem in exc.problems:
                click.echo(str(problem), err=True)
            problems += len(exc.problems)
            continue
        if bundle.missing_env:
            raise click.UsageError(
                "the worker needs these environment variables set: " + ", ".join(bundle.missing_env)
            )
        compiled.append((bundle.model.bundle, bundle))
    if problems:
        click.echo(f"{problems} problem{'s' if problems != 1 else ''} found", err=True)
        sys.exit(1)
    options = DeliveryOptions(handle_signals=False, **delivery)
    service_logger(json_lines=None if log_format == "auto" else log_format == "json")

    async def run() -> None:
        async with JetStreamSpool(broker, stream=stream, ack_wait=ack_wait) as spool:
            await Worker(compiled, spool, options, state_dir, SharedLimits(limits_url)).run()

    anyio.run(run)
