"""``moerules serve BUNDLE...``: the HTTP ingest service (engine/service), as a command."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click
from moerules.engine.errors import RuleError

__all__ = ["serve"]

EXIT_RULES = 1


def _sets_for(sets: tuple[str, ...], ref: str) -> list[str]:
    """The ``--set`` values for the bundle named ``ref`` on the command line: unprefixed ones,
    and ``REF:KEY=VALUE`` ones whose prefix is ``ref`` (or its folder or file stem)."""
    names = {ref, Path(ref).stem, Path(ref).name}
    if Path(ref).name == "bundle.yaml":
        names.add(Path(ref).parent.name)
    out: list[str] = []
    for value in sets:
        key = value.split("=", 1)[0]
        if ":" in key:
            prefix, _, rest = value.partition(":")
            if prefix in names:
                out.append(rest)
        else:
            out.append(value)
    return out


@click.command()
@click.argument("bundles", nargs=-1, required=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option(
    "--port",
    default=8080,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="port to listen on (0: any free port; the log's `listening` line says)",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".moerules"),
    show_default=True,
    help="the spool (spool.sqlite) and dead letters (dead-letters/BUNDLE.jsonl)",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="[BUNDLE:]KEY=VALUE",
    help="override a bundle key, for every bundle or the one named (repeatable)",
)
@click.option(
    "--max-body-bytes",
    default=4 << 20,
    show_default=True,
    type=click.IntRange(min=1),
    help="larger payloads get 413",
)
@click.option(
    "--max-spool-messages",
    default=100_000,
    show_default=True,
    type=click.IntRange(min=1),
    help="per bundle: past this many waiting payloads, 429 with Retry-After",
)
@click.option(
    "--max-spool-bytes",
    default=1 << 30,
    show_default=True,
    type=click.IntRange(min=1),
    help="per bundle: the same, in bytes",
)
@click.option(
    "--max-spool-age",
    default=3600.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="per bundle: the same, when the oldest waiting payload is this old (s)",
)
@click.option(
    "--retry-after",
    default=5,
    show_default=True,
    type=click.IntRange(min=1),
    help="seconds, in 429 and 503 answers",
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
    "--backoff-base",
    default=0.5,
    show_default=True,
    type=click.FloatRange(min=0),
    help="seconds; backoff doubles from here",
)
@click.option(
    "--backoff-cap",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="longest backoff, in seconds",
)
@click.option(
    "--drain-timeout",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="on SIGTERM/SIGINT (and reloads), seconds to finish what is in flight",
)
@click.option(
    "--watch-interval",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="seconds between looks at the rule files for changes (0: only SIGHUP)",
)
@click.option(
    "--log-format",
    type=click.Choice(["auto", "json", "text"]),
    default="auto",
    show_default=True,
    help="auto: text on a terminal, JSON lines otherwise",
)
@click.option(
    "--broker",
    default=None,
    metavar="nats://HOST:PORT",
    help="spool to this NATS JetStream server instead of --state-dir and only "
    "ingest: `moerules worker` processes deliver (needs the distributed extra)",
)
def serve(
    bundles: tuple[str, ...],
    host: str,
    port: int,
    state_dir: Path,
    sets: tuple[str, ...],
    max_body_bytes: int,
    max_spool_messages: int,
    max_spool_bytes: int,
    max_spool_age: float,
    retry_after: int,
    watch_interval: float,
    log_format: str,
    broker: str | None,
    **delivery: Any,
) -> None:
    """Receive partner pushes over HTTP for each BUNDLE and deliver them continuously.

    POST /ingest/BUNDLE takes one payload of the bundle's source (JSON); it is answered 202
    once it is stored in the spool under --state-dir. GET /healthz, /readyz, /metrics.
    Credentials per route come from the environment (MOERULES_AUTH_<BUNDLE>_BASIC,
    _BEARER, _HEADER, or MOERULES_AUTH_<BUNDLE>=none). SIGHUP or a changed rule file
    reloads; SIGTERM/SIGINT stops gracefully. See README, Service.
    """
    import anyio
    from moerules.engine.runtime.loop import DeliveryOptions
    from moerules.engine.service.app import IngestLimits
    from moerules.engine.service.auth import AuthError, RouteAuth, route_auth
    from moerules.engine.service.logs import service_logger
    from moerules.engine.service.reload import ServedBundle, load_served
    from moerules.engine.service.server import Service, ServiceOptions
    from moerules.engine.service.spool import SpoolLocked

    if broker is not None and not broker.startswith(("nats://", "tls://")):
        raise click.UsageError(f"--broker takes a nats:// URL, not {broker!r}")
    served: list[ServedBundle] = []
    problems = 0
    for ref in bundles:
        try:
            served.append(load_served(ref, _sets_for(sets, ref)))
        except RuleError as exc:
            for problem in exc.problems:
                click.echo(str(problem), err=True)
            problems += len(exc.problems)
    if problems:
        click.echo(f"{problems} problem{'s' if problems != 1 else ''} found", err=True)
        sys.exit(EXIT_RULES)
    names = [s.name for s in served]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise click.UsageError(f"bundle {twice[0]!r} is named twice; each route serves one")
    missing = sorted({var for s in served for var in s.compiled.missing_env})
    if missing:
        raise click.UsageError(
            "the service needs these environment variables set: " + ", ".join(missing)
        )
    auths: dict[str, RouteAuth] = {}
    for s in served:
        try:
            auths[s.name] = route_auth(s.name, os.environ)
        except AuthError as exc:
            raise click.UsageError(str(exc)) from None
    try:
        options = ServiceOptions(
            host=host,
            port=port,
            state_dir=state_dir,
            limits=IngestLimits(
                max_body_bytes, max_spool_messages, max_spool_bytes, max_spool_age, retry_after
            ),
            delivery=DeliveryOptions(handle_signals=False, **delivery),
            watch_interval=watch_interval,
            broker=broker,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    _, scrubber = service_logger(json_lines=None if log_format == "auto" else log_format == "json")
    service = Service(served, auths, options, scrubber)
    try:
        code = anyio.run(service.run)
    except SpoolLocked as exc:
        raise click.UsageError(f"{exc}: one service per state directory") from None
    sys.exit(code)
